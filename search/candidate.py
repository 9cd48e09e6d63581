"""The two values that travel between pipeline stages: the knobs and the outcome."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from hardware_targets.metric import Metric
from search.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "int8-ptq", "int8-qat")
PRUNING_MODES = ("unstructured", "structured")
TEACHER_EPOCHS_PER_EPOCH = 2  # a teacher trains longer than its students: it is trained once, they many times
MAX_SEED = 2**32 - 1  # numpy's and Optuna's seeds are unsigned 32-bit


def seed_problem(value: Any) -> str | None:
    """Why ``value`` cannot seed numpy, torch, Optuna and MetaSchedule alike, or None."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        return f"an integer in [0, {MAX_SEED}]"
    return None


def _check_range(owner: str, name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be in [{low}, {high}]. Got {value!r} instead."
        )


def _check_option(owner: str, name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be one of {list(options)}. Got {value!r} instead."
        )


@dataclass(frozen=True)
class Budget:
    """How much work one candidate may cost; not a knob the search tunes."""

    epochs: int = 15  # training epochs of the student
    finetune_epochs: int = 3  # epochs of fine-tuning after each pruning step / for QAT
    prune_steps: int = 3  # iterative pruning: prune, fine-tune, repeat
    tuning_trials: int = 0  # MetaSchedule trials per model; 0 = no tuning
    calibration_samples: int = 128  # int8 PTQ calibration batch (training split)
    timing_repeats: int = 30  # latency repeats; median and p90 are over these
    # the shipping stage, after the search, on a local target: MetaSchedule trials for every task of each candidate
    # on (or near) the front, times the layers the task stands for, and the wall-time cap of that tuning (candidates
    # after it have their runtimes compared untuned); 0 trials = runtimes compared, nothing tuned; 0 minutes = no stage
    front_tuning_trials: int = 4
    front_tuning_minutes: float = 3.0
    # the distillation teacher's training, once per dataset, seed and epochs (cached by them); None = twice the
    # student's epochs, so a short search has a short teacher (the default 15 epochs give the 30 it always had)
    teacher_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.teacher_epochs is None and isinstance(self.epochs, int):
            object.__setattr__(self, "teacher_epochs", TEACHER_EPOCHS_PER_EPOCH * self.epochs)
        for names, low in ((("epochs", "prune_steps", "timing_repeats", "teacher_epochs"), 1),
                           (("finetune_epochs", "tuning_trials", "calibration_samples", "front_tuning_trials"), 0)):
            for name in names:
                v = getattr(self, name)
                if not isinstance(v, int) or isinstance(v, bool) or v < low:
                    raise ConfigError(f"The {_setting(name)} must be an integer >= {low}. Got {v!r} instead.")
        v = self.front_tuning_minutes
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < float("inf"):
            raise ConfigError(f"The {_setting('front_tuning_minutes')} must be a number of minutes >= 0. "
                              f"Got {v!r} instead.")


# the budget settings the command line also takes, as --epochs etc.
_BUDGET_OPTIONS = ("epochs", "teacher_epochs", "tuning_trials", "front_tuning_trials", "front_tuning_minutes")


def _setting(name: str) -> str:
    """A budget setting as a user sets it: in a spec's ``budget`` and, where there is one, by option."""
    option = f", --{name.replace('_', '-')}" if name in _BUDGET_OPTIONS else ""
    return f"'{name}' budget (budget.{name} in a spec{option})"


@dataclass(frozen=True)
class Candidate:
    """One point of the search space: the four knobs of the design card."""

    precision: str = "fp32"
    sparsity: float = 0.0
    pruning: str = "unstructured"
    temperature: float = 1.0  # distillation temperature T
    alpha: float = 1.0  # weight of the hard-label loss; 1.0 = no distillation
    width: float = 1.0  # width multiplier of the DS-CNN
    budget: Budget = field(default_factory=Budget)
    seed: int = 0

    def __post_init__(self) -> None:
        _check_option("Candidate", "precision", self.precision, PRECISIONS)
        _check_option("Candidate", "pruning", self.pruning, PRUNING_MODES)
        _check_range("Candidate", "sparsity", self.sparsity, 0.0, 0.99)
        _check_range("Candidate", "temperature", self.temperature, 1.0, 100.0)
        _check_range("Candidate", "alpha", self.alpha, 0.0, 1.0)
        _check_range("Candidate", "width", self.width, 0.05, 8.0)
        if rule := seed_problem(self.seed):
            raise ConfigError(f"The 'seed' parameter of Candidate must be {rule}. Got {self.seed!r} instead.")

    @property
    def distills(self) -> bool:
        return self.alpha < 1.0

    def knobs(self) -> dict[str, Any]:
        """The searched knobs only, flat, for logging and tables."""
        return {
            "precision": self.precision,
            "sparsity": self.sparsity,
            "pruning": self.pruning,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "width": self.width,
        }

    def key(self) -> str:
        """A short, stable name for the candidate's artifact folder."""
        k = self.knobs()
        return (
            f"{k['precision']}_w{k['width']:g}_s{k['sparsity']:g}{k['pruning'][0]}"
            f"_T{k['temperature']:g}_a{k['alpha']:g}_seed{self.seed}"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        data = dict(data)
        budget = data.pop("budget", {}) or {}
        return cls(budget=Budget(**budget), **data)


@dataclass(frozen=True)
class CandidateResult:
    """What one candidate produced: metrics with provenance, artifacts, timings."""

    candidate: Candidate
    dataset: str
    target: str
    metrics: dict[str, Metric]
    artifacts: dict[str, str]  # name -> path
    stage_seconds: dict[str, float]
    versions: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)

    def value(self, name: str) -> float:
        return self.metrics[name].value

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CandidateResult":
        data = dict(data)
        data["candidate"] = Candidate.from_dict(data["candidate"])
        data["metrics"] = {k: Metric(**v) for k, v in data["metrics"].items()}
        return cls(**data)
