"""Benchmarks: speed, scaling, search quality and fidelity, measured side by side in one run, as ratios.

Writes ``runs/bench/results.json``, ``runs/bench/REPORT.md`` and its plots, and logs
them to the MLflow experiment ``bench``. Not a test: nothing here asserts a timing.
Figures (numbered as in the benchmark issue):
1. search throughput, the share of each stage, and the service's own share of wall time;
2. parallel efficiency: the same trials with 1 and 2 workers;
3. compiler vs runtime: TVM tuned and untuned vs onnxruntime on the same ONNX, per precision,
   on the built-in candidates and on MobileNetV1-0.25 at 96x96x3;
4. tuning reuse: a second search on the same target and dataset, over the first one's records;
5. search quality: the default search at N trials against random sampling at 2N (hypervolume, Mann-Whitney), recipes
   covered, worker time spent on infeasible candidates, and `make run` before and after the budget-first search;
5f. the same comparison under an accuracy floor a user would state;
6. sampler cost: time per ``ask`` at 100 and 1,000 trials;
7. emulator fidelity: median absolute percentage error on held-out host measurements;
8. the classic guide's single-technique rows on the host, with the runtime that would ship: size, latency and
   accuracy against the fp32 full-width model, per runtime, beside the guide's published figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import time
import traceback
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Plan:
    """How big each figure's run is; ``quick`` runs every figure smaller (18 minutes on 2 cores, Zen 5, 2026-12-03)."""

    search_trials: int  # figures 1-2
    search_default_budget: bool  # figures 1-2: the default per-candidate budget, as a user's search runs
    search_repeats: int  # 1-vs-2-worker pairs
    runtime_widths: tuple[float, ...]  # figure 3, built-in candidates
    tuned_precisions: tuple[str, ...]  # figure 3: which precisions are also tuned
    tuned_widths: tuple[float, ...]  # figure 3: at which widths
    tuning_trials: int  # figure 3 (per built-in model) and figure 4 (per candidate)
    mobilenet_tuning_trials: int
    mobilenet_trials_per_task: tuple[int, ...]  # figure 3: the shipping stage's per-task budgets, detected target
    mobilenet_int8_trials_per_task: tuple[int, ...]  # figure 3: the same for MobileNet int8 (none: onnxruntime only)
    mobilenet_warm_width: float | None  # figure 3: this width at 1 trial per task, cold and warmed by 0.25's records
    timing_repeats: int
    reuse_trials: int  # figure 4, per search
    quality_trials: int  # figure 5, per search
    quality_seeds: tuple[int, ...]
    calibration_candidates: int  # figure 7
    guide_datasets: tuple[str, ...]  # figure 8
    guide_seeds: tuple[int, ...]  # figure 8: each row trained once per seed, against the same seed's fp32 model
    cluster_trials: int  # figure 9, per search


QUICK = Plan(search_trials=4, search_default_budget=False, search_repeats=1, runtime_widths=(0.5, 1.0), tuned_precisions=("fp32",), tuned_widths=(1.0,),
             tuning_trials=10, mobilenet_tuning_trials=22, mobilenet_trials_per_task=(1, 4),
             mobilenet_int8_trials_per_task=(), mobilenet_warm_width=None, timing_repeats=10, reuse_trials=2, quality_trials=12,
             quality_seeds=(0, 1), calibration_candidates=9, guide_datasets=("digits",),
             guide_seeds=(0,), cluster_trials=4)
FULL = Plan(search_trials=24, search_default_budget=True, search_repeats=2, runtime_widths=(0.5, 1.0, 2.0),
            tuned_precisions=("fp32", "int8-ptq", "int8-qat"), tuned_widths=(0.5, 1.0, 2.0), tuning_trials=40, mobilenet_tuning_trials=132,
            mobilenet_trials_per_task=(1, 4, 16),
            mobilenet_int8_trials_per_task=(1, 4), mobilenet_warm_width=0.5, timing_repeats=30, reuse_trials=4, quality_trials=24, quality_seeds=(0, 1, 2, 3, 4), calibration_candidates=18,
            guide_datasets=("digits", "mnist1d"), guide_seeds=(0, 1, 2), cluster_trials=8)

SAMPLERS = ("nsga2", "tpe", "random")
WARM_SEEDS = (0, 1)  # figure 3's warm start: each seed tuned cold and warmed


def _spread(values) -> dict:
    values = [float(v) for v in values]
    return {"median": float(np.median(values)), "min": min(values), "max": max(values), "n": len(values)}


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import mlflow
    import onnxruntime
    import optuna
    import ray
    import torch
    import tvm

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "versions": {"torch": torch.__version__, "tvm": tvm.__version__, "onnxruntime": onnxruntime.__version__,
                         "optuna": optuna.__version__, "ray": ray.__version__, "mlflow": mlflow.__version__}}


def _search_budget(**overrides):
    from search.candidate import Budget

    return replace(Budget(epochs=4, finetune_epochs=1, prune_steps=1, timing_repeats=10, front_tuning_trials=0,
                          front_tuning_minutes=0), **overrides)


def _run(spec, runs: Path, tracking: bool = False, resume: bool = False):
    from search.study import default_storage
    from search.tracking import default_tracking_uri
    from search.workers import run_search

    return run_search(spec, runs, storage_url=default_storage(runs), report=lambda line: None, resume=resume,
                      tracking_uri=default_tracking_uri(runs) if tracking else None)


def _stamp() -> str:
    return time.strftime("%H%M%S")


# Figures 1 and 2 -----------------------------------------------------------------------------------------------

def search_figures(runs: Path, plan: Plan) -> dict:
    """The same spec (same seed, so the same candidates) with 1 and 2 workers, as a user runs it: each search
    starts its own Ray cluster and logs to MLflow. Pairs alternate their order so warm caches favour neither."""
    from search.candidate import Budget
    from search.data import load_dataset
    from search.spec import SearchSpec
    from search.stages.train import get_teacher

    budget = Budget(front_tuning_minutes=0) if plan.search_default_budget else _search_budget()
    # trained once, before anything is timed
    get_teacher(load_dataset("digits"), 0, runs / "teachers", budget.teacher_epochs)
    runs_by_workers: dict[int, list[dict]] = {1: [], 2: []}
    for repeat in range(plan.search_repeats):
        for workers in ((1, 2) if repeat % 2 == 0 else (2, 1)):
            name = f"bench-w{workers}-r{repeat}-{_stamp()}"
            _say(f"  {name}: {plan.search_trials} trials on {workers} worker(s)")
            # Random sampling draws the same candidates whatever order results come back in.
            spec = SearchSpec(name=name, trials=plan.search_trials, workers=workers, sampler="random", seed=0,
                              budget=budget)
            outcome = _run(spec, runs, tracking=True)
            runs_by_workers[workers].append(_search_costs(outcome, runs, workers))
    two, one = runs_by_workers[2], runs_by_workers[1]
    stage_share: dict[str, list[float]] = {}
    for r in two:
        for k, v in r["stage_share"].items():
            stage_share.setdefault(k, []).append(v)
    return {
        "trials": plan.search_trials,
        "budget": {"default": plan.search_default_budget, **budget.__dict__},
        "candidates_per_hour": _spread([r["candidates_per_hour"] for r in two]),
        "stage_share": {k: _spread(v) for k, v in stage_share.items()},
        "service_share": _spread([r["service_share"] for r in two]),
        "service_seconds": {k: _spread([r["timings"][k] for r in two]) for k in ("ray_start", "optuna", "logging")},
        "dispatch_ms": _spread([r["dispatch_ms"] for r in two]),
        "dispatch_share": _spread([r["dispatch_share"] for r in two]),
        "idle_capacity_share": _spread([r["idle_capacity_share"] for r in two]),
        "parallel_speedup": _spread([a["loop_seconds"] / b["loop_seconds"] for a, b in zip(one, two)]),
        "loop_seconds": {"1": _spread([r["loop_seconds"] for r in one]), "2": _spread([r["loop_seconds"] for r in two])},
        "runs": {"1": one, "2": two},
    }


def _search_costs(outcome, runs: Path, workers: int) -> dict:
    from search.study import default_storage, load_study

    t = outcome.timings
    study = load_study(outcome.name, default_storage(runs))
    stages: dict[str, float] = {}
    for trial in study.trials:
        for stage, sec in (trial.user_attrs.get("stage_seconds") or {}).items():
            stages[stage] = stages.get(stage, 0.0) + sec
    busy = sum(stages.values())
    loop = t["wall"] - t["ray_start"]  # the trials themselves: what more workers can shorten
    work = busy + t["logging"]  # the workers' stages and the driver's MLflow logging
    return {"wall_seconds": t["wall"], "loop_seconds": loop, "timings": t,
            "candidates_per_hour": len(outcome.rows) / t["wall"] * 3600,
            "stage_share": {**{k: v / work for k, v in stages.items()}, "logging (MLflow, driver)": t["logging"] / work},
            "service_share": (t["ray_start"] + t["optuna"] + t["logging"]) / t["wall"],
            # what the service costs the workers: the time a freed worker waits for its next candidate
            "dispatch_ms": 1e3 * t["dispatch"] / max(1, t["dispatches"]),
            "dispatch_share": t["dispatch"] / (loop * workers),
            "idle_capacity_share": max(0.0, 1 - busy / (loop * workers))}


# Figure 3 ------------------------------------------------------------------------------------------------------

def runtime_figures(tmp: Path, plan: Plan) -> dict:
    """TVM tuned and untuned vs onnxruntime: same ONNX, one thread each, timed the same way."""
    import torch

    from hardware_targets import load_profile
    from hardware_targets.backends.local import LocalBackend, time_onnxruntime
    from hardware_targets.compile import compile_tvm
    from hardware_targets.workloads import export_mobilenet_v1
    from search.candidate import Budget, Candidate
    from search.data import load_dataset
    from search.models import build_model
    from search.pipeline import host_build_target, set_threads, tuned_build_target
    from search.stages.compress import quantization_aware_finetune
    from search.stages.export import export_onnx, input_dtype, ort_session
    from search.stages.train import fit

    set_threads(1)
    host = load_profile("host")
    backend = LocalBackend(host)
    digits = load_dataset("digits")
    cache = tmp / "tuning"  # fresh: every tuned figure here includes its tuning

    def timed(onnx_path, precision, shape, dtype, sample, label, trials):
        """Untuned as the search times candidates; tuned as the shipping stage tunes, for the detected CPU."""
        target = tuned_build_target(host) if trials else host_build_target(host, precision)
        art = compile_tvm(onnx_path, target, tmp / f"{label}-{trials}.so", shape, dtype,
                          tuning_trials=trials, cache_dir=cache if trials else None)
        ms = backend.measure(art, onnx_path, precision, sample, plan.timing_repeats)["latency_ms_median"].value
        return ms, art

    models = []
    for precision in ("fp32", "fp16", "int8-ptq", "int8-qat"):
        for width in plan.runtime_widths:
            torch.manual_seed(0)
            c = Candidate(precision=precision, width=width, budget=Budget(epochs=1, finetune_epochs=1))
            model = fit(build_model(digits.sample_shape, 10, width), digits, 1)
            if precision == "int8-qat":
                model = quantization_aware_finetune(model, c, digits)
            label = f"{precision}-w{width:g}"
            path = export_onnx(model, c, digits, tmp / f"{label}.onnx")
            dtype = input_dtype(precision)
            sample = digits.x_val[:1].astype(dtype)
            untuned, _ = timed(path, precision, (1, 1, 8, 8), dtype.name, sample, label, 0)
            ort = time_onnxruntime(ort_session(path, 1), sample, plan.timing_repeats)["ort_latency_ms_median"].value
            row = {"model": label, "precision": precision, "width": width, "onnxruntime_ms": ort,
                   "tvm_untuned_ms": untuned}
            if precision in plan.tuned_precisions and width in plan.tuned_widths:
                _say(f"  tuning {label} ({plan.tuning_trials} trials)")
                row["tvm_tuned_ms"], art = timed(path, precision, (1, 1, 8, 8), dtype.name, sample, label,
                                                 plan.tuning_trials)
                row["tuning_seconds"] = art.tuning_seconds
            models.append(row)
    _say(f"  MobileNetV1-0.25 at 96x96x3, tuning {plan.mobilenet_tuning_trials} trials")
    mobilenet = export_mobilenet_v1(tmp / "mobilenet.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
    untuned, untuned_art = timed(mobilenet, "fp32", (1, 3, 96, 96), "float32", x, "mobilenet", 0)
    tuned, art = timed(mobilenet, "fp32", (1, 3, 96, 96), "float32", x, "mobilenet", plan.mobilenet_tuning_trials)
    ort = time_onnxruntime(ort_session(mobilenet, 1), x, plan.timing_repeats)["ort_latency_ms_median"].value
    staged, fp32_libraries = _staged_tuning(mobilenet, x, host, tmp, plan, untuned_art.library)
    staged["int8"] = _int8_staged(mobilenet, x, host, tmp, plan, fp32_libraries)
    if plan.mobilenet_warm_width:
        staged["warm_start"] = _warm_start(x, host, tmp, plan)
    ratios = {}
    for precision in ("fp32", "fp16", "int8-ptq", "int8-qat"):
        rows = [m for m in models if m["precision"] == precision]
        ratios[precision] = {"untuned_over_onnxruntime": _spread([m["tvm_untuned_ms"] / m["onnxruntime_ms"]
                                                                  for m in rows])}
        tuned_rows = [m for m in rows if "tvm_tuned_ms" in m]
        if tuned_rows:
            ratios[precision]["tuned_over_onnxruntime"] = _spread([m["tvm_tuned_ms"] / m["onnxruntime_ms"]
                                                                   for m in tuned_rows])
            ratios[precision]["tuned_over_untuned"] = _spread([m["tvm_tuned_ms"] / m["tvm_untuned_ms"]
                                                               for m in tuned_rows])
    from hardware_targets.host import host_cpu

    return {"models": models, "ratios": ratios, "fp16_native": host.supports("fp16"), "cpu_isa": host_cpu().isa,
            "mobilenet_v1_025_96": {"onnxruntime_ms": ort, "tvm_untuned_ms": untuned, "tvm_tuned_ms": tuned,
                                    "tuning_trials": plan.mobilenet_tuning_trials, "tuning_seconds": art.tuning_seconds,
                                    "tuning_tasks": art.tasks_total,
                                    "tuned_over_onnxruntime": tuned / ort, "untuned_over_onnxruntime": untuned / ort,
                                    "staged": staged}}


def _staged_tuning(onnx_path: Path, x, host, tmp: Path, plan: Plan,
                   untuned_library: str) -> tuple[dict, dict[str, str]]:
    """The shipping stage on the bench workload: tuned for the detected CPU with a per-task budget (each budget
    from fresh records), then every tuned library, the untuned one and onnxruntime timed in turns (the VM's speed
    swings by more than the differences between runs minutes apart); what would ship (the fastest of them), and that
    figure against the CPU's fp32 compute limit: MACs / (1 thread x fp32 MACs per cycle x clock), from the detected
    host. Returns the figures and the libraries timed (untuned and per budget), for the int8 rows to time beside."""
    from hardware_targets.backends.local import onnxruntime_timer, tvm_timer
    from hardware_targets.compile import compile_tvm
    from hardware_targets.graph import op_costs
    from search.pipeline import tuned_build_target
    from search.stages.export import ort_session

    target = tuned_build_target(host)
    builds = {}
    for trials in plan.mobilenet_trials_per_task:
        _say(f"  MobileNetV1-0.25, {trials} trial(s) per task for {target.get('mcpu')}")
        builds[str(trials)] = compile_tvm(onnx_path, target, tmp / f"mobilenet-pt{trials}.so", (1, 3, 96, 96),
                                          "float32", trials_per_task=trials, cache_dir=tmp / f"tuning-pt{trials}")
    timers = {trials: tvm_timer(art.library, x, "float32") for trials, art in builds.items()}
    timers["untuned"] = tvm_timer(untuned_library, x, "float32")
    timers["onnxruntime"] = onnxruntime_timer(ort_session(onnx_path, 1), x)
    median = _side_by_side(timers, plan.timing_repeats)
    ort_ms = median["onnxruntime"]
    per_task = {trials: {"tvm_tuned_ms": median[trials], "tuned_over_onnxruntime": median[trials] / ort_ms,
                         "tuning_seconds": art.tuning_seconds, "tasks": art.tasks_total,
                         "tasks_tuned": art.tasks_tuned} for trials, art in builds.items()}
    shipped = min(median.values())
    macs = sum(op.macs for op in op_costs(onnx_path))
    limit_ms = macs / (host.peak_macs_per_cycle["fp32"] * host.clock_mhz * 1e6) * 1e3
    libraries = {"untuned": untuned_library, **{trials: art.library for trials, art in builds.items()}}
    return {"target": target, "per_task": per_task, "timed_in_turns": True, "budget_per_layer": True,
            "onnxruntime_ms": ort_ms,
            "tvm_untuned_ms": median["untuned"], "shipped_ms": shipped, "shipped_over_onnxruntime": shipped / ort_ms,
            "macs": macs, "fp32_limit_ms": limit_ms, "shipped_over_limit": shipped / limit_ms,
            "limit_from": {"fp32_macs_per_cycle": host.peak_macs_per_cycle["fp32"], "clock_mhz": host.clock_mhz,
                           "threads": 1}}, libraries


def _warm_start(x, host, tmp: Path, plan: Plan) -> dict:
    """A wider MobileNet at 1 trial per task, tuned from fresh records and from a copy of the records the largest
    per-task budget left for MobileNetV1-0.25 (other layer shapes: nothing is reused, the cost model is warmed by
    them), then both timed in turns with onnxruntime: what a search's later candidates gain from earlier ones."""
    import shutil

    from hardware_targets.backends.local import onnxruntime_timer, tvm_timer
    from hardware_targets.compile import compile_tvm
    from hardware_targets.workloads import export_mobilenet_v1
    from search.pipeline import tuned_build_target
    from search.stages.export import ort_session

    width, source = plan.mobilenet_warm_width, max(plan.mobilenet_trials_per_task)
    target = tuned_build_target(host)
    onnx_path = export_mobilenet_v1(tmp / f"mobilenet-{width:g}.onnx", width=width)
    records = sum(len(f.read_text().splitlines()) for f in (tmp / f"tuning-pt{source}").rglob("*tuning_record*.json"))
    builds = {}
    for seed in WARM_SEEDS:  # a 1-trial tuning depends on its seed: cold picks varied 1.3x between two
        shutil.copytree(tmp / f"tuning-pt{source}", tmp / f"tuning-warm-{seed}")
        for label in ("cold", "warm"):
            _say(f"  MobileNetV1-{width:g}, 1 trial per task, {label}, seed {seed}")
            builds[f"{label}-{seed}"] = compile_tvm(
                onnx_path, target, tmp / f"mobilenet-{width:g}-{label}-{seed}.so", (1, 3, 96, 96), "float32",
                trials_per_task=1, seed=seed, cache_dir=tmp / f"tuning-{label}-{seed}")
    timers = {key: tvm_timer(art.library, x, "float32") for key, art in builds.items()}
    timers["onnxruntime"] = onnxruntime_timer(ort_session(onnx_path, 1), x)
    median = _side_by_side(timers, plan.timing_repeats)
    return {"width": width, "records": records, "records_from": f"MobileNetV1-0.25 at {source} trials per task",
            "onnxruntime_ms": median["onnxruntime"],
            "builds": {key: {"tvm_tuned_ms": median[key], "tuned_over_onnxruntime": median[key] / median["onnxruntime"],
                             "tuning_seconds": art.tuning_seconds, "tasks": art.tasks_total,
                             "tasks_tuned": art.tasks_tuned} for key, art in builds.items()}}


def _int8_staged(fp32_path: Path, x, host, tmp: Path, plan: Plan, fp32_libraries: dict[str, str]) -> dict:
    """MobileNet int8 as the search quantizes it (PTQ, QDQ), through the same shipping stage as fp32: is int8 faster
    than fp32 in each runtime, at the same per-task budgets? On a CPU with VNNI the tuned build computes pointwise
    convolutions in integers; the largest budget is also tuned with float QDQ, to show what that rewrite buys.
    Every int8 and fp32 option (``fp32_libraries``: untuned and per budget) is timed in turns with both
    onnxruntime sessions."""
    from hardware_targets.backends.local import onnxruntime_timer, tvm_timer
    from hardware_targets.compile import compile_tvm, load_vm
    from hardware_targets.integer import integer_kernels_apply
    from search.pipeline import tuned_build_target
    from search.stages.export import ort_session, quantize_ptq

    import tvm

    calibration = np.random.default_rng(1).standard_normal((8, *x.shape[1:])).astype(np.float32)
    path = quantize_ptq(fp32_path, tmp / "mobilenet-int8-ptq.onnx", calibration)
    session = ort_session(path, 1)
    reference = session.run(None, {"x": x})[0]
    target = tuned_build_target(host)
    integer = integer_kernels_apply(tvm.target.Target(target))
    builds = [(t, None) for t in plan.mobilenet_int8_trials_per_task]
    if integer and builds:
        builds.append((builds[-1][0], False))
    arts = {}
    for trials, force in builds:
        kind = "integer kernels" if integer and force is None else "float QDQ"
        _say(f"  MobileNetV1-0.25 int8, {trials} trial(s) per task for {target.get('mcpu')} ({kind})")
        label = f"int8-pt{trials}{'-float' if force is False else ''}"
        arts[(str(trials), force)] = compile_tvm(path, target, tmp / f"mobilenet-{label}.so", (1, 3, 96, 96),
                                                 "float32", trials_per_task=trials, cache_dir=tmp / f"tuning-{label}",
                                                 integer=force)
    timers = {("int8", key): tvm_timer(art.library, x, "float32") for key, art in arts.items()}
    timers.update({("fp32", key): tvm_timer(lib, x, "float32") for key, lib in fp32_libraries.items()})
    timers[("int8", "onnxruntime")] = onnxruntime_timer(session, x)
    timers[("fp32", "onnxruntime")] = onnxruntime_timer(ort_session(fp32_path, 1), x)
    median = _side_by_side(timers, plan.timing_repeats)
    ort_ms = median[("int8", "onnxruntime")]
    per_task, float_qdq = {}, {}
    for (trials, force), art in arts.items():
        ms = median[("int8", (trials, force))]
        out = load_vm(art.library)["main"](tvm.runtime.tensor(x)).numpy()
        row = {"tvm_tuned_ms": ms, "tuned_over_onnxruntime_int8": ms / ort_ms, "tuning_seconds": art.tuning_seconds,
               "tasks": art.tasks_total, "tasks_tuned": art.tasks_tuned, "integer_products": art.integer_products,
               "max_abs_diff_vs_onnxruntime": float(np.abs(out - reference).max())}
        if ("fp32", trials) in median:
            row["over_fp32_tuned"] = ms / median[("fp32", trials)]
        (float_qdq if force is False else per_task)[trials] = row
    shipped = min([ort_ms] + [v["tvm_tuned_ms"] for v in per_task.values()])
    fp32_shipped = min(v for (kind, _), v in median.items() if kind == "fp32")
    return {"integer_kernels": integer, "timed_in_turns": True, "onnxruntime_ms": ort_ms,
            "onnxruntime_int8_over_fp32": ort_ms / median[("fp32", "onnxruntime")],
            "per_task": per_task, "float_qdq": float_qdq, "shipped_ms": shipped, "fp32_shipped_ms": fp32_shipped,
            "shipped_over_fp32_shipped": shipped / fp32_shipped}


# Figure 4 ------------------------------------------------------------------------------------------------------

def reuse_figures(runs: Path, plan: Plan) -> dict:
    """Two searches on the same target and dataset over one fresh tuning cache: the second is the first one
    submitted again with a tighter latency budget (same seed, so the same candidates)."""
    from search.spec import SearchSpace, SearchSpec
    from search.study import default_storage, load_study

    work = runs / f"reuse-{_stamp()}"  # its own tuning cache: the first search starts with no records
    out = []
    for attempt, budget_ms in enumerate((1.0, 0.05)):
        name = f"bench-reuse-{attempt + 1}"
        _say(f"  {name}: {plan.reuse_trials} trials, tuning {plan.tuning_trials} trials each")
        spec = SearchSpec(name=name, trials=plan.reuse_trials, workers=1, sampler="random", seed=0,
                          latency_budget_ms=budget_ms,
                          budget=_search_budget(epochs=1, finetune_epochs=0, tuning_trials=plan.tuning_trials),
                          space=SearchSpace(precision=("fp32",), width=(0.5, 1.0), sparsity=(0.0, 0.0),
                                            alpha=(1.0, 1.0)))
        _run(spec, work)
        tuning = [t.user_attrs.get("tuning") or {} for t in load_study(name, default_storage(work)).trials]
        out.append({"seconds": sum(t.get("seconds", 0.0) for t in tuning),
                    "tasks": sum(t.get("tasks", 0) for t in tuning),
                    "tuned": sum(t.get("tuned", 0) for t in tuning),
                    "reused": sum(t.get("reused", 0) for t in tuning)})
    first, second = out
    return {"first": first, "second": second, "ratio": first["seconds"] / max(second["seconds"], 1e-9),
            "second_reused_share": second["reused"] / max(1, second["tasks"])}


# Figure 5 ------------------------------------------------------------------------------------------------------

# The revision before the budget-first search (screening, recipes, auto sampler, halving): `make run` is timed at it
# and at the working tree, side by side.
BEFORE_BUDGET_FIRST = "a965cd8"
# figure 5f: an accuracy floor a digits user would state (the fp32 full-width model reaches about 0.98), under which
# the tiny models at the runtime's per-call floor, which the plain hypervolume rewards, are infeasible
QUALITY_FLOOR = 0.95


def quality_figures(runs: Path, plan: Plan, min_accuracy: float | None = None) -> dict:
    """The default search at N trials against random sampling at 2N, per seed, on the same spec and bounds; the
    recipes the default search covers; the share of worker time spent on candidates that end infeasible; and the
    wall time of `make run` before and after the budget-first search. With ``min_accuracy``, both arms search under
    that accuracy floor (and `make run` is not timed again)."""

    from search.plots import hypervolume_history
    from search.spec import HALVING_FROM_TRIALS, SearchSpec
    from search.study import load_study, default_storage, search_bounds

    base = SearchSpec(name="bench-quality", trials=plan.quality_trials, workers=2, budget=_search_budget(),
                      min_accuracy=min_accuracy)
    base = replace(base, latency_budget_ms=reference_budget_ms(base, runs))
    tag = "" if min_accuracy is None else "f"
    arms = {"default": dict(trials=plan.quality_trials),
            "random": dict(trials=2 * plan.quality_trials, sampler="random", recipes=False, halving=False)}
    out: dict = {"trials": {k: v["trials"] for k, v in arms.items()}, "seeds": list(plan.quality_seeds),
                 "halving_from": HALVING_FROM_TRIALS,
                 "latency_budget_ms": base.latency_budget_ms, "budget_width": BUDGET_REFERENCE_WIDTH,
                 "min_accuracy": min_accuracy, "curves": {}, "final": {},
                 "infeasible_share": {}, "recipes": [], "wall_s": {}}
    searched = []  # (arm, study, rows, bounds) of every search, for the re-timing in turns
    trained: dict = {}  # every candidate each arm trained fully, feasible or not: the ceiling's outcomes
    for seed in plan.quality_seeds:
        for arm, fields in arms.items():
            spec = replace(base, name=f"bench-q{tag}-{arm}-s{seed}-{_stamp()}", seed=seed, **fields)
            _say(f"  {spec.name}: {spec.trials} trials")
            started = time.perf_counter()
            outcome = _run(spec, runs)
            out["wall_s"].setdefault(arm, []).append(time.perf_counter() - started)
            study = load_study(spec.name, default_storage(runs))
            bounds = search_bounds(study, spec)
            out["curves"].setdefault(arm, {})[seed] = [hv for _, hv in hypervolume_history(outcome.rows, bounds)]
            out["final"].setdefault(arm, []).append(outcome.hypervolume)
            out["infeasible_share"].setdefault(arm, []).append(_infeasible_share(study))
            out.setdefault("candidates", {}).setdefault(arm, []).append(len(study.trials))
            trained.setdefault(arm, []).extend(r for r in outcome.rows if r.state == "COMPLETE" and r.reused_from is None)
            searched.append((arm, study, outcome.rows, bounds))
            out.setdefault("trained_fully", {}).setdefault(arm, []).append(
                sum(1 for t in study.trials if t.state.name == "COMPLETE" and "reused_from_trial" not in t.user_attrs))
            if arm == "default":
                recipes = [r for r in outcome.rows if r.recipe]
                feasible = [r for r in recipes if r.feasible]
                out["recipes"].append({"seed": seed, "enqueued": len(recipes), "feasible": len(feasible),
                                       "covered": sum(_covers(outcome.front, r) for r in feasible),
                                       "labels": [r.recipe for r in recipes]})
    pool = [r for rows in trained.values() for r in rows if r.feasible]  # every feasible one: the best known front
    out["best_known"] = _best_known(pool, bounds)
    if trained.get("default") and trained.get("random"):
        out["ceiling"] = placement_ceiling(trained["default"] + trained["random"], trained["random"], bounds,
                                           arms["default"]["trials"], arms["random"]["trials"], len(plan.quality_seeds))
    out["mann_whitney"] = _default_higher(out["final"])
    out["final_spread"] = {arm: _spread(v) for arm, v in out["final"].items()}
    out["retimed"] = _retimed_in_turns(searched, base)
    out["infeasible_spread"] = {arm: _spread(v) for arm, v in out["infeasible_share"].items()}
    if min_accuracy is None:
        out["make_run"] = _make_run_before_after(runs)
    return out


BUDGET_REFERENCE_WIDTH = 1.0  # figure 5's budget: the p90 of the fp32 DS-CNN at this width, on this machine


def reference_budget_ms(spec, runs: Path) -> float:
    """Figure 5's latency budget: the screened p90 of the untrained fp32 graph at ``BUDGET_REFERENCE_WIDTH``
    on the spec's target, so that the budget rules out the wider half of the space (widths 0.25-2) on any CPU.
    A fixed 0.01 ms did not: width 1 reads about 0.012 ms on a Zen 5 EPYC and 0.020-0.026 on a Zen 3, and on a
    slower hour of the same VM figure 5f's floor and budget left 13 of 360 candidates feasible. Measured in the
    same run as the searches it judges, and screened into their own cache (same root, same shape key), so every
    search of the figure reads this figure for that shape."""
    from hardware_targets.profile import load_profile
    from search.candidate import Candidate
    from search.data import load_dataset
    from search.stages.screen import screen_candidate

    reference = Candidate(precision="fp32", width=BUDGET_REFERENCE_WIDTH, budget=spec.budget, seed=spec.seed)
    screened = screen_candidate(reference, load_dataset(spec.dataset), load_profile(spec.target), runs,
                                latency_budget_ms=spec.latency_budget_ms)
    return float(f"{screened['metrics']['latency_ms_p90'][0]:.3g}")


QUALITY_ALPHA = 0.10  # figure 5's test: one-sided Mann-Whitney U, the default arm higher than random's


def _default_higher(final: dict) -> dict:
    """One-sided Mann-Whitney U test of the default arm's hypervolumes against random's, at ``QUALITY_ALPHA``."""
    from scipy.stats import mannwhitneyu

    test = mannwhitneyu(final["default"], final["random"], alternative="greater")
    return {"u": float(test.statistic), "p": float(test.pvalue), "alpha": QUALITY_ALPHA,
            "default_higher": bool(test.pvalue < QUALITY_ALPHA)}


RETIME_REPEATS = 20  # blocks per candidate when every search's candidates are timed again in turns


def _retimed_in_turns(searched: list, spec) -> dict:
    """Every search's hypervolume again, with the candidates that could be feasible (within every limit but
    perhaps the latency budget) of all searches of the figure timed again together, in turns, after the last
    search: each search timed its candidates at its own moment of the VM's speed and beside its other worker, and
    a search that trains more candidates keeps the luckiest of more noisy timings (the minimum of noisy figures is
    biased low). Timed alike, the arms are compared on the same footing. One thread per candidate, as in a
    search, in a Ray task that holds every CPU."""
    from hardware_targets.backends.base import add_work_and_energy, latency_metrics
    from hardware_targets.backends.local import time_libraries
    from hardware_targets.profile import load_profile
    from search.data import load_dataset
    from search.stages.export import input_dtype
    from search.study import feasible_front, front_hypervolume
    from search.workers import THREADS_PER_WORKER, start_ray

    x = load_dataset(spec.dataset).x_val[:1]
    entries, picked = {}, []
    for i, (arm, study, rows, bounds) in enumerate(searched):
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        keep = [r for r in rows if r.state == "COMPLETE" and r.reused_from is None and (r.feasible or r.fits_but_latency)]
        for r in keep:
            artifacts = trials[r.number].user_attrs["artifacts"]
            entries[f"{i}:{r.number}"] = (artifacts["library"], artifacts["onnx"], r.knobs["precision"])
        picked.append((arm, keep, bounds))
    ray = start_ray(None, 2)
    started = time.perf_counter()
    try:
        task = ray.remote(num_cpus=2 * THREADS_PER_WORKER, max_retries=0)(time_libraries)
        seconds = ray.get(task.remote({key: (library, x.astype(input_dtype(precision)))
                                       for key, (library, _, precision) in entries.items()}, RETIME_REPEATS))
    finally:
        ray.shutdown()
    profile = load_profile(spec.target)
    out = {"final": {}, "repeats": RETIME_REPEATS, "candidates": len(entries), "verdict_changed": 0,
           "front_p90_ratio": {}, "seconds": time.perf_counter() - started}
    for i, (arm, keep, bounds) in enumerate(picked):
        fresh = []
        for r in keep:
            library, onnx, precision = entries[f"{i}:{r.number}"]
            metrics = add_work_and_energy(latency_metrics(seconds[f"{i}:{r.number}"], "measured"), Path(onnx),
                                          precision, profile)
            metrics = {**r.metrics, **{n: (m.value, m.unit, m.provenance) for n, m in metrics.items()
                                       if n in ("latency_ms_median", "latency_ms_p90", "energy_mj")}}
            feasible = metrics["latency_ms_p90"][0] <= spec.latency_budget_ms
            out["verdict_changed"] += feasible != r.feasible
            fresh.append(replace(r, metrics=metrics, feasible=feasible))
        out["final"].setdefault(arm, []).append(front_hypervolume(feasible_front(fresh), bounds) if fresh else 0.0)
        searched_front = {r.number: r for r in feasible_front(keep)}
        out["front_p90_ratio"].setdefault(arm, []).extend(
            f.value("latency_ms_p90") / searched_front[f.number].value("latency_ms_p90")
            for f in fresh if f.number in searched_front)
    out["mann_whitney"] = _default_higher(out["final"])
    out["final_spread"] = {arm: _spread(v) for arm, v in out["final"].items()}
    out["front_p90_ratio"] = {arm: _spread(v) for arm, v in out["front_p90_ratio"].items() if v}
    return out


def _best_known(pool: list, bounds: list[float]) -> dict:
    """The front of every feasible candidate this figure's searches trained (both arms, all seeds, one spec's
    bounds): what the run found at all, as a ceiling for either arm."""
    from search.study import feasible_front, front_hypervolume

    front = feasible_front(pool)
    return {"hypervolume": front_hypervolume(front, bounds) if front else 0.0, "candidates": len(pool),
            "front": len(front)}


def kept_channels(knobs: dict) -> tuple[tuple, float]:
    """A candidate's shape as (group, kept): within a precision and pruning mode, the share of the width-1 model's
    channels it keeps (width times what structured pruning leaves), which its costs and most of its accuracy follow."""
    structured = knobs.get("pruning") == "structured"
    group = (knobs["precision"], knobs.get("pruning"), None if structured else knobs.get("sparsity"))
    return group, knobs["width"] * (1 - knobs.get("sparsity", 0.0)) if structured else knobs["width"]


CEILING_DRAWS = 300  # simulated searches per arm
CEILING_PLACEMENTS = 3  # greedy placements tried; the oracle keeps the best
CEILING_NEIGHBOURS = 5  # a placed shape's outcome is one of the run's candidates nearest it in kept channels


def placement_ceiling(trained: list, random_trained: list, bounds: list[float], n: int, n_random: int,
                      seeds: int, seed: int = 0) -> dict:
    """What the best placement of ``n`` candidates could reach against random sampling at ``n_random``, estimated
    from the candidates the figure's searches trained.

    The oracle knows how outcomes follow the shape (it places shapes greedily, each where it adds the most expected
    hypervolume) but not the training noise: a placed shape's outcome is drawn among the ``CEILING_NEIGHBOURS``
    trained candidates of its group nearest it in kept channels. Random sampling's searches are drawn from random's
    own trained candidates (its screening included). Returns both arms' medians, the chance one oracle search
    beats one random search, and how often the figure's test (one-sided Mann-Whitney over ``seeds`` searches each,
    ``QUALITY_ALPHA``) would show the oracle higher: where that is small, no sampler can show the aim reliably."""
    from scipy.stats import mannwhitneyu

    from search.study import feasible_front, front_hypervolume

    rng = np.random.default_rng(seed)
    groups: dict = {}
    for r in trained:
        group, kept = kept_channels(r.knobs)
        groups.setdefault(group, []).append((math.log(max(kept, 1e-6)), r))

    @functools.cache
    def nearest(position) -> list:
        group, log_kept = position
        members = groups[group]
        return sorted(range(len(members)), key=lambda i: abs(members[i][0] - log_kept))[:CEILING_NEIGHBOURS]

    def draw(position):
        return groups[position[0]][int(rng.choice(nearest(position)))][1]

    def hypervolume(rows):
        front = feasible_front(rows)
        return front_hypervolume(front, bounds) if front else 0.0

    positions = sorted({(g, round(log_kept, 3)) for g, members in groups.items() for log_kept, _ in members},
                       key=lambda p: (str(p[0]), p[1]))
    if len(positions) > 40:  # at most 40 places to choose from, spread over the observed shapes
        positions = [positions[int(i)] for i in np.linspace(0, len(positions) - 1, 40)]

    def greedy() -> list:
        placed: list = []
        for _ in range(n):
            gains = [np.mean([hypervolume([draw(p) for p in placed + [q]]) for _ in range(6)]) for q in positions]
            placed.append(positions[int(np.argmax(gains))])
        return placed

    # the greedy search is noisy (6 draws per choice): the best of a few placements, then drawn afresh
    placements = [greedy() for _ in range(CEILING_PLACEMENTS)]
    placed = max(placements, key=lambda ps: np.median([hypervolume([draw(p) for p in ps]) for _ in range(100)]))
    oracle = np.array([hypervolume([draw(p) for p in placed]) for _ in range(CEILING_DRAWS)])
    random = np.array([hypervolume(list(rng.choice(np.array(random_trained, dtype=object), n_random)))
                       for _ in range(CEILING_DRAWS)])
    shown = [mannwhitneyu(rng.choice(oracle, seeds), rng.choice(random, seeds), alternative="greater").pvalue
             < QUALITY_ALPHA for _ in range(1000)]
    return {"oracle": _spread(oracle), "random": _spread(random), "n": n, "n_random": n_random,
            "p_oracle_higher": float(np.mean(oracle[:, None] > random[None, :])), "test_power": float(np.mean(shown)),
            "placed_kept": sorted(round(math.exp(p[1]), 3) for p in placed), "provenance": "estimated"}


def _infeasible_share(study) -> float:
    """Worker time spent on trials that end infeasible (screened out, over a limit or stopped and over), over all
    worker time of the search."""
    total = wasted = 0.0
    for t in study.get_trials(deepcopy=False):
        seconds = sum((t.user_attrs.get("stage_seconds") or {}).values())
        total += seconds
        feasible = t.state.name == "COMPLETE" and all(v <= 0 for v in t.constraints.values())
        if t.state.name in ("COMPLETE", "PRUNED") and not feasible and any(v > 0 for v in t.constraints.values()):
            wasted += seconds
    return wasted / total if total else 0.0


def _covers(front, recipe) -> bool:
    """A front point at least as good as the recipe in every objective (the recipe itself counts)."""
    from search.study import OBJECTIVES

    return any(all((f.value(n) >= recipe.value(n)) if d == "maximize" else (f.value(n) <= recipe.value(n))
                   for n, d in OBJECTIVES) for f in front)


def _make_run_before_after(runs: Path) -> dict:
    """Wall time of `make run`'s search (12 trials, digits, host, 0.05 ms, 10 epochs) at the revision before the
    budget-first search and at the working tree, each in a fresh runs folder (both train their teacher). The
    shipping stage that now follows the search (tuning, figure 3) is turned off, so both time the same work."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    old = runs / "before-budget-first"
    if subprocess.run(["git", "-C", str(root), "cat-file", "-e", BEFORE_BUDGET_FIRST], capture_output=True).returncode:
        return {"error": f"revision {BEFORE_BUDGET_FIRST} is not in this clone"}
    made = not old.exists()
    if made:
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(old), BEFORE_BUDGET_FIRST],
                       check=True, capture_output=True)
    args = ["submit", "--dataset", "digits", "--target", "host", "--latency-budget-ms", "0.05", "--trials", "12",
            "--workers", "2", "--epochs", "10", "--no-mlflow"]
    out = {}
    try:
        for label, code, extra in (("before", old, []), ("after", root, ["--front-tuning-minutes", "0"])):
            folder = runs / f"make-run-{label}-{_stamp()}"
            _say(f"  make run's search, {label} the budget-first search")
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "search.cli", "--runs-dir", str(folder), *args, *extra,
                                   "--name", f"make-run-{label}"], cwd=code,
                                  env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True)
            out[label] = {"seconds": time.perf_counter() - started, "returncode": done.returncode,
                          "tail": done.stdout.splitlines()[-12:] if done.returncode == 0 else done.stderr[-2000:]}
    finally:
        if made:  # the old revision's checkout is not left registered in the user's repository
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(old)], capture_output=True)
    out["after_over_before"] = out["after"]["seconds"] / out["before"]["seconds"]
    return out


# Figure 6 ------------------------------------------------------------------------------------------------------

def sampler_figures(checkpoints=(100, 1000), asks: int = 5) -> dict:
    """Time per ask plus five suggests, with a cheap synthetic objective, at two study sizes.

    TPE's cost grows with the history, however it was produced, so its history is filled by random sampling;
    NSGA-II and random sampling run their own loop (their asks are cheap)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    makers = {"nsga2": lambda: optuna.samplers.NSGAIISampler(seed=0, population_size=50),
              "tpe": lambda: optuna.samplers.TPESampler(seed=0, multivariate=True),
              "random": lambda: optuna.samplers.RandomSampler(seed=0)}

    def step(study, timed: bool) -> float:
        started = time.perf_counter()  # define-by-run: the sampler works in ask() and in each suggest
        t = study.ask()
        w = t.suggest_float("width", 0.25, 2.0)
        s = t.suggest_float("sparsity", 0.0, 0.95)
        p = t.suggest_categorical("precision", ["fp32", "fp16", "int8"])
        t.suggest_float("temperature", 1, 10)
        t.suggest_float("alpha", 0, 1)
        cost = time.perf_counter() - started
        t.set_constraint("budget", w * (1 - s) - 1.0)
        study.tell(t, [w * (1 - s / 2), w * (1 - s), w * (2 if p == "fp32" else 1), w])
        return cost

    out = {}
    for name, make in makers.items():
        sampler = make()
        filler = optuna.samplers.RandomSampler(seed=1) if name == "tpe" else sampler
        study = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"], sampler=sampler)
        out[name] = {}
        for n in checkpoints:
            study.sampler = filler
            while len(study.get_trials(deepcopy=False)) < n - 1:  # study.trials deep-copies every trial
                step(study, False)
            study.sampler = sampler
            out[name][str(n)] = _spread([step(study, True) * 1e3 for _ in range(asks)])
            # the timed asks added trials: the next checkpoint still starts at its own size
    return out


# Figure 7 ------------------------------------------------------------------------------------------------------

def emulator_figures(runs: Path, plan: Plan) -> dict:
    from hardware_targets import load_profile
    from search.calibrate import calibrate_host

    report = calibrate_host(load_profile("host"), runs, candidates=plan.calibration_candidates, seed=1)
    return {k: report[k] for k in ("mape_uncalibrated", "mape_calibrated", "train", "held_out")}


# Figure 8 ------------------------------------------------------------------------------------------------------

# What the guides publish for each technique (sources in the report). Pruning's figures are ImageNet top-1 losses.
GUIDE = {
    "fp16 only": "2x smaller; faster on GPUs only [TFLite PTQ table]",
    "int8 post-training only": "4x smaller, 3x+ faster (full integer) [TFLite PTQ table]",
    "int8 quantisation-aware only": "4x smaller, as int8 PTQ, with accuracy closer to float [TF MOT QAT]",
    "50% unstructured pruning": "-0.1 to -0.2 points; smaller only compressed; faster only where zeros are skipped "
                                "[TF MOT pruning]",
    "75% unstructured pruning": "-2.0 points (InceptionV3) [TF MOT pruning]",
    "90% unstructured pruning": "-3.5 points at 87.5% (InceptionV3) [TF MOT pruning]",
}
GUIDE_SOURCES = ("TFLite PTQ table: https://www.tensorflow.org/lite/performance/post_training_quantization; "
                 "TF MOT pruning: https://www.tensorflow.org/model_optimization/guide/pruning (results table); "
                 "TF MOT QAT: https://www.tensorflow.org/model_optimization/guide/quantization/training")


def guide_rows() -> list[tuple[str, dict]]:
    """The search's recipes (the guide's single techniques, each on the fp32 full-width model), with pruning at
    50/75/90% in both modes in place of the recipes' two pruning rows."""
    from search.study import RECIPES

    quantised = [(label, change) for label, change in RECIPES.items() if "precision" in change]
    narrower = [(label, change) for label, change in RECIPES.items() if "width" in change]
    pruned = [(f"{int(100 * s)}% {mode} pruning", {"sparsity": s, "pruning": mode})
              for mode in ("unstructured", "structured") for s in (0.5, 0.75, 0.9)]
    return [("fp32 full width", {}), *quantised, *pruned, *narrower]


def guide_figures(runs: Path, plan: Plan) -> dict:
    """Each row trained with the default budget, then put through the shipping stage (untuned TVM against
    onnxruntime, no tuning), alone on the machine; ratios are against the fp32 full-width row of the same dataset and
    seed, then summarised over the seeds (one seed's accuracy moves by a point or two either way)."""
    from hardware_targets import load_profile
    from objectives.size import gzip_bytes
    from search.candidate import Budget, Candidate
    from search.data import load_dataset
    from search.pipeline import Paths, evaluate_candidate, ship_candidate

    host, paths = load_profile("host"), Paths(runs / f"guide-{_stamp()}")
    out: dict = {"budget": Budget().__dict__, "datasets": {}, "fp16_native": host.supports("fp16"),
                 "sources": GUIDE_SOURCES, "seeds": list(plan.guide_seeds)}
    for name in plan.guide_datasets:
        data, per_seed = load_dataset(name), []
        for seed in plan.guide_seeds:
            rows, timers = [], {}
            for label, change in guide_rows():
                _say(f"  {name}, seed {seed}: {label}")
                result = evaluate_candidate(Candidate(**change, seed=seed), data, host, paths)
                shipped = ship_candidate(result, data, host, paths, trials_per_task=0)
                metric = {n: v[0] for n, v in shipped["metrics"].items()}
                rows.append({"label": label, "candidate": result.candidate.key(), "runtime": shipped["runtime"],
                             "latency_ms_p90": metric["latency_ms_p90"],
                             "accuracy_test": metric.get("accuracy_test", result.value("accuracy_test")),
                             "size_bytes": result.value("size_bytes"), "sparsity": result.value("sparsity"),
                             "gzip_bytes": gzip_bytes(result.artifacts["onnx"]),
                             "shipping_stage_ms": {k: v["latency_ms_median"] for k, v in shipped["figures"].items()}})
                timers.update({(len(rows) - 1, k): f for k, f in _inference_timers(result, data).items()})
            # the rows' latencies differ by tens of percent on a VM from one minute to the next: time them in turns
            _say(f"  {name}, seed {seed}: every row's runtimes timed side by side")
            side = _side_by_side(timers)
            for i, r in enumerate(rows):
                r["per_runtime_ms"] = {k: side[(i, k)] for k in ("tvm", "onnxruntime")}
                r["latency_ms"] = r["per_runtime_ms"][r["runtime"]]
            per_seed.append(_against_first_row(rows))
        out["datasets"][name] = [_over_seeds([rows[i] for rows in per_seed]) for i in range(len(per_seed[0]))]
    return out


SIDE_BY_SIDE_ROUNDS = 15


def _inference_timers(result, data) -> dict:
    """A guide row's untuned TVM library and its ONNX in onnxruntime (what the shipping stage chose between), on
    one validation sample, one thread each."""
    from hardware_targets.backends.local import onnxruntime_timer, tvm_timer
    from search.stages.export import input_dtype, ort_session

    dtype = input_dtype(result.candidate.precision)
    sample = np.ascontiguousarray(data.x_val[:1].astype(dtype))
    return {"tvm": tvm_timer(result.artifacts["library"], sample, dtype.name),
            "onnxruntime": onnxruntime_timer(ort_session(result.artifacts["onnx"]), sample)}


def _side_by_side(timers: dict, rounds: int = SIDE_BY_SIDE_ROUNDS) -> dict:
    """Milliseconds per call of each runtime, timed in turns (``time_in_turns``): the median over the rounds."""
    from hardware_targets.backends.local import time_in_turns

    return {key: t.median_ms for key, t in time_in_turns(timers, rounds, rapl=None).items()}


def _against_first_row(rows: list[dict]) -> list[dict]:
    """Ratios and accuracy points of each row against the first (the fp32 full-width model); speed from the
    side-by-side timing where the row has it (``latency_ms``), else from the shipping stage's p90."""
    base = rows[0]
    for r in rows:
        r["smaller_x"] = base["size_bytes"] / r["size_bytes"]
        if "gzip_bytes" in r:  # results written before the gzip figure have none
            r["smaller_gzip_x"] = base["gzip_bytes"] / r["gzip_bytes"]
        speed = "latency_ms" if "latency_ms" in r else "latency_ms_p90"
        r["faster_x"] = base[speed] / r[speed]
        r["accuracy_points"] = 100 * (r["accuracy_test"] - base["accuracy_test"])
        r["faster_x_per_runtime"] = {k: base["per_runtime_ms"][k] / v for k, v in r["per_runtime_ms"].items()
                                     if k in base["per_runtime_ms"]}
    return rows


def _over_seeds(runs: list[dict]) -> dict:
    """One guide row over its seeds: medians of the ratios, the accuracy change's spread, how often each runtime
    shipped; each seed's row kept as measured."""
    shipped = Counter(r["runtime"] for r in runs)
    accuracy = _spread([r["accuracy_points"] for r in runs])
    runtimes = sorted({k for r in runs for k in r["faster_x_per_runtime"]})
    return {"label": runs[0]["label"],
            "runtime": " / ".join(f"{k}" + (f" ({n} of {len(runs)})" if len(shipped) > 1 else "")
                                  for k, n in shipped.most_common()),
            "smaller_x": float(np.median([r["smaller_x"] for r in runs])),
            "smaller_gzip_x": float(np.median([r.get("smaller_gzip_x", np.nan) for r in runs])),
            "faster_x": float(np.median([r["faster_x"] for r in runs])),
            "faster_x_per_runtime": {k: float(np.median([r["faster_x_per_runtime"][k] for r in runs
                                                         if k in r["faster_x_per_runtime"]])) for k in runtimes},
            "accuracy_points": accuracy["median"], "accuracy_points_spread": accuracy,
            "per_seed": runs}


# Report --------------------------------------------------------------------------------------------------------

# Figure 9 ------------------------------------------------------------------------------------------------------

def cluster_figures(runs: Path, plan: Plan) -> dict:
    """The same search on one Ray node, and spread over two that share nothing but the network: the second node
    joins from its own mount namespace, with a private tmpfs over the search's runs folder. What moving files
    through Ray's object store costs, as a share of the search's wall time (issue 17)."""
    import shutil
    import sys

    from hardware_targets.host import cpu_kind_resource, host_cpu
    from search.spec import SearchSpec
    from search.study import default_storage
    from search.workers import run_search

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers start and stop the cluster
    from tests.servers import free_tcp_port, node_sharing_nothing, ray_cluster

    if os.geteuid() != 0 or not shutil.which("unshare"):
        return {"skipped": "a node in its own mount namespace needs root and unshare"}
    spec = SearchSpec(name="bench-cluster", trials=plan.cluster_trials, workers=2, seed=0, latency_budget_ms=0.05,
                      budget=_search_budget(front_tuning_minutes=1))
    out = {}
    one = runs / f"cluster-one-node-{_stamp()}"
    _say(f"  one node: {spec.trials} trials, 2 workers")
    out["one_node"] = _cluster_run(_run(spec, one))
    two = runs / f"cluster-two-nodes-{_stamp()}"
    two.mkdir(parents=True)
    kind = cpu_kind_resource(host_cpu().key)
    head = ray_cluster(free_tcp_port, "--resources", json.dumps({kind: 1}), num_cpus=1)
    cluster, node_dir = next(head), None
    try:
        node_dir = node_sharing_nothing(cluster, two, 1, {kind: 1})
        _say(f"  two nodes (one CPU each, the second sharing nothing): {spec.trials} trials, 2 workers")
        out["two_nodes"] = _cluster_run(run_search(spec, two, storage_url=default_storage(two), address=cluster["gcs"],
                                                   report=lambda line: None))
    finally:
        next(head, None)
        if node_dir:
            node_dir.rmdir()
    out["wall_ratio"] = out["two_nodes"]["wall_s"] / out["one_node"]["wall_s"]
    return out


def _cluster_run(outcome) -> dict:
    t = outcome.timings
    moving = t.get("transfer", 0.0) + t.get("transfer_workers", 0.0)
    return {"wall_s": t["wall"], "transfer_driver_s": t.get("transfer", 0.0),
            "transfer_workers_s": t.get("transfer_workers", 0.0), "transfer_share": moving / t["wall"],
            "bundles": t.get("transfer_bundles", 0), "megabytes": t.get("transfer_bytes", 0) / 1e6,
            "hypervolume": outcome.hypervolume,
            "completed": sum(r.state == "COMPLETE" for r in outcome.rows)}


def _measured(results: dict) -> dict:
    return {k: v for k, v in results.items() if not (isinstance(v, dict) and "failed" in v)}


def plots(results: dict, out: Path) -> list[str]:
    from search.plots import png_axes

    files = []
    q = results.get("quality")
    if q:
        with png_axes(out / "hypervolume_vs_trials.png", (6, 4)) as ax:
            for color, (arm, seeds) in zip(("C0", "C1", "C2"), q["curves"].items()):
                for i, curve in enumerate(seeds.values()):
                    ax.plot(range(1, len(curve) + 1), curve, color=color, alpha=0.8,
                            label=f"{arm} search" if i == 0 else None)
            ax.set(xlabel="finished trials", ylabel="normalised hypervolume (0-1)",
                   title=f"Hypervolume vs trials ({len(q['seeds'])} seed(s) each)")
            ax.legend()
        files.append("hypervolume_vs_trials.png")
    r = results.get("runtime")
    if r:
        labels, data = [], []
        for precision, v in r["ratios"].items():
            for kind in ("untuned", "tuned"):
                key = "tvm_untuned_ms" if kind == "untuned" else "tvm_tuned_ms"
                values = [m[key] / m["onnxruntime_ms"] for m in r["models"] if m["precision"] == precision and key in m]
                if values:
                    labels.append(f"{precision}\n{kind}")
                    data.append(values)
        mb = r["mobilenet_v1_025_96"]
        labels += ["MobileNet\nuntuned", "MobileNet\ntuned"]
        data += [[mb["untuned_over_onnxruntime"]], [mb["tuned_over_onnxruntime"]]]
        with png_axes(out / "latency_ratios.png", (7, 4)) as ax:
            ax.boxplot(data, tick_labels=labels)
            ax.axhline(1.0, color="grey", linestyle="--")
            ax.set_yscale("log")
            ax.set(ylabel="TVM latency / onnxruntime latency",
                   title="Compiler vs runtime (1 thread; below 1: TVM faster)")
            ax.tick_params(axis="x", labelsize=7)
        files.append("latency_ratios.png")
    return files


def _fmt(s: dict, digits: int = 2, scale: float = 1.0) -> str:
    if s["n"] == 1:
        return f"{s['median'] * scale:.{digits}f}"
    return f"{s['median'] * scale:.{digits}f} ({s['min'] * scale:.{digits}f}-{s['max'] * scale:.{digits}f}, n={s['n']})"


# Why TVM can be slower than onnxruntime here, per precision (facts about these builds, see NOTES.md).
_QDQ_AS_FLOAT = ("TVM's Relax ONNX frontend lowers QuantizeLinear/DequantizeLinear pairs to float arithmetic, while "
                 "onnxruntime fuses them into integer kernels")
WHY_SLOWER = {
    "fp32": "the digits models take about 10 µs, so a call's fixed cost (argument checks, dispatch) weighs as much "
            "as the arithmetic in both runtimes",
    "fp16": "this CPU has no fp16 arithmetic (no AVX512-FP16), so TVM's LLVM code converts every fp16 operation in "
            "software, while onnxruntime casts fp16 nodes to its float32 kernels",
    "fp16-native": "TVM builds fp16 for this CPU's AVX512-FP16 arithmetic; at these sizes a call's fixed cost weighs "
                   "as much as the arithmetic, and onnxruntime casts fp16 nodes to its float32 kernels",
    "int8-ptq": _QDQ_AS_FLOAT,
    "int8-qat": _QDQ_AS_FLOAT,
}


def _vector_isa(isa: list[str] | None) -> str:
    """The widest vector instructions among the CPU's flags, as the report names them (results from before the
    bench recorded the flags say only "vector")."""
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("asimd", "Neon")):
        if flag in (isa or ()):
            return name
    return "vector" if isa is None else "SSE"


def _slower_because(r: dict) -> list[str]:
    """The issue's aim is tuned TVM at least as fast as onnxruntime; say why wherever it is not."""
    out = []
    for precision, v in r["ratios"].items():
        kind = "tuned" if "tuned_over_onnxruntime" in v else "untuned"
        ratio = v[f"{kind}_over_onnxruntime"]["median"]
        if ratio > 1:
            why = WHY_SLOWER["fp16-native" if precision == "fp16" and r.get("fp16_native") else precision]
            out.append(f"- {precision}: {kind} TVM takes {ratio:.2f}x onnxruntime's time: {why}.")
    mb = r["mobilenet_v1_025_96"]
    if mb["tuned_over_onnxruntime"] > 1:
        per_task = (f" over {mb['tuning_tasks']} tuning tasks, about "
                    f"{mb['tuning_trials'] / max(1, mb['tuning_tasks']):.0f} per task," if "tuning_tasks" in mb else "")
        out.append(f"- MobileNetV1-0.25: tuned TVM takes {mb['tuned_over_onnxruntime']:.2f}x onnxruntime's time after "
                   f"{mb['tuning_trials']} MetaSchedule trials{per_task} where MetaSchedule usually needs thousands "
                   f"per model to catch up with onnxruntime's hand-written {_vector_isa(r.get('cpu_isa'))} "
                   "convolutions (MLAS).")
    return (["Where TVM is slower:", "", *out, ""]) if out else ["Tuned TVM is at least as fast as onnxruntime "
                                                                  "for every tuned precision.", ""]


def _quality_lines(q: dict, heading: str, plots_made: list[str]) -> list[str]:
    """Figure 5's section of the report, for one run of it."""
    t, mw = q["trials"], q["mann_whitney"]
    lines = [heading, "",
             f"The default search (auto sampler, recipes first, screening, halving from {q.get('halving_from', 24)} "
             f"trials) after "
             f"{t['default']} trials against random sampling after {t['random']} trials (screening too, no "
             f"recipes, no halving), seeds {q['seeds']}, digits on the host, {q['latency_budget_ms']} ms budget "
             "(p90" + (f"; the untrained fp32 graph's at width {q['budget_width']:g} on this machine"
                       if q.get("budget_width") else "") + ")"
             + (f", accuracy floor {q['min_accuracy']:g} (validation)" if q.get("min_accuracy") else "")
             + ". Hypervolume is normalised (accuracy; latency / budget; size and energy / 1.1x the widest model "
             "of the space), so it lies in [0, 1].", "",
             "The trial budget counts training: a candidate screened out costs nothing, one stopped at the first "
             "rung of halving a third.", "",
             "| search | trial budget | candidates asked | trained fully | hypervolume | worker time on "
             "candidates that end infeasible | wall s |", "|---|---|---|---|---|---|---|"]
    for arm in ("default", "random"):
        lines.append(f"| {arm} | {t[arm]} | {_fmt(_spread(q['candidates'][arm]), 0)} | "
                     f"{_fmt(_spread(q['trained_fully'][arm]), 0)} | {_fmt(q['final_spread'][arm], 4)} | "
                     f"{_fmt(q['infeasible_spread'][arm], 1, 100)}% | {_fmt(_spread(q['wall_s'][arm]), 0)} |")
    seeds = len(q["seeds"])
    floor = f" (with {seeds} seeds each, the smallest possible p is {1 / math.comb(2 * seeds, seeds):.3f})"
    lines += ["", f"One-sided Mann-Whitney U test, default higher than random: U = {mw['u']:.1f}, "
              f"p = {mw['p']:.3f} at alpha = {mw['alpha']}: "
              f"{'the default search is higher' if mw['default_higher'] else 'not shown higher'}"
              f"{floor if seeds < 5 else ''}.", ""]
    rt = q.get("retimed")
    if rt:
        rmw, ratio = rt["mann_whitney"], rt["front_p90_ratio"]
        lines += [f"Timed again in turns: after the last search, the {rt['candidates']} candidates of all searches "
                  f"that were within every limit but perhaps the budget were timed together, {rt['repeats']} "
                  "blocks each in turns, one thread (each search timed its own beside its other worker, at its "
                  "own moment of the machine's speed, and the luckiest of more noisy timings favours the arm "
                  f"that trains more). Hypervolume then: default {_fmt(rt['final_spread']['default'], 4)}, random "
                  f"{_fmt(rt['final_spread']['random'], 4)}; U = {rmw['u']:.1f}, p = {rmw['p']:.3f}: "
                  f"{'the default search is higher' if rmw['default_higher'] else 'not shown higher'}. "
                  f"{rt['verdict_changed']} candidate(s) changed verdict on the budget. Front points' p90 timed "
                  "again over their search's figure: "
                  + ", ".join(f"{arm} {_fmt(v, 3)}" for arm, v in ratio.items()) + ".", ""]
    best = q.get("best_known")
    if best and best["hypervolume"] > 0:
        share = {arm: q["final_spread"][arm]["median"] / best["hypervolume"] for arm in ("default", "random")}
        lines += [f"Best known: the front of all {best['candidates']} feasible candidates the run trained (both "
                  f"arms, every seed) has {best['front']} points and a hypervolume of {best['hypervolume']:.4f}; "
                  f"the median default search reached {share['default']:.0%} of it, random sampling "
                  f"{share['random']:.0%}.", ""]
    ceiling = q.get("ceiling")
    if ceiling:
        lines += [f"Ceiling (estimated from this run's candidates): a search that knew how outcomes follow the shape "
                  f"(not the training noise) and placed its {ceiling['n']} candidates where each adds the most "
                  f"expected hypervolume would reach {_fmt(ceiling['oracle'], 4)}, against random sampling at "
                  f"{ceiling['n_random']} drawn from random's own candidates, {_fmt(ceiling['random'], 4)}. It "
                  f"would beat one random search with probability {ceiling['p_oracle_higher']:.2f}, and this figure's "
                  f"test would show it higher in {ceiling['test_power']:.0%} of runs: roughly the chance the best "
                  f"possible sampler has of meeting the aim on this figure. The median default search reached "
                  f"{q['final_spread']['default']['median'] / ceiling['oracle']['median']:.1%} of the oracle's "
                  f"median.", ""]
    lines += ["![hypervolume vs trials](hypervolume_vs_trials.png)", ""] if "hypervolume_vs_trials.png" in \
        plots_made else []
    lines += ["Recipes in the default search: enqueued first, and covered when a front point is at least as "
              "good in all four objectives (the recipe itself counts).", "",
              "| seed | recipes enqueued | feasible | covered by the front |", "|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['enqueued']} | {r['feasible']} | {r['covered']} of {r['feasible']} |"
              for r in q["recipes"]]
    m = q.get("make_run")
    if m is None:
        return lines
    if "error" in m:
        lines += ["", f"`make run` before/after: not measured ({m['error']}).", ""]
    else:
        lines += ["", f"`make run`'s search (12 trials, 10 epochs, 0.05 ms, 2 workers) at revision "
                  f"{BEFORE_BUDGET_FIRST} took {m['before']['seconds']:.0f} s, with the budget-first search "
                  f"{m['after']['seconds']:.0f} s ({m['after_over_before']:.2f}x), run one after the other (the "
                  "shipping stage that now follows the search turned off in both).", ""]
    return lines


def _points(row: dict) -> str:
    """A guide row's accuracy change, with its range over the seeds when there was more than one."""
    spread = row.get("accuracy_points_spread")
    if not spread or spread["n"] < 2:
        return f"{row['accuracy_points']:+.1f} points"
    return f"{row['accuracy_points']:+.1f} points ({spread['min']:+.1f} to {spread['max']:+.1f})"


def _tasks(row: dict) -> str:
    """Tasks with a tuned schedule of all tasks (older results: all tasks)."""
    return f"{row['tasks_tuned']}/{row['tasks']}" if "tasks_tuned" in row else str(row["tasks"])


def _int8_lines(q: dict | None) -> list[str]:
    """Figure 3's int8 rows: int8 against fp32 in each runtime, and what the integer kernels buy over float QDQ."""
    if not q:
        return []
    kernels = "integer kernels (VNNI)" if q["integer_kernels"] else "float QDQ (no VNNI on this CPU)"
    if not q["per_task"]:
        lines = ["MobileNetV1-0.25 int8 (onnxruntime PTQ, QDQ, as the search makes it): not tuned in this plan."]
    else:
        lines = ["MobileNetV1-0.25 int8 (onnxruntime PTQ, QDQ, uint8 activations, 7-bit per-channel weights, as the search "
                 "makes it), through the same stage; each build from fresh records (medians"
                 + ("; every int8 and fp32 option timed in turns in one run" if q.get("timed_in_turns") else "")
                 + "):", "",
                 "| trials per task | TVM build | tasks tuned | tuning s | tuned TVM ms | / fp32 tuned TVM, same budget "
                 "| / ORT int8 | integer products | max diff vs ORT |", "|---|---|---|---|---|---|---|---|---|"]
        for rows, build in ((q["per_task"], kernels), (q["float_qdq"], "float QDQ")):
            for trials, v in rows.items():
                fp32 = f"{v['over_fp32_tuned']:.2f}" if "over_fp32_tuned" in v else "-"
                lines.append(f"| {trials} | {build} | {_tasks(v)} | {v['tuning_seconds']:.0f} | "
                             f"{v['tvm_tuned_ms']:.3f} | {fp32} | {v['tuned_over_onnxruntime_int8']:.2f} | "
                             f"{v['integer_products']} | {v['max_abs_diff_vs_onnxruntime']:.2g} |")
    verdict = "faster" if q["shipped_over_fp32_shipped"] < 1 else "not faster"
    return lines + ["", f"onnxruntime int8 {q['onnxruntime_ms']:.3f} ms, {q['onnxruntime_int8_over_fp32']:.2f}x its "
                    f"fp32. What would ship for int8 (the faster of tuned TVM and onnxruntime): {q['shipped_ms']:.3f} "
                    f"ms, {q['shipped_over_fp32_shipped']:.2f}x what ships for fp32: on this CPU int8 is {verdict} "
                    "than fp32 on this workload.", ""]


def _warm_lines(w: dict | None) -> list[str]:
    if not w:
        return []
    return [f"MobileNetV1-{w['width']:g} at 1 trial per task, tuned from fresh records (cold) and from a copy of the "
            f"{w['records']} records of {w['records_from']} (warm: other layer shapes, which warm the cost model "
            f"that ranks the schedules to measure), timed in turns with onnxruntime ({w['onnxruntime_ms']:.3f} ms):", "",
            "| records, seed | tuning s | tuned TVM ms | tuned TVM / ORT |", "|---|---|---|---|",
            *(f"| {key.replace('-', ', seed ')} | {v['tuning_seconds']:.0f} | {v['tvm_tuned_ms']:.3f} | "
              f"{v['tuned_over_onnxruntime']:.2f} |" for key, v in w["builds"].items()), ""]


def report_markdown(results: dict) -> str:
    m = results["machine"]
    failed = {k: v["failed"] for k, v in results.items() if isinstance(v, dict) and "failed" in v}
    results = _measured(results)
    lines = [f"# edgesearch benchmarks ({results['date']}, {'quick' if results['quick'] else 'full'} mode)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
             + f". Took {results['minutes']:.1f} min{' so far' if results.get('pending') else ''}.", "",
             "Every comparison is measured in this run, side by side. Figures are medians, with the range and the "
             "number of repeats in brackets where there was more than one. All latencies are measured on this "
             "machine; energy in figure 5 is estimated (no RAPL counters here).", ""]
    lines += [f"**Not measured in this run: {key} failed** ({reason}).\n" for key, reason in failed.items()]
    if results.get("pending"):
        lines += [f"**Written while the run goes on; still to come: {'; '.join(results['pending'])}.**", ""]
    s = results.get("search")
    if s:
        b = s["budget"]
        budget = (f"{'the default' if b['default'] else 'a reduced'} budget ({b['epochs']} epochs, "
                  f"{b['prune_steps']} pruning step(s) of {b['finetune_epochs']} fine-tuning epoch(s), "
                  f"{b['timing_repeats']} timing repeats)")
        lines += ["## 1. Search throughput (digits, 2 workers)", "",
                  f"{_fmt(s['candidates_per_hour'], 0)} candidates per hour over {s['trials']} trials per search with "
                  f"{budget}, wall time including starting Ray. The service's own share of wall time: "
                  f"{_fmt(s['service_share'], 1, 100)}% (Ray start and stop {_fmt(s['service_seconds']['ray_start'], 1)} "
                  f"s, Optuna {_fmt(s['service_seconds']['optuna'], 2)} s, MLflow logging "
                  f"{_fmt(s['service_seconds']['logging'], 2)} s; start-up is a fixed cost, the rest runs while workers "
                  f"compute). What the service costs the workers: a freed worker waits {_fmt(s['dispatch_ms'], 0)} ms "
                  f"for its next candidate, {_fmt(s['dispatch_share'], 2, 100)}% of worker time. Worker capacity left "
                  f"idle while trials ran: {_fmt(s['idle_capacity_share'], 1, 100)}% (mostly the last trials running "
                  "alone).", "",
                  "| stage | share of stage time |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v, 1, 100)}% |"
                  for k, v in sorted(s["stage_share"].items(), key=lambda kv: -kv[1]["median"])]
        lines += ["", "## 2. Parallel efficiency", "",
                  f"Same {s['trials']} trials, 1 vs 2 workers, Ray start excluded: speed-up "
                  f"{_fmt(s['parallel_speedup'])}x ({_fmt(s['loop_seconds']['1'], 0)} s vs "
                  f"{_fmt(s['loop_seconds']['2'], 0)} s).", ""]
    r = results.get("runtime")
    if r:
        lines += ["## 3. Compiler vs runtime (1 thread, same ONNX)", "",
                  "Latency ratio TVM / onnxruntime per precision over the built-in candidates (below 1: TVM faster); "
                  "untuned for a generic CPU as the search times candidates, tuned for the detected CPU as the "
                  "shipping stage tunes, with a global trial budget.",
                  "", "| precision | untuned TVM / ORT | tuned TVM / ORT | tuned / untuned TVM |", "|---|---|---|---|"]
        for p, v in r["ratios"].items():
            lines.append(f"| {p} | {_fmt(v['untuned_over_onnxruntime'])} | "
                         f"{_fmt(v['tuned_over_onnxruntime']) if 'tuned_over_onnxruntime' in v else 'not tuned'} | "
                         f"{_fmt(v['tuned_over_untuned']) if 'tuned_over_untuned' in v else '-'} |")
        mb = r["mobilenet_v1_025_96"]
        lines += ["", f"MobileNetV1-0.25 at 96x96x3 (random weights, fp32): onnxruntime {mb['onnxruntime_ms']:.3f} ms, "
                  f"TVM untuned {mb['tvm_untuned_ms']:.3f} ms ({mb['untuned_over_onnxruntime']:.2f}x), TVM tuned "
                  f"{mb['tvm_tuned_ms']:.3f} ms ({mb['tuned_over_onnxruntime']:.2f}x) after {mb['tuning_trials']} "
                  f"MetaSchedule trials ({mb['tuning_seconds']:.0f} s).", ""]
        st = mb.get("staged")
        if st:
            in_turns = (f", timed in turns with onnxruntime ({st['onnxruntime_ms']:.3f} ms) and untuned TVM "
                        f"({st['tvm_untuned_ms']:.3f} ms) in one run" if st.get("timed_in_turns") else "")
            per_layer = (" (times the layers a task stands for: the five 128-channel blocks are one task)"
                         if st.get("budget_per_layer") else "")
            lines += [f"The shipping stage on the same workload, tuned for `{st['target'].get('mcpu')}` (detected) with a "
                      f"per-task budget{per_layer}, each from fresh records{in_turns} (medians; below 1: faster than "
                      "onnxruntime):", "",
                      "| trials per task | tasks tuned | tuning s | tuned TVM ms | tuned TVM / ORT |", "|---|---|---|---|---|"]
            for trials, v in st["per_task"].items():
                lines.append(f"| {trials} | {_tasks(v)} | {v['tuning_seconds']:.0f} | {v['tvm_tuned_ms']:.3f} | "
                             f"{v['tuned_over_onnxruntime']:.2f} |")
            lim = st["limit_from"]
            lines += ["", f"What would ship (the fastest of the above, untuned TVM and onnxruntime): {st['shipped_ms']:.3f} "
                      f"ms, {st['shipped_over_onnxruntime']:.2f}x onnxruntime, {st['shipped_over_limit']:.1f}x the "
                      f"CPU's fp32 compute limit ({st['macs'] / 1e6:.2f} M MACs / ({lim['threads']} thread x "
                      f"{lim['fp32_macs_per_cycle']:g} MACs per cycle x {lim['clock_mhz']:g} MHz) = "
                      f"{st['fp32_limit_ms']:.3f} ms).", ""]
            lines += _int8_lines(st.get("int8"))
            lines += _warm_lines(st.get("warm_start"))
        lines += _slower_because(r)
        lines += ["![latency ratios](latency_ratios.png)", ""] if "latency_ratios.png" in results["plots"] else []
    u = results.get("reuse")
    if u:
        lines += ["## 4. Tuning reuse", "",
                  f"The same search submitted again with a tighter latency budget (same target, dataset and "
                  f"candidates) over the first one's records: tuning time "
                  f"{u['first']['seconds']:.1f} s then {u['second']['seconds']:.1f} s, ratio {u['ratio']:.1f}x; "
                  f"{100 * u['second_reused_share']:.0f}% of the second search's tasks came from records "
                  f"({u['first']['tuned']} tasks tuned in the first, {u['second']['tuned']} in the second).", ""]
    for key, heading in (("quality", "## 5. Search quality"),
                         ("quality_floor", "## 5f. Search quality under an accuracy floor")):
        if results.get(key):
            lines += _quality_lines(results[key], heading, results["plots"])
    samplers = results.get("samplers")
    if samplers:
        lines += ["## 6. Sampler cost per ask", "", "Milliseconds per ask plus five suggests (median of 5 asks):", "",
                  "| sampler | at 100 trials | at 1,000 trials | growth |", "|---|---|---|---|"]
        lines += [f"| {k} | {_fmt(v['100'])} | {_fmt(v['1000'])} | {v['1000']['median'] / v['100']['median']:.1f}x |"
                  for k, v in samplers.items()]
        lines.append("")
    e = results.get("emulator")
    if e:
        lines += ["## 7. Emulator fidelity on the host", "",
                  f"Median absolute percentage error on {e['held_out']} held-out candidates: "
                  f"{e['mape_uncalibrated']:.1f}% uncalibrated, {e['mape_calibrated']:.1f}% calibrated "
                  f"(fitted on {e['train']}).", ""]
    g = results.get("guide")
    if g:
        b = g["budget"]
        lines += ["## 8. The classic guide's rows on this host", "",
                  f"Each technique alone on the fp32 full-width DS-CNN, trained with the default budget ({b['epochs']} "
                  f"epochs; pruning in {b['prune_steps']} steps of {b['finetune_epochs']} fine-tuning epochs on a cubic "
                  "schedule, unstructured weights ranked across layers by LAMP scores), then the shipping stage's "
                  "choice of runtime (untuned TVM or onnxruntime, the faster p90, one thread). Ratios are against the "
                  "fp32 full-width row of the same run and seed; accuracy is the shipped artifact's test accuracy"
                  + (f"; medians over seeds {', '.join(map(str, g['seeds']))}, the accuracy change's range in "
                     "brackets" if len(g.get("seeds", [0])) > 1 else "") + ". fp16 is "
                  f"{'native' if g['fp16_native'] else 'not native on this CPU (left out of host searches)'}."
                  + (f" Speed: once a seed's rows are trained, every row's TVM library and onnxruntime session are "
                     f"timed in turns ({SIDE_BY_SIDE_ROUNDS} rounds of about 2 ms each, "
                     "in an order rotated each round; median ms per call), so a change in the machine's speed falls "
                     "on every row alike; \"faster (shipped)\" compares the runtime each row shipped on."
                     if "latency_ms" in next(iter(g["datasets"].values()))[0]["per_seed"][0] else ""), ""]
        for name, rows in g["datasets"].items():
            lines += [f"**{name}**", "", "| technique | runtime | smaller | smaller, gzip | faster (shipped) | "
                      "faster: TVM / onnxruntime | accuracy change | the guide |", "|---|---|---|---|---|---|---|---|"]
            for r in rows:
                per = r["faster_x_per_runtime"]
                lines.append(f"| {r['label']} | {r['runtime']} | {r['smaller_x']:.2f}x | "
                             f"{r.get('smaller_gzip_x', float('nan')):.2f}x | {r['faster_x']:.2f}x | "
                             f"{per.get('tvm', float('nan')):.2f}x / {per.get('onnxruntime', float('nan')):.2f}x | "
                             f"{_points(r)} | {GUIDE.get(r['label'], '-')} |")
            lines.append("")
        lines += ["\"smaller\" counts the weights as the runtime holds them (dense: zeroed weights take their bytes); "
                  "\"smaller, gzip\" the ONNX file gzip-compressed, as it would be stored or sent, where zeros do "
                  "shrink. Both measured.", "", f"Sources: {g['sources']}.", ""]
    c = results.get("cluster")
    if c and "skipped" in c:
        lines += ["## 9. Two nodes that share nothing", "", f"Not measured: {c['skipped']}.", ""]
    elif c:
        one, two = c["one_node"], c["two_nodes"]
        lines += ["## 9. Two nodes that share nothing", "",
                  "The same search (digits on the host, seed 0, 2 workers) on one Ray node with 2 CPUs, then on two "
                  "nodes of 1 CPU each, the second started in its own mount namespace with a private tmpfs over the "
                  "search's runs folder: its candidates' files come back through Ray's object store, and the "
                  "files they need go out the same way. Moving files is timed where it happens (the driver's "
                  "packing, writing and record merging; the workers' unpacking and packing).", "",
                  "| cluster | wall s | moving files s (driver + workers) | share of wall time | results that "
                  "brought files | MB | completed | hypervolume |", "|---|---|---|---|---|---|---|---|"]
        for label, r in (("one node", one), ("two nodes, one sharing nothing", two)):
            lines.append(f"| {label} | {r['wall_s']:.0f} | {r['transfer_driver_s'] + r['transfer_workers_s']:.2f} "
                         f"({r['transfer_driver_s']:.2f} + {r['transfer_workers_s']:.2f}) | "
                         f"{100 * r['transfer_share']:.2f}% | {r['bundles']} | {r['megabytes']:.2f} | "
                         f"{r['completed']} | {r['hypervolume']:.3f} |")
        lines += ["", f"Moving files took {100 * two['transfer_share']:.2f}% of the two-node search's wall time "
                  f"(aim under 3%). Wall time two nodes / one node: {c['wall_ratio']:.2f}x (each node there has "
                  "one CPU, and the candidates differ once timings differ).", ""]
    return "\n".join(lines) + "\n"


def log_to_mlflow(results: dict, bench: Path, runs_dir: Path) -> str:
    """One run per benchmark in the MLflow experiment ``bench``: numbers as metrics, the report as artifacts."""
    import re

    from mlflow.tracking import MlflowClient

    from search.tracking import default_tracking_uri, experiment_id

    uri = default_tracking_uri(runs_dir)
    client = MlflowClient(uri)
    exp_id = experiment_id(client, uri, runs_dir, "bench", {})
    run = client.create_run(exp_id, run_name=f"{results['date']} {'quick' if results['quick'] else 'full'}",
                            tags={"cpu": results["machine"]["cpu"], "mode": "quick" if results["quick"] else "full"})
    numbers = {k: v for k, v in _numbers({k: v for k, v in results.items() if k not in ("machine",)}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
    for key, value in numbers.items():
        client.log_metric(run.info.run_id, re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)[:250], float(value))
    client.log_param(run.info.run_id, "cores", results["machine"]["cores"])
    for name, version in results["machine"]["versions"].items():
        client.log_param(run.info.run_id, name, version)
    for name in ["results.json", "REPORT.md", *results["plots"]]:
        client.log_artifact(run.info.run_id, str(bench / name))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _numbers(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_numbers(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


FIGURES = ("3", "6", "7", "1", "4", "5", "5f", "8", "9")


def _write(results: dict, bench: Path, started: float) -> None:
    results["minutes"] = (time.perf_counter() - started) / 60
    results["plots"] = plots(_measured(results), bench)
    (bench / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (bench / "REPORT.md").write_text(report_markdown(results))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="edgesearch benchmarks (not tests): figures 1-9 (the benchmark issue, figure 5 under an accuracy floor, "
                    "the classic guide's rows, two nodes that share nothing), measured side by side. "
                    "Writes RUNS/bench/results.json, REPORT.md and plots, and logs them to the MLflow experiment "
                    "'bench'. On 2 cores (Zen 5, 2026-12-03) full mode took 65 minutes to the end of figure 5, where "
                    "that run was stopped (figure 3 alone 37), --quick 17.6.")
    parser.add_argument("--quick", action="store_true", help="smaller repeats and searches (about 18 minutes on 2 cores)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--only", nargs="+", choices=FIGURES, metavar="FIGURE",
                        help=f"run only these figures ({', '.join(FIGURES)}; 1 includes 2)")
    parser.add_argument("--quality-seeds", nargs="+", type=int, metavar="SEED",
                        help="figure 5's seeds (default: 0 1 2 3 4; 0 1 with --quick)")
    parser.add_argument("--guide-seeds", nargs="+", type=int, metavar="SEED",
                        help="figure 8's seeds (default: 0 1 2; 0 with --quick)")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: re-render REPORT.md and the plots from RUNS/bench/results.json "
                             "(MLflow keeps the run's original files)")
    args = parser.parse_args(argv)
    import tempfile

    plan = QUICK if args.quick else FULL
    if args.quality_seeds:
        plan = replace(plan, quality_seeds=tuple(args.quality_seeds))
    if args.guide_seeds:
        plan = replace(plan, guide_seeds=tuple(args.guide_seeds))
    wanted = set(args.only or FIGURES)
    bench = args.runs_dir / "bench"
    if args.report_only:
        results = json.loads((bench / "results.json").read_text())
        results["plots"] = plots(_measured(results), bench)
        (bench / "REPORT.md").write_text(report_markdown(results))
        print(f"re-rendered {bench / 'REPORT.md'} from {bench / 'results.json'}")
        return 0
    work = bench / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick, "machine": machine(),
                     "plan": plan.__dict__}
    steps = [("3", "figure 3: TVM tuned and untuned vs onnxruntime", "runtime", None),
             ("6", "figure 6: sampler cost per ask", "samplers", sampler_figures),
             ("7", "figure 7: emulator fidelity", "emulator", lambda: emulator_figures(work, plan)),
             ("1", "figures 1-2: the same searches with 1 and 2 workers", "search", lambda: search_figures(work, plan)),
             ("4", "figure 4: tuning reuse", "reuse", lambda: reuse_figures(work, plan)),
             ("5", "figure 5: search quality, samplers and recipes", "quality", lambda: quality_figures(work, plan)),
             ("5f", "figure 5f: search quality under an accuracy floor", "quality_floor",
              lambda: quality_figures(work, plan, min_accuracy=QUALITY_FLOOR)),
             ("8", "figure 8: the classic guide's rows", "guide", lambda: guide_figures(work, plan)),
             ("9", "figure 9: one node against two that share nothing", "cluster", lambda: cluster_figures(work, plan))]
    steps = [step for step in steps if step[0] in wanted]
    results["pending"] = [title for _, title, _, _ in steps]
    for figure, title, key, run in steps:
        _say(title)
        try:  # a figure that fails is reported as such; the others are kept
            if figure == "3":
                with tempfile.TemporaryDirectory() as tmp:
                    results[key] = runtime_figures(Path(tmp), plan)
            else:
                results[key] = run()
        except Exception as exc:
            results[key] = {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            _say(f"  FAILED: {results[key]['failed']}")
            traceback.print_exc()
        _say(f"  done ({(time.perf_counter() - started) / 60:.1f} min so far)")
        results["pending"].remove(title)
        _write(results, bench, started)  # an interrupted run keeps the figures it finished
    print(report_markdown(results))
    run_id = log_to_mlflow(results, bench, args.runs_dir)
    print(f"written to {bench / 'results.json'} and {bench / 'REPORT.md'}; MLflow experiment 'bench', run {run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
