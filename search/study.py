"""The Optuna side of a search: storage, sampler, search space, results and the front.

Only this module (with ``workers``) knows Optuna; the pipeline sees Candidates.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.pareto import OBJECTIVES, hypervolume, non_dominated
from search.candidate import Candidate, CandidateResult
from search.errors import ConfigError, SearchNotFoundError
from search.spec import SearchSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPEC_ATTR = "edgesearch_spec"
REQUEUED_ATTR = "requeued"


def default_storage(runs_dir: Path) -> str:
    runs_dir = Path(runs_dir).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{runs_dir / 'optuna.db'}"


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=max(4, min(50, spec.trials // 2)))
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=spec.seed, multivariate=True, n_startup_trials=min(10, spec.trials))
    return optuna.samplers.RandomSampler(seed=spec.seed)


def _storage(url: str) -> optuna.storages.BaseStorage:
    """Open an RDB storage; for SQLite, a file lock serialises the first-time schema creation
    (two searches starting at once on a new file would otherwise race in it)."""
    from contextlib import nullcontext

    from filelock import FileLock

    lock = nullcontext()
    if url.startswith("sqlite:///"):
        lock = FileLock(url[len("sqlite:///"):] + ".lock")
    try:
        with lock:
            return optuna.storages.RDBStorage(url, heartbeat_interval=None)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"Cannot open the Optuna storage {url!r}: {first}") from exc


def create_study(spec: SearchSpec, storage_url: str, resume: bool) -> optuna.Study:
    """A new study for ``spec.name``, or the stored one with ``resume``; never silently both."""
    storage = _storage(storage_url)
    exists = spec.name in {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if exists and not resume:
        raise ConfigError(f"A search named {spec.name!r} already exists in {storage_url}; "
                          "pass --resume to continue it or choose another --name.")
    if not exists and resume:
        raise SearchNotFoundError(f"No search named {spec.name!r} in {storage_url} to resume.")
    study = optuna.create_study(
        study_name=spec.name, storage=storage, sampler=make_sampler(spec), load_if_exists=resume,
        directions=[d for _, d in OBJECTIVES],
    )
    if not exists:
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([n for n, _ in OBJECTIVES])
    return study


def load_study(name: str, storage_url: str) -> optuna.Study:
    storage = _storage(storage_url)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if name not in names:
        known = ", ".join(sorted(names)) or "none yet"
        raise SearchNotFoundError(f"No search named {name!r} in {storage_url} (searches: {known}).")
    return optuna.load_study(study_name=name, storage=storage)


def stored_spec(study: optuna.Study) -> SearchSpec:
    return SearchSpec.from_dict(study.user_attrs[SPEC_ATTR])


def knob_names(spec: SearchSpec) -> set[str]:
    """The parameters ``suggest_candidate`` asks Optuna for under ``spec`` (a fixed range is not asked)."""
    s = spec.space
    return {"precision", "pruning"} | {n for n in ("sparsity", "temperature", "alpha", "width")
                                       if getattr(s, n)[0] != getattr(s, n)[1]}


def requeue_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING by a driver that died: mark them failed and enqueue their knobs again.

    A driver killed while it was drawing a trial's knobs leaves some of them undrawn; that candidate never
    started, and its partial knobs are not worth re-running (the search draws a new one instead)."""
    count = 0
    names = knob_names(stored_spec(study))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        drawn = set(t.params) >= names
        study._storage.set_trial_user_attr(t._trial_id, REQUEUED_ATTR, True)
        study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted: the driver stopped while it ran" if drawn
                                           else "interrupted before its knobs were drawn; not re-run")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if drawn:
            study.enqueue_trial(t.params, skip_if_exists=False)
        count += 1
    return count


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards the requested total (re-queued ones do not)."""
    return sum(
        1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        if not t.user_attrs.get(REQUEUED_ATTR)
    )


def suggest_candidate(trial: optuna.trial.BaseTrial, spec: SearchSpec) -> Candidate:
    s = spec.space

    def num(name: str, lo_hi: tuple[float, float], step: float) -> float:
        lo, hi = lo_hi
        if lo == hi:
            return lo
        return trial.suggest_float(name, lo, hi, step=step if (hi - lo) >= step else None)

    return Candidate(
        precision=trial.suggest_categorical("precision", list(s.precision)),
        pruning=trial.suggest_categorical("pruning", list(s.pruning)),
        sparsity=round(num("sparsity", s.sparsity, 0.05), 4),
        temperature=round(num("temperature", s.temperature, 0.5), 4),
        alpha=round(num("alpha", s.alpha, 0.1), 4),
        width=round(num("width", s.width, 0.25), 4),
        budget=spec.budget,
        seed=spec.seed,
    )


def record_result(study: optuna.Study, trial: optuna.Trial, spec: SearchSpec, result: CandidateResult) -> None:
    """Tell Optuna the objectives, the budget constraint, and every metric with its provenance."""
    latency = result.value("latency_ms_median")
    trial.set_constraint("latency_budget", latency - spec.latency_budget_ms)
    for name, limit in (result.info.get("limits") or {}).items():  # the target's RAM and flash, when known
        if limit:
            trial.set_constraint(f"fits_{name.split('_')[0]}", result.value(name) - limit)
    for name, metric in result.metrics.items():
        trial.set_user_attr(f"metric:{name}", [metric.value, metric.unit, metric.provenance])
    trial.set_user_attr("provenance", result.info.get("provenance"))
    trial.set_user_attr("stage_seconds", result.stage_seconds)
    trial.set_user_attr("artifacts", result.artifacts)
    trial.set_user_attr("tuning", result.info.get("tuning"))
    trial.set_user_attr("candidate", json.loads(json.dumps(result.candidate.knobs())))
    study.tell(trial, [result.value(name) for name, _ in OBJECTIVES])


def record_failure(study: optuna.Study, trial: optuna.Trial, error: str) -> None:
    trial.set_user_attr("error", error[:2000])
    study.tell(trial, state=TrialState.FAIL)


@dataclass(frozen=True)
class Row:
    """One finished trial, flattened for tables and logs."""

    number: int
    state: str
    knobs: dict[str, Any]
    metrics: dict[str, tuple[float, str, str]]
    feasible: bool
    error: str | None

    def value(self, name: str) -> float:
        return self.metrics[name][0]

    @classmethod
    def from_trial(cls, t: FrozenTrial) -> "Row":
        metrics = {k.split(":", 1)[1]: tuple(v) for k, v in t.user_attrs.items() if k.startswith("metric:")}
        constraints = t.constraints.values()
        feasible = t.state == TrialState.COMPLETE and all(c <= 0 for c in constraints)
        return cls(t.number, t.state.name, t.user_attrs.get("candidate", t.params), metrics, feasible,
                   t.user_attrs.get("error"))


def rows(study: optuna.Study) -> list[Row]:
    return [Row.from_trial(t) for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.FAIL)]


def feasible_front(all_rows: list[Row]) -> list[Row]:
    feasible = [r for r in all_rows if r.feasible]
    if not feasible:
        return []
    points = [[r.value(n) for n, _ in OBJECTIVES] for r in feasible]
    return [feasible[i] for i in non_dominated(points, [d for _, d in OBJECTIVES])]


def front_hypervolume(front: list[Row], spec: SearchSpec) -> float:
    points = [[r.value(n) for n, _ in OBJECTIVES] for r in front]
    return hypervolume(points, spec.reference_point, [d for _, d in OBJECTIVES])


def best_within_budget(all_rows: list[Row]) -> Row | None:
    feasible = [r for r in all_rows if r.feasible]
    if not feasible:
        return None
    return min(feasible, key=lambda r: (-r.value("accuracy"), r.value("latency_ms_median"), r.value("size_bytes")))
