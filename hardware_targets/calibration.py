"""Calibrating the emulator's factors against measurements: the host's own, or published results of a board class.

The model is linear in its unknowns once the memory term is left aside (tiny models
are compute- and overhead-bound): latency = call overhead + n_ops x op overhead +
sum over precisions of (compute time at peak / efficiency). Non-negative least
squares on relative errors fits call overhead, op overhead and 1/efficiency per
precision. The runs that produce the measurements live in ``search.calibrate``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from hardware_targets.emulator import EmulatorParams, compute_seconds, latency_seconds
from hardware_targets.graph import OpCost
from hardware_targets.profile import PRECISION_KEYS, TargetProfile, arithmetic


REFERENCES = Path(__file__).parent / "references" / "mlperf_tiny.yaml"
WITHIN = 1.5  # the aim: every published reference within this factor, latency and energy


@dataclass(frozen=True)
class Sample:
    """One graph's costs and its measured median latency (on a board at ``clock_mhz``, when not the profile's)."""

    ops: list[OpCost]
    precision: str
    measured_s: float
    clock_mhz: float | None = None


def _at_clock(profile: TargetProfile, sample: Sample) -> TargetProfile:
    return replace(profile, clock_mhz=sample.clock_mhz) if sample.clock_mhz else profile


def features(ops: list[OpCost], precision: str, profile: TargetProfile) -> np.ndarray:
    kind = arithmetic(precision)
    compute = [sum(compute_seconds(op, k, profile) for op in ops) if k == kind else 0.0 for k in PRECISION_KEYS]
    return np.array([1.0, float(len(ops)), *compute])


def fit(samples: list[Sample], profile: TargetProfile) -> EmulatorParams:
    from scipy.optimize import nnls

    x = np.array([features(s.ops, s.precision, _at_clock(profile, s)) / s.measured_s for s in samples])
    y = np.ones(len(samples))  # relative: each prediction / measurement should be 1
    coef, _ = nnls(x, y)
    call_s, op_s, *inv_eff = coef
    default = EmulatorParams.from_profile(profile).efficiency
    efficiency = {k: (1.0 / v if v > 0 else default.get(k, 1.0)) for k, v in zip(PRECISION_KEYS, inv_eff)}
    start = EmulatorParams({k: float(v) for k, v in efficiency.items()}, float(op_s * 1e6), float(call_s * 1e6))
    return _refined(samples, profile, start, overheads=True)


def _refined(samples: list[Sample], profile: TargetProfile, start: EmulatorParams, overheads: bool) -> EmulatorParams:
    """``start`` refined by least squares on the relative errors of the emulator as it predicts, its memory term
    included: the linear fits leave that term aside, and a board's memory-bound layers (a large fully connected
    layer in int8 on a Raspberry Pi) were then predicted up to 2x off. The efficiencies of the samples' precisions
    are free, and with ``overheads`` the call and operator overheads too."""
    from scipy.optimize import least_squares

    kinds = sorted({arithmetic(s.precision) for s in samples})

    def params(v) -> EmulatorParams:
        efficiency = {**start.efficiency, **{k: float(1 / x) for k, x in zip(kinds, v[len(v) - len(kinds):])}}
        return replace(start, efficiency=efficiency,
                       **({"call_overhead_us": float(v[0]), "op_overhead_us": float(v[1])} if overheads else {}))

    x0 = [*([start.call_overhead_us, start.op_overhead_us] if overheads else []),
          *(1 / start.efficiency[k] if start.efficiency.get(k, 0) > 0 else 1.0 for k in kinds)]
    lower = [*([0.0, 0.0] if overheads else []), *[1e-6] * len(kinds)]  # an efficiency is finite and positive
    x0 = np.maximum(x0, lower)
    result = least_squares(lambda v: [predicted_s(s, profile, params(v)) / s.measured_s - 1 for s in samples], x0,
                           bounds=(lower, np.inf))
    return params(result.x)


def fit_efficiency(samples: list[Sample], profile: TargetProfile) -> EmulatorParams:
    """Only the efficiency of the samples' precision, the profile's overheads kept: for a handful of published
    results, where three free factors fit the points but predict a left-out one up to 5x off (NOTES.md)."""
    base = EmulatorParams.from_profile(profile)
    kind = arithmetic(samples[0].precision)
    if any(arithmetic(s.precision) != kind for s in samples):
        raise ValueError("fit_efficiency takes samples of one precision.")
    # latency = overheads + compute / efficiency; least squares on relative errors in 1 / efficiency
    a = np.array([features(s.ops, s.precision, _at_clock(profile, s))[2 + PRECISION_KEYS.index(kind)] / s.measured_s
                  for s in samples])
    b = np.array([1.0 - (base.call_overhead_us + len(s.ops) * base.op_overhead_us) * 1e-6 / s.measured_s
                  for s in samples])
    inverse = float(a @ b / (a @ a))
    if inverse <= 0:
        raise ValueError(f"the {kind} latencies are below what the profile's overheads alone take (call_overhead_us "
                         f"{base.call_overhead_us:g}, op_overhead_us {base.op_overhead_us:g} per operator): check that "
                         "they are in milliseconds, or lower the overheads in the profile.")
    return replace(base, efficiency={**base.efficiency, kind: 1.0 / inverse})


def fit_efficiencies(samples: list[Sample], profile: TargetProfile) -> EmulatorParams:
    """``fit_efficiency`` for each precision the samples hold, the profile's overheads kept: the fit a handful of
    measurements of a user's board supports."""
    efficiency = dict(EmulatorParams.from_profile(profile).efficiency)
    for kind in sorted({arithmetic(s.precision) for s in samples}):
        fitted = fit_efficiency([s for s in samples if arithmetic(s.precision) == kind], profile)
        efficiency[kind] = fitted.efficiency[kind]
    start = replace(EmulatorParams.from_profile(profile), efficiency=efficiency)
    return _refined(samples, profile, start, overheads=False) if samples else start


def predicted_s(sample: Sample, profile: TargetProfile, params: EmulatorParams) -> float:
    return latency_seconds(sample.ops, sample.precision, _at_clock(profile, sample), params)


def percentage_errors(samples: list[Sample], profile: TargetProfile, params: EmulatorParams) -> np.ndarray:
    """Absolute percentage error of the emulator against each measurement."""
    return np.array([abs(predicted_s(s, profile, params) - s.measured_s) / s.measured_s * 100 for s in samples])


def mape(samples: list[Sample], profile: TargetProfile, params: EmulatorParams) -> float:
    """Median absolute percentage error of the emulator against measurement."""
    return float(np.median(percentage_errors(samples, profile, params)))


def worst_error(samples: list[Sample], profile: TargetProfile, params: EmulatorParams) -> float:
    """The largest absolute percentage error: least squares lowers it and may raise the median."""
    return float(percentage_errors(samples, profile, params).max())


def calibration_path(profile_name: str, runs_dir: Path) -> Path:
    return Path(runs_dir) / "calibration" / f"{profile_name}.json"


def valid_for(profile: TargetProfile) -> dict:
    """What a calibration holds for: this profile file as it is now and, for the host, this CPU kind."""
    import hashlib

    from hardware_targets.host import host_cpu

    text = Path(profile.source).read_bytes() if profile.source else b""
    return {"profile": profile.name, "profile_sha256": hashlib.sha256(text).hexdigest(),
            "cpu": host_cpu().key if profile.backend == "local" else None}


def save_calibration(profile: TargetProfile, params: EmulatorParams, report: dict, runs_dir: Path) -> Path:
    path = calibration_path(profile.name, runs_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"valid_for": valid_for(profile), "params": asdict(params), **report}, indent=2))
    return path


def _stored(profile: TargetProfile, runs_dir: Path) -> dict | None:
    """The calibration stored for a profile under ``runs_dir``, when it was made for the profile as it is now (same
    profile file, and for the host the same CPU kind)."""
    path = calibration_path(profile.name, runs_dir)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if data.get("valid_for") == valid_for(profile) else None


@dataclass(frozen=True)
class Emulator:
    """What emulates a board's latency and energy, from one read of its calibration: the fitted factors (None where
    the profile's own apply) and, in words for a search's log and a model card, what they were fitted to (an
    emulated figure is only as good as that)."""

    params: EmulatorParams | None
    words: str

    def line(self, board: str) -> str:
        return emulated_line(board, self.words)


def emulated_line(board: str, words: str) -> str:
    """How every command says which factors emulated a board's figures."""
    return f"latency and energy emulated for {board} with {words}"


def emulator_for(profile: TargetProfile, runs_dir: Path | None) -> Emulator:
    """The factors under ``runs_dir`` for ``profile`` as it is now, or the profile's own."""
    data = _stored(profile, runs_dir) if runs_dir else None
    return Emulator(EmulatorParams(**data["params"]) if data else None, _words(data))


def load_calibration(profile: TargetProfile, runs_dir: Path) -> EmulatorParams | None:
    """Fitted factors for a profile from ``runs_dir``; None where there are none for it as it is now, and the
    profile's own factors apply."""
    return emulator_for(profile, runs_dir).params


def _words(data: dict | None) -> str:
    if data is None:
        return "the profile's own factors (not calibrated)"
    if data.get("kind") == "board measurements":
        held = data.get("mape_held_out")
        return (f"factors fitted to {data['train']} timing(s) of the board ({data['source']}; "
                + (f"median error {held:.1f}% on a timing left out of the fit" if held is not None
                   else "one timing: no error measured on another")
                + (f"; active power {data['params']['power_active_mw']:.4g} mW from {data['energy_rows']} energy "
                   "measurement(s)" if data.get("energy_rows") else "") + ")")
    if data.get("kind") == "published references":
        return (f"factors fitted to {data['train']} published MLPerf Tiny results ({data['engine']} engine; median "
                f"error {data['mape_calibrated']:.1f}%)")
    return (f"factors fitted to {data['train']} host measurements (median error {data['mape_calibrated']:.1f}% on "
            "held-out ones)")


def reference_samples(profile: TargetProfile, ops_by_task: dict[str, list[OpCost]]) -> list[tuple[dict, Sample]]:
    """The published results for the profile's core class (``calibration_reference.core``), every engine, as
    samples of the reference workloads at each board's clock, int8."""
    import yaml

    wanted = profile.calibration_reference or {}
    data = yaml.safe_load(REFERENCES.read_text())
    out = []
    for r in data["results"]:
        board = data["boards"][r["board"]]
        if board["core"] == wanted.get("core"):
            ref = {**r, **board}
            out.append((ref, Sample(ops_by_task[r["task"]], "int8", r["latency_ms"] * 1e-3, board["clock_mhz"])))
    return out


def published_classes() -> str:
    """The core classes and engines of the published references, in words, for a profile's
    ``calibration_reference``."""
    import yaml

    data = yaml.safe_load(REFERENCES.read_text())
    cores = sorted({data["boards"][r["board"]]["core"] for r in data["results"]})
    engines = sorted({r["engine"] for r in data["results"]})
    example = f"{{core: {cores[0]}, engine: {engines[0]}}}"
    return f"core {' or '.join(cores)} and engine {' or '.join(engines)} (e.g. {example})"


def reference_report(profile: TargetProfile, pairs: list[tuple[dict, Sample]], before: EmulatorParams,
                     after: EmulatorParams) -> list[dict]:
    """Each reference against the emulator, before and after calibration; energy at the board's published power."""
    rows = []
    for ref, sample in pairs:
        ms_before, ms_after = (predicted_s(sample, profile, p) * 1e3 for p in (before, after))
        row = {"task": ref["task"], "board": ref["board"], "engine": ref["engine"], "clock_mhz": ref["clock_mhz"],
               "published_ms": ref["latency_ms"], "emulated_ms_uncalibrated": ms_before, "emulated_ms": ms_after,
               "latency_ratio": ms_after / ref["latency_ms"]}
        if ref.get("energy_uj") and ref.get("power_mw"):
            row["published_uj"] = ref["energy_uj"]
            row["emulated_uj"] = ref["power_mw"] * ms_after
            row["energy_ratio"] = row["emulated_uj"] / ref["energy_uj"]
        row["within"] = all(1 / WITHIN <= row[k] <= WITHIN for k in ("latency_ratio", "energy_ratio") if k in row)
        rows.append(row)
    return rows
