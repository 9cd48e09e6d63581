"""Calibrating the emulator's factors against real measurements of the same candidates.

The model is linear in its unknowns once the memory term is left aside (tiny models
are compute- and overhead-bound): latency = call overhead + n_ops x op overhead +
sum over precisions of (compute time at peak / efficiency). Non-negative least
squares on relative errors fits call overhead, op overhead and 1/efficiency per
precision; the error is reported on held-out candidates.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hardware_targets.emulator import EmulatorParams, compute_seconds, latency_seconds
from hardware_targets.graph import OpCost
from hardware_targets.profile import PRECISION_KEYS, TargetProfile, arithmetic


@dataclass(frozen=True)
class Sample:
    """One candidate's graph costs and its measured median latency."""

    ops: list[OpCost]
    precision: str
    measured_s: float


def features(ops: list[OpCost], precision: str, profile: TargetProfile) -> np.ndarray:
    kind = arithmetic(precision)
    compute = [sum(compute_seconds(op, k, profile) for op in ops) if k == kind else 0.0 for k in PRECISION_KEYS]
    return np.array([1.0, float(len(ops)), *compute])


def fit(samples: list[Sample], profile: TargetProfile) -> EmulatorParams:
    from scipy.optimize import nnls

    x = np.array([features(s.ops, s.precision, profile) / s.measured_s for s in samples])
    y = np.ones(len(samples))  # relative: each prediction / measurement should be 1
    coef, _ = nnls(x, y)
    call_s, op_s, *inv_eff = coef
    default = EmulatorParams.from_profile(profile).efficiency
    efficiency = {k: (1.0 / v if v > 0 else default.get(k, 1.0)) for k, v in zip(PRECISION_KEYS, inv_eff)}
    return EmulatorParams({k: float(v) for k, v in efficiency.items()}, float(op_s * 1e6), float(call_s * 1e6))


def mape(samples: list[Sample], profile: TargetProfile, params: EmulatorParams) -> float:
    """Median absolute percentage error of the emulator against measurement."""
    errors = [abs(latency_seconds(s.ops, s.precision, profile, params) - s.measured_s) / s.measured_s
              for s in samples]
    return float(np.median(errors) * 100)


def calibration_path(profile_name: str, runs_dir: Path | None = None) -> Path:
    runs = Path(runs_dir or os.environ.get("EDGESEARCH_RUNS", "runs"))
    return runs / "calibration" / f"{profile_name}.json"


def save_calibration(profile: TargetProfile, params: EmulatorParams, report: dict, runs_dir: Path | None = None) -> Path:
    path = calibration_path(profile.name, runs_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"profile": profile.name, "params": asdict(params), **report}, indent=2))
    return path


def load_calibration(profile: TargetProfile, runs_dir: Path | None = None) -> EmulatorParams | None:
    """Fitted factors for a profile, when someone calibrated it against measurements."""
    path = calibration_path(profile.name, runs_dir)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())["params"]
    return EmulatorParams(**data)


def calibrate_host(profile: TargetProfile, runs_dir: Path, candidates: int = 12, seed: int = 0,
                   progress=lambda line: None) -> dict:
    """Measure a spread of candidates on a local target, fit on 2/3, report the error on the rest."""
    from hardware_targets.graph import op_costs
    from search.candidate import PRECISIONS, Budget, Candidate
    from search.data import load_dataset
    from search.errors import ConfigError
    from search.pipeline import Paths, evaluate_candidate

    if profile.backend != "local":
        raise ConfigError(f"Calibration needs a measured target (backend local); {profile.name} is {profile.backend}.")
    if candidates < 6:
        raise ConfigError(f"The 'candidates' parameter of calibrate must be >= 6. Got {candidates} instead.")
    rng = np.random.default_rng(seed)
    dataset = load_dataset("digits")
    budget = Budget(epochs=1, finetune_epochs=0, prune_steps=1, timing_repeats=20)
    samples = []
    for i in range(candidates):
        c = Candidate(precision=PRECISIONS[i % len(PRECISIONS)], width=float(rng.choice([0.25, 0.5, 1.0, 1.5, 2.0])),
                      sparsity=float(rng.choice([0.0, 0.5])), pruning=str(rng.choice(["unstructured", "structured"])),
                      budget=budget, seed=seed)
        r = evaluate_candidate(c, dataset, profile, Paths(Path(runs_dir)), threads=1)
        samples.append(Sample(op_costs(r.artifacts["onnx"]), c.precision, r.value("latency_ms_median") * 1e-3))
        progress(f"[{i + 1}/{candidates}] {c.key()}: {r.value('latency_ms_median'):.4f} ms measured")
    order = rng.permutation(len(samples))
    cut = len(samples) * 2 // 3
    train, held = [samples[i] for i in order[:cut]], [samples[i] for i in order[cut:]]
    params = fit(train, profile)
    report = {"mape_uncalibrated": mape(held, profile, EmulatorParams.from_profile(profile)),
              "mape_calibrated": mape(held, profile, params), "train": len(train), "held_out": len(held)}
    report["path"] = str(save_calibration(profile, params, report, runs_dir))
    return report
