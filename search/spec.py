"""The search spec: what a user submits, validated before any work starts.

A spec comes from CLI options or a YAML/TOML file with the same fields; the
resolved spec is stored with the study and next to the search's outputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardware_targets.profile import ProfileError, load_profile
from objectives.pareto import ACCURACY_METRICS
from search.candidate import PRECISIONS, PRUNING_MODES, Budget, seed_problem
from search.data import CLASS_WEIGHTS
from search.errors import ConfigError

SAMPLERS = ("auto", "tpe", "nsga2", "random")
RUNTIMES = ("auto", "tvm", "onnxruntime")  # what ships on a local target; auto = the fastest measured
HALVING_FROM_TRIALS = 100  # successive halving is on by default from this many trials (figure 5: it cost at 24)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _err(field_name: str, rule: str, value: Any) -> ConfigError:
    return ConfigError(f"The '{field_name}' field of the search spec must be {rule}. Got {value!r} instead.")


def _range(name: str, value: Any, low: float, high: float) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise _err(name, "a [low, high] pair of numbers", value)
    lo, hi = float(value[0]), float(value[1])
    if not (low <= lo <= hi <= high):
        raise _err(name, f"a range with {low} <= low <= high <= {high}", value)
    return lo, hi


@dataclass(frozen=True)
class SearchSpace:
    """Ranges and choices of the four knobs; a single value fixes a knob."""

    precision: tuple[str, ...] = PRECISIONS
    pruning: tuple[str, ...] = PRUNING_MODES
    sparsity: tuple[float, float] = (0.0, 0.95)
    temperature: tuple[float, float] = (1.0, 10.0)
    alpha: tuple[float, float] = (0.0, 1.0)
    width: tuple[float, float] = (0.25, 2.0)

    def __post_init__(self) -> None:
        for name, options in (("precision", PRECISIONS), ("pruning", PRUNING_MODES)):
            values = getattr(self, name)
            if isinstance(values, str):
                values = (values,)
            if not isinstance(values, (list, tuple)) or not values:
                raise _err(f"space.{name}", f"a non-empty list of {list(options)}", getattr(self, name))
            bad = [v for v in values if v not in options]
            if bad:
                raise _err(f"space.{name}", f"a non-empty list of {list(options)}", list(values))
            object.__setattr__(self, name, tuple(dict.fromkeys(values)))
        for name, (low, high) in {"sparsity": (0.0, 0.95), "temperature": (1.0, 100.0), "alpha": (0.0, 1.0),
                                  "width": (0.05, 8.0)}.items():
            object.__setattr__(self, name, _range(f"space.{name}", getattr(self, name), low, high))


@dataclass(frozen=True)
class SearchSpec:
    name: str
    dataset: str = "digits"
    target: str = "host"
    latency_budget_ms: float = 1.0
    trials: int = 24
    workers: int = 2
    # auto: multivariate TPE below 100 trials (model-guided from the first few), NSGA-II from 100 on
    sampler: str = "auto"
    seed: int = 0
    space: SearchSpace = field(default_factory=SearchSpace)
    budget: Budget = field(default_factory=Budget)
    timeout_s: float | None = None  # per candidate; None = no limit
    recipes: bool = True  # start with the classic single-technique recipes that fit the space
    halving: bool | None = None  # successive halving on training epochs; None = on from HALVING_FROM_TRIALS trials
    # accuracy floor, a second constraint: relative drop allowed from the fp32 full-width model, or an absolute floor
    max_accuracy_drop: float | None = None
    min_accuracy: float | None = None
    # what ships on a local target: the fastest measured of TVM (untuned, tuned) and onnxruntime, or the one forced
    runtime: str = "auto"
    # how the training loss weighs classes: "none", or "balanced" (each by its rarity) for imbalanced classes
    class_weight: str = "none"
    # what the search ranks by (and an accuracy floor bounds): plain accuracy, or balanced accuracy (mean recall per
    # class), which always predicting the largest of imbalanced classes does not inflate
    metric: str = "accuracy"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise _err("name", "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
                       "(no path separators or control characters)", self.name)
        for name in ("dataset", "target"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip() or "\x00" in v:
                raise _err(name, "a built-in name or a file path", v)
        for name in ("trials", "workers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise _err(name, "a positive integer", v)
        v = self.latency_budget_ms
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0 < v < float("inf")):
            raise _err("latency_budget_ms", "a positive number of milliseconds", v)
        if rule := seed_problem(self.seed):
            raise _err("seed", rule, self.seed)
        if self.runtime not in RUNTIMES:
            raise _err("runtime", f"one of {list(RUNTIMES)}", self.runtime)
        if self.metric not in ACCURACY_METRICS:
            raise _err("metric", f"one of {list(ACCURACY_METRICS)}", self.metric)
        if self.class_weight not in CLASS_WEIGHTS:
            raise _err("class_weight", f"one of {list(CLASS_WEIGHTS)}", self.class_weight)
        if self.sampler not in SAMPLERS:
            raise _err("sampler", f"one of {list(SAMPLERS)}", self.sampler)
        if self.timeout_s is not None and not (isinstance(self.timeout_s, (int, float))
                                               and not isinstance(self.timeout_s, bool) and self.timeout_s > 0):
            raise _err("timeout_s", "a positive number of seconds or null", self.timeout_s)
        for name in ("recipes", "halving"):
            v = getattr(self, name)
            if not (isinstance(v, bool) or (name == "halving" and v is None)):
                raise _err(name, "true or false" + (" (or null: on from "
                           f"{HALVING_FROM_TRIALS} trials)" if name == "halving" else ""), v)
        for name, rule, ok in (("max_accuracy_drop", "a fraction in (0, 1) or null", lambda x: 0 < x < 1),
                               ("min_accuracy", "a fraction in (0, 1] or null", lambda x: 0 < x <= 1)):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not ok(v)):
                raise _err(name, rule, v)
        if self.max_accuracy_drop is not None and self.min_accuracy is not None:
            raise ConfigError("Give at most one of 'max_accuracy_drop' and 'min_accuracy' in the search spec; "
                              f"got both ({self.max_accuracy_drop}, {self.min_accuracy}).")

    @property
    def target_name(self) -> str:
        """The target as people say it: a profile file's own `name` (the one its candidates are filed under), or
        the file's stem where the file cannot be read here; a kept input's path is too long to show."""
        path = Path(self.target)
        if path.suffix not in (".yaml", ".yml"):
            return self.target
        try:
            return load_profile(path).name
        except ProfileError:
            return path.stem

    @property
    def uses_halving(self) -> bool:
        return self.trials >= HALVING_FROM_TRIALS if self.halving is None else self.halving

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchSpec":
        if not isinstance(data, dict):
            raise ConfigError(f"A search spec must be a mapping of fields; got {type(data).__name__}.")
        data = dict(data)
        _check_field_names(data, "the search spec")
        known = {f.name for f in dataclasses.fields(cls)}
        sections = {key: {f.name for f in dataclasses.fields(sub)} for key, sub in (("space", SearchSpace),
                                                                                    ("budget", Budget))}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown field(s) {unknown} in the search spec{_hints(unknown, known, sections)}; "
                              f"known fields: {sorted(known)}.")
        if "name" not in data:
            raise ConfigError("The search spec needs a 'name'.")
        for key, sub in (("space", SearchSpace), ("budget", Budget)):
            value = data.get(key)
            if value is None:
                data.pop(key, None)
                continue
            if not isinstance(value, dict):
                raise _err(key, "a mapping", value)
            _check_field_names(value, repr(key))
            sub_known = sections[key]
            bad = sorted(set(value) - sub_known)
            if bad:
                elsewhere = {"the top level": known, **{k: v for k, v in sections.items() if k != key}}
                raise ConfigError(f"Unknown field(s) {bad} in '{key}'{_hints(bad, sub_known, elsewhere)}; known "
                                  f"fields: {sorted(sub_known)}.")
            try:
                data[key] = sub(**value)
            except (TypeError, ValueError) as exc:
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"Invalid '{key}' in the search spec: {exc}.") from exc
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"Invalid search spec: {exc}.") from exc


def search_folder(runs_dir: str | Path, name: str) -> Path:
    """The folder of a runs folder that holds one search's own files: its spec, inputs kept with it, a detached job's
    record and its candidates (runs folders from before 2026-12-06 hold these in candidates/, shared)."""
    return Path(runs_dir) / "searches" / name


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML spec file into a plain dict (validated by ``SearchSpec.from_dict``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Spec file {str(path)!r} does not exist.")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot be parsed ({type(exc).__name__}: {' '.join(str(exc).split())}).") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a spec file must hold a mapping of fields.")
    return data


def beside_spec_file(data: dict[str, Any], spec_file: str | Path) -> dict[str, Any]:
    """``data`` read from ``spec_file``, with its relative dataset or profile paths that name no file from the
    current folder read from the spec file's folder: a spec kept beside its data runs from any folder, and a path
    that works from the current folder keeps meaning what it did."""
    folder, found = Path(spec_file).resolve().parent, {}
    for field in ("dataset", "target"):
        value = data.get(field)
        if isinstance(value, str) and not Path(value).is_absolute() and not Path(value).is_file() \
                and (folder / value).is_file():
            found[field] = str(folder / value)
    return {**data, **found}


def _check_field_names(data: dict, where: str) -> None:
    """A YAML key such as ``?``, ``1`` or ``null`` is not a field name; say so before comparing names."""
    odd = [key for key in data if not isinstance(key, str)]
    if odd:
        raise ConfigError(f"The field names in {where} must be text; got {odd!r} (a stray '?', a number or an "
                          "empty key in the file).")


def _hints(unknown: list[str], known: set[str], elsewhere: dict[str, set[str]]) -> str:
    """What each unknown field was likely meant to be: a field of another section, or a near spelling."""
    import difflib

    hints = []
    for name in unknown:
        section = next((where for where, fields in elsewhere.items() if name in fields), None)
        if section:
            hints.append(f"'{name}' belongs {'at' if section == 'the top level' else 'under'} "
                         f"{section if section == 'the top level' else repr(section)}")
        elif close := difflib.get_close_matches(name, known, n=1, cutoff=0.6):
            hints.append(f"'{name}': did you mean '{close[0]}'?")
    return f" ({'; '.join(hints)})" if hints else ""


def input_files(spec: SearchSpec) -> dict[str, Path]:
    """The fields of ``spec`` that name a file (a user's dataset, a profile), with their paths."""
    found = {}
    for name, suffixes in (("dataset", (".npz",)), ("target", (".yaml", ".yml"))):
        path = Path(str(getattr(spec, name)))
        if path.suffix in suffixes:
            found[name] = path
    return found


def check_resources(spec: SearchSpec, available_cpus: int | None = None) -> None:
    """Refuse more workers than CPUs: each worker owns at least one CPU thread."""
    cpus = available_cpus if available_cpus is not None else (os.cpu_count() or 1)
    if spec.workers > cpus:
        raise _err("workers", f"at most the {cpus} available CPU(s)", spec.workers)


def check_inputs(spec: SearchSpec):
    """Dataset and target must exist before any work starts."""
    from hardware_targets import load_profile
    from search.data import BUILTIN_DATASETS

    files, where = input_files(spec), f"(a relative path is read from the current folder, {Path.cwd()}, and, " \
                                      "for one given in a spec file, from the spec file's folder)"
    if "target" in files and not files["target"].is_file():
        from hardware_targets.errors import ProfileError

        raise ProfileError(f"Profile file {spec.target!r} does not exist {where}.")
    profile = load_profile(spec.target)
    if spec.dataset not in BUILTIN_DATASETS and not Path(spec.dataset).is_file():
        from search.data import is_a_folder
        from search.errors import DatasetError

        if Path(spec.dataset).is_dir():
            raise DatasetError(is_a_folder(Path(spec.dataset)))
        if "dataset" in files:  # a file the user meant: say where it was looked for
            raise DatasetError(f"Dataset file {spec.dataset!r} does not exist {where}.")
        raise DatasetError(f"Unknown dataset {spec.dataset!r}: expected one of {list(BUILTIN_DATASETS)} "
                           "or the path of an .npz file.")
    return profile
