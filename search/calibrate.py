"""Calibrating a target profile's emulator: the runs that measure, and the fit stored for searches to apply.

- A measured target (the host) is calibrated on candidates run through the pipeline here: fitted on two thirds,
  its error reported on the rest.
- An emulated board is calibrated against published MLPerf Tiny results of its class
  (``hardware_targets/references/mlperf_tiny.yaml``): the four reference workloads are built to their published
  layer plans and emulated at each reference board's clock.
- Or against what a user timed on their own board: a CSV of exported models and their latencies.

The fit is stored under the runs folder (``calibration/<profile>.json``) with what it is valid for, and every
search with that runs folder applies it to the profile.
"""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from hardware_targets import TargetProfile
from hardware_targets.calibration import (
    WITHIN, EmulatorParams, Sample, fit, fit_efficiencies, fit_efficiency, mape, predicted_s,
    published_classes, reference_report, reference_samples, save_calibration, worst_error,
)
from hardware_targets.emulator import energy_joules
from hardware_targets.graph import graph_precision, op_costs, tflite_op_costs
from hardware_targets.profile import arithmetic
from search.errors import ConfigError


# what --measured takes, in a few words for the errors that point to it
OWN_TIMINGS = "a CSV of exported models and their latency_ms; edgesearch calibrate --help"


def calibrate(profile: TargetProfile, runs_dir: Path, *, candidates: int = 12, seed: int = 0,
              measured: Path | None = None, progress=lambda line: None) -> dict:
    """Calibrate ``profile`` the way its backend allows, or to the board timings in the CSV file ``measured``;
    returns the report (also stored with the fit)."""
    if measured is not None:
        if profile.backend != "emulated":
            raise ConfigError(f"Target {profile.name} is measured where it runs ({profile.backend}): its figures are "
                              "timings, with no emulator to fit to a file of them. --measured is for emulated boards.")
        return calibrate_to_measurements(profile, runs_dir, Path(measured), progress=progress)
    if profile.backend == "local":
        return calibrate_host(profile, runs_dir, candidates=candidates, seed=seed, progress=progress)
    if profile.backend == "emulated":
        return calibrate_to_references(profile, runs_dir, progress=progress)
    raise ConfigError(f"Target {profile.name} is measured on its device ({profile.backend}); there is no emulator "
                      "to calibrate.")


def calibrate_to_references(profile: TargetProfile, runs_dir: Path, progress=lambda line: None) -> dict:
    """Fit the emulator of an MCU-class profile on the published MLPerf Tiny results of its class: the int8
    efficiency only (``fit_efficiency``), each reference also predicted with a fit that left it out."""
    from hardware_targets.workloads import MLPERF_TINY, export_reference

    if not profile.calibration_reference:
        if profile.runtime != "tflite-micro":  # the published results are microcontrollers'; a board runs TVM
            raise ConfigError(f"Target {profile.name} has no published results to fit its emulator to (those "
                              "here are microcontrollers'); its figures stay as its profile gives them (emulated). "
                              f"Fit it to your own timings of the board with --measured FILE ({OWN_TIMINGS}), or "
                              "measure on the board itself: copy its profile with backend: remote and rpc: "
                              "{host: BOARD, port: 9090} and start python -m tvm.exec.rpc_server there (README, "
                              "Targets): its figures are then measured, with nothing to calibrate.")
        raise ConfigError(f"Target {profile.name} names no published reference class ('calibration_reference' in "
                          f"{profile.source}); its figures stay as its profile gives them. Fit it to your own "
                          f"timings of the board with --measured FILE ({OWN_TIMINGS}), or name a class the "
                          f"references have: {published_classes()}.")
    with tempfile.TemporaryDirectory() as tmp:
        ops = {task: op_costs(export_reference(task, Path(tmp) / f"{task}.onnx")) for task in MLPERF_TINY}
    everything = reference_samples(profile, ops)
    engine = profile.calibration_reference.get("engine")
    pairs = [(r, s) for r, s in everything if r["engine"] == engine]
    if not pairs:
        raise ConfigError(f"No published result matches {profile.calibration_reference} for {profile.name} "
                          f"('calibration_reference' in {profile.source}); the references have {published_classes()}.")
    progress(f"{len(pairs)} published MLPerf Tiny results of class {profile.calibration_reference}: "
             + ", ".join(sorted({r["board"] for r, _ in pairs})))
    before = EmulatorParams.from_profile(profile)
    after = fit_efficiency([s for _, s in pairs], profile)
    rows = reference_report(profile, pairs, before, after)
    for i, row in enumerate(rows):  # with 4-8 references, the fair error is each one predicted without it
        rest = fit_efficiency([s for j, (_, s) in enumerate(pairs) if j != i], profile)
        row["held_out_ratio"] = predicted_s(pairs[i][1], profile, rest) * 1e3 / row["published_ms"]
    # The other engines of the same core are fitted on their own and reported, not applied: MLPerf publishes
    # energy only for its reference submission, so that is where the energy model (power x latency) is checked.
    others = sorted({r["engine"] for r, _ in everything} - {engine})
    for other in others:
        subset = [(r, s) for r, s in everything if r["engine"] == other]
        rows += [{**row, "applied": False} for row in reference_report(
            profile, subset, before, fit_efficiency([s for _, s in subset], profile))]
    report = {"kind": "published references", "references": rows, "within": WITHIN, "engine": engine,
              "all_within": all(r["within"] for r in rows if r.get("applied", True)),
              "mape_uncalibrated": mape([s for _, s in pairs], profile, before),
              "mape_calibrated": mape([s for _, s in pairs], profile, after),
              "worst_uncalibrated": worst_error([s for _, s in pairs], profile, before),
              "worst_calibrated": worst_error([s for _, s in pairs], profile, after),
              "train": len(pairs), "held_out": 0}
    report["path"] = str(save_calibration(profile, after, report, runs_dir))
    return report


def calibrate_host(profile: TargetProfile, runs_dir: Path, candidates: int = 12, seed: int = 0,
                   progress=lambda line: None) -> dict:
    """Measure a spread of candidates on a local target, fit on 2/3, report the error on the rest."""
    from search.candidate import PRECISIONS, Budget, Candidate, seed_problem
    from search.data import load_dataset
    from search.pipeline import Paths, evaluate_candidate

    if candidates < 6:
        raise ConfigError(f"The 'candidates' parameter of calibrate must be >= 6. Got {candidates} instead.")
    if rule := seed_problem(seed):
        raise ConfigError(f"The 'seed' parameter of calibrate must be {rule}. Got {seed!r} instead.")
    rng = np.random.default_rng(seed)
    dataset = load_dataset("digits")
    budget = Budget(epochs=1, finetune_epochs=0, prune_steps=1, timing_repeats=20)
    samples = []
    for i in range(candidates):
        c = Candidate(precision=PRECISIONS[i % len(PRECISIONS)], width=float(rng.choice([0.25, 0.5, 1.0, 1.5, 2.0])),
                      sparsity=float(rng.choice([0.0, 0.5])), pruning=str(rng.choice(["unstructured", "structured"])),
                      budget=budget, seed=seed)
        # the emulators model TVM builds: fitted to TVM's times, not to whichever runtime is faster
        r = evaluate_candidate(c, dataset, profile, Paths(Path(runs_dir)), threads=1, runtime="tvm")
        samples.append(Sample(op_costs(r.artifacts["onnx"]), c.precision, r.value("latency_ms_median") * 1e-3))
        progress(f"[{i + 1}/{candidates}] {c.key()}: {r.value('latency_ms_median'):.4f} ms measured")
    order = rng.permutation(len(samples))
    cut = len(samples) * 2 // 3
    train, held = [samples[i] for i in order[:cut]], [samples[i] for i in order[cut:]]
    params = fit(train, profile)
    before = EmulatorParams.from_profile(profile)
    report = {"kind": "host measurements", "mape_uncalibrated": mape(held, profile, before),
              "mape_calibrated": mape(held, profile, params), "worst_uncalibrated": worst_error(held, profile, before),
              "worst_calibrated": worst_error(held, profile, params), "train": len(train), "held_out": len(held)}
    report["path"] = str(save_calibration(profile, params, report, runs_dir))
    return report


# a CSV of board timings: these columns, one row per model timed (``#`` comment lines and blank lines skipped)
MEASURED_COLUMNS = ("model", "latency_ms")
OPTIONAL_COLUMNS = ("precision", "clock_mhz", "energy_uj")
PRECISION_NAMES = ("fp32", "fp16", "int8", "int8-ptq", "int8-qat")
# measurements from which the overheads are fitted as well as the efficiencies, when that predicts the left-out
# ones better: fewer fit the efficiencies alone (three free factors fit four points and predict a fifth 5x off)
FULL_FIT_FROM = 5


def _model_file(given: str, base: Path, profile: TargetProfile, where: str) -> tuple[Path, str | None]:
    """The file whose operators the board ran, and the precision its model card gives: an export's folder (its
    ``model.tflite`` on a TFLite Micro board, else its ``model.onnx``) or the model file itself."""
    wanted = ".tflite" if profile.runtime == "tflite-micro" else ".onnx"
    runs = "TensorFlow Lite Micro, so it ran a .tflite" if wanted == ".tflite" else f"{profile.runtime or 'TVM'}, " \
        "so its operators are those of the model's .onnx"
    path = Path(given).expanduser()
    path = path if path.is_absolute() else base / path
    if path.is_dir():
        if not (path / f"model{wanted}").is_file():
            raise ConfigError(f"{where}: {path} has no model{wanted}; {profile.name} runs {runs}. Give the folder "
                              f"of an `edgesearch export` for it, or the {wanted} file itself.")
        return path / f"model{wanted}", _card_precision(path / "model_card.json")
    if not path.is_file():
        raise ConfigError(f"{where}: {path} does not exist (a relative path is read from the CSV file's folder, "
                          f"{base.resolve()}).")
    if path.suffix != wanted:
        raise ConfigError(f"{where}: {path.name} is not a {wanted} file; {profile.name} runs {runs}.")
    return path, _card_precision(path.parent / "model_card.json")


def _card_precision(card: Path) -> str | None:
    """The precision an export's model card gives; None without a readable card (then it is read from the weights)."""
    try:
        return json.loads(card.read_text()).get("knobs", {}).get("precision")
    except (OSError, ValueError, AttributeError):
        return None


def _number(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{where}: {column} must be a positive number. Got {text!r} instead.")
    return value


def read_measurements(path: Path, profile: TargetProfile) -> list[tuple[dict, Sample]]:
    """The rows of a CSV of board timings as samples: each model's operators as ``profile``'s runtime runs them,
    its precision (the column, else its model card's, else read from its weights) and its measured latency."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Measurements file {str(path)!r} does not exist.")
    # utf-8-sig: a spreadsheet's CSV starts with a byte-order mark, which would be part of the first column's name
    lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines, skipinitialspace=True)
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in MEASURED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in MEASURED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        problems = ([f"{' and '.join(missing)} missing"] if missing else []) + (
            [f"{' and '.join(unknown)} not a column this reads"] if unknown else [])
        raise ConfigError(f"{path}: the first line must name the comma-separated columns "
                          f"{' and '.join(MEASURED_COLUMNS)} (and "
                          f"optionally {' and '.join(OPTIONAL_COLUMNS)}); {', '.join(problems)}. Got {columns} "
                          "instead.")
    out = []
    for number, raw in enumerate(reader, start=2):
        where = f"{path}, row {number}"
        if None in raw:
            raise ConfigError(f"{where}: more values than the {len(columns)} columns ({', '.join(columns)}); a "
                              "model path with a comma in it is quoted, \"like,this\".")
        row = {k.strip(): (v or "").strip() for k, v in raw.items()}
        if not row.get("model"):
            raise ConfigError(f"{where}: no model given.")
        model, card_precision = _model_file(row["model"], path.parent, profile, where)
        latency = _number(row.get("latency_ms", ""), "latency_ms", where)
        clock = _number(row["clock_mhz"], "clock_mhz", where) if row.get("clock_mhz") else None
        try:  # read before it is believed: a file cut short in copying, or not a model at all
            ops = tflite_op_costs(model) if model.suffix == ".tflite" else op_costs(model)
            precision = row.get("precision") or card_precision or graph_precision(model)
        except Exception as exc:
            raise ConfigError(f"{where}: {model} is not a readable {model.suffix} model "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}).") from None
        if precision not in PRECISION_NAMES:
            raise ConfigError(f"{where}: precision must be one of {', '.join(PRECISION_NAMES)}. Got {precision!r} "
                              "instead.")
        if reason := profile.arithmetic_reason(precision):
            raise ConfigError(f"{where}: {profile.name} has {reason}; a {precision} model cannot have run on it.")
        energy = {"measured_uj": _number(row["energy_uj"], "energy_uj", where)} if row.get("energy_uj") else {}
        out.append(({"model": row["model"], "file": str(model), "precision": precision, "measured_ms": latency,
                     "clock_mhz": clock or profile.clock_mhz, **energy}, Sample(ops, precision, latency * 1e-3, clock)))
    if not out:
        raise ConfigError(f"{path} names its columns but holds no measurement.")
    return out


def _held_out_ratios(samples: list[Sample], profile: TargetProfile, fitter) -> np.ndarray:
    """Each measurement predicted by a fit made without it, over the measurement."""
    return np.array([predicted_s(s, profile, fitter(samples[:i] + samples[i + 1:], profile)) / s.measured_s
                     for i, s in enumerate(samples)])


def calibrate_to_measurements(profile: TargetProfile, runs_dir: Path, measured: Path,
                              progress=lambda line: None) -> dict:
    """Fit an emulated board's factors to a user's timings of models on that board. Few timings fit the
    efficiency of each precision they hold; from ``FULL_FIT_FROM`` the overheads are fitted too where that
    predicts each left-out timing better. Each timing is also predicted by a fit that left it out."""
    pairs = read_measurements(measured, profile)
    samples = [s for _, s in pairs]
    progress(f"{len(samples)} timing(s) on {profile.name} from {measured}")
    fitters = {"the efficiency of each precision timed, the profile's overheads kept": fit_efficiencies}
    if len(samples) >= FULL_FIT_FROM:
        fitters["the efficiency of each precision timed and the call and operator overheads"] = fit
    try:
        held = {name: _held_out_ratios(samples, profile, f) for name, f in fitters.items()} if len(samples) > 1 else {}
        chosen = min(held, key=lambda name: np.median(np.abs(held[name] - 1))) if held else next(iter(fitters))
        after = fitters[chosen](samples, profile)
    except ValueError as exc:
        raise ConfigError(f"{measured}: {exc}") from exc
    before = EmulatorParams.from_profile(profile)
    # the board's active power: energy over latency of the timings that came with an energy (uJ / ms = mW)
    powers = {i: row["measured_uj"] / row["measured_ms"] for i, (row, _) in enumerate(pairs) if "measured_uj" in row}
    if powers:
        after = replace(after, power_active_mw=float(np.median(list(powers.values()))))
    rows = []
    for i, (row, sample) in enumerate(pairs):
        ms_before, ms_after = (predicted_s(sample, profile, p) * 1e3 for p in (before, after))
        rows.append({**row, "emulated_ms_uncalibrated": ms_before, "emulated_ms": ms_after,
                     "latency_ratio": ms_after / row["measured_ms"],
                     **({"held_out_ratio": float(held[chosen][i])} if held else {})})
        if i in powers:
            uj_before, uj_after = (energy_joules(sample.ops, sample.precision, profile, ms * 1e-3, p.power_active_mw)
                                   * 1e6 for ms, p in ((ms_before, before), (ms_after, after)))
            rows[-1].update({"emulated_uj_uncalibrated": uj_before, "emulated_uj": uj_after,
                             "energy_ratio": uj_after / row["measured_uj"]})
            others = [w for j, w in powers.items() if j != i]
            if others and held:  # the latency and the power each fitted without this row
                rows[-1]["energy_held_out_ratio"] = float(held[chosen][i] * np.median(others) / powers[i])
    kinds = sorted({arithmetic(s.precision) for s in samples})
    report = {"kind": "board measurements", "source": str(Path(measured).resolve()), "fitted": chosen,
              "factors": {**{f"{k} efficiency": [before.efficiency.get(k, 0.0), after.efficiency[k]] for k in kinds},
                          "op overhead us": [before.op_overhead_us, after.op_overhead_us],
                          "call overhead us": [before.call_overhead_us, after.call_overhead_us],
                          **({"active power mW": [profile.power_active_mw or float("nan"), after.power_active_mw]}
                             if powers else {})},
              "energy_rows": len(powers),
              "measurements": rows, "mape_uncalibrated": mape(samples, profile, before),
              "mape_calibrated": mape(samples, profile, after),
              "worst_uncalibrated": worst_error(samples, profile, before),
              "worst_calibrated": worst_error(samples, profile, after),
              "mape_held_out": float(np.median(np.abs(held[chosen] - 1)) * 100) if held else None,
              "train": len(samples), "held_out": 0}
    report["path"] = str(save_calibration(profile, after, report, runs_dir))
    return report
