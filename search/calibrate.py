"""Calibrating a target profile's emulator: the runs that measure, and the fit stored for searches to apply.

- A measured target (the host) is calibrated on candidates run through the pipeline here: fitted on two thirds,
  its error reported on the rest.
- An emulated board is calibrated against published MLPerf Tiny results of its class
  (``hardware_targets/references/mlperf_tiny.yaml``): the four reference workloads are built to their published
  layer plans and emulated at each reference board's clock.

The fit is stored under the runs folder (``calibration/<profile>.json``) with what it is valid for, and every
search with that runs folder applies it to the profile.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from hardware_targets import TargetProfile
from hardware_targets.calibration import (
    WITHIN, EmulatorParams, Sample, fit, fit_efficiency, mape, predicted_s, published_classes, reference_report,
    reference_samples, save_calibration, worst_error,
)
from hardware_targets.graph import op_costs
from search.errors import ConfigError


def calibrate(profile: TargetProfile, runs_dir: Path, *, candidates: int = 12, seed: int = 0,
              progress=lambda line: None) -> dict:
    """Calibrate ``profile`` the way its backend allows; returns the report (also stored with the fit)."""
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
                              "To measure on the board itself, copy its profile with backend: remote and rpc: "
                              "{host: BOARD, port: 9090} and start python -m tvm.exec.rpc_server there (README, "
                              "Targets): its figures are then measured, with nothing to calibrate.")
        raise ConfigError(f"Target {profile.name} names no published reference class ('calibration_reference' in "
                          f"{profile.source}); its figures stay as its profile gives them. The references have "
                          f"{published_classes()}.")
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
