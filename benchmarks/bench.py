"""Benchmarks: speed, scaling, search quality and fidelity, measured side by side in one run, as ratios.

Writes ``runs/bench/results.json``, ``runs/bench/REPORT.md`` and its plots, and logs
them to the MLflow experiment ``bench``. Not a test: nothing here asserts a timing.
Figures (numbered as in the benchmark issue):
1. search throughput, the share of each stage, and the service's own share of wall time;
2. parallel efficiency: the same trials with 1 and 2 workers;
3. compiler vs runtime: TVM tuned and untuned vs onnxruntime on the same ONNX, per precision,
   on the built-in candidates and on MobileNetV1-0.25 at 96x96x3;
4. tuning reuse: a second search on the same target and dataset, over the first one's records;
5. search quality: hypervolume after N trials per sampler and seed, against single-technique recipes;
6. sampler cost: time per ``ask`` at 100 and 1,000 trials;
7. emulator fidelity: median absolute percentage error on held-out host measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Plan:
    """How big each figure's run is; ``quick`` keeps the whole run under 10 minutes on 2 cores."""

    search_trials: int  # figures 1-2
    search_default_budget: bool  # figures 1-2: the default per-candidate budget, as a user's search runs
    search_repeats: int  # 1-vs-2-worker pairs
    runtime_widths: tuple[float, ...]  # figure 3, built-in candidates
    tuned_precisions: tuple[str, ...]  # figure 3: which precisions are also tuned
    tuned_widths: tuple[float, ...]  # figure 3: at which widths
    tuning_trials: int  # figure 3 (per built-in model) and figure 4 (per candidate)
    mobilenet_tuning_trials: int
    timing_repeats: int
    reuse_trials: int  # figure 4, per search
    quality_trials: int  # figure 5, per search
    quality_seeds: tuple[int, ...]
    calibration_candidates: int  # figure 7


QUICK = Plan(search_trials=4, search_default_budget=False, search_repeats=1, runtime_widths=(0.5, 1.0), tuned_precisions=("fp32",), tuned_widths=(1.0,),
             tuning_trials=10, mobilenet_tuning_trials=22, timing_repeats=10, reuse_trials=2, quality_trials=5,
             quality_seeds=(0,), calibration_candidates=9)
FULL = Plan(search_trials=24, search_default_budget=True, search_repeats=2, runtime_widths=(0.5, 1.0, 2.0),
            tuned_precisions=("fp32", "int8-ptq", "int8-qat"), tuned_widths=(0.5, 1.0, 2.0), tuning_trials=40, mobilenet_tuning_trials=132,
            timing_repeats=30, reuse_trials=4, quality_trials=12, quality_seeds=(0, 1, 2), calibration_candidates=18)

SAMPLERS = ("nsga2", "tpe", "random")
# Single-technique recipes: one knob moved from the plain fp32, width-1 student.
RECIPES = {
    "fp16 only": {"precision": "fp16"},
    "int8 PTQ only": {"precision": "int8-ptq"},
    "int8 QAT only": {"precision": "int8-qat"},
    "50% pruning": {"sparsity": 0.5},
    "90% pruning": {"sparsity": 0.9},
    "distillation only": {"temperature": 4.0, "alpha": 0.5},
    "width only": {"width": 0.5},
}
PLAIN = {"precision": "fp32", "pruning": "unstructured", "sparsity": 0.0, "temperature": 1.0, "alpha": 1.0,
         "width": 1.0}


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

    return replace(Budget(epochs=4, finetune_epochs=1, prune_steps=1, timing_repeats=10), **overrides)


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

    get_teacher(load_dataset("digits"), 0, runs / "teachers")  # trained once, before anything is timed
    budget = Budget() if plan.search_default_budget else _search_budget()
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
    from hardware_targets.workloads import export_mobilenet_v1
    from search.candidate import Budget, Candidate
    from search.data import load_dataset
    from search.models import build_model
    from search.pipeline import set_threads
    from search.stages.compile import compile_tvm
    from search.stages.compress import quantization_aware_finetune
    from search.stages.export import export_onnx, input_dtype, ort_session
    from search.stages.train import fit

    set_threads(1)
    host = load_profile("host")
    backend = LocalBackend(host)
    digits = load_dataset("digits")
    cache = tmp / "tuning"  # fresh: every tuned figure here includes its tuning

    def timed(onnx_path, precision, shape, dtype, sample, label, trials):
        art = compile_tvm(onnx_path, host.tvm_target, tmp / f"{label}-{trials}.so", shape, dtype,
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
    untuned, _ = timed(mobilenet, "fp32", (1, 3, 96, 96), "float32", x, "mobilenet", 0)
    tuned, art = timed(mobilenet, "fp32", (1, 3, 96, 96), "float32", x, "mobilenet", plan.mobilenet_tuning_trials)
    ort = time_onnxruntime(ort_session(mobilenet, 1), x, plan.timing_repeats)["ort_latency_ms_median"].value
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
    return {"models": models, "ratios": ratios,
            "mobilenet_v1_025_96": {"onnxruntime_ms": ort, "tvm_untuned_ms": untuned, "tvm_tuned_ms": tuned,
                                    "tuning_trials": plan.mobilenet_tuning_trials, "tuning_seconds": art.tuning_seconds,
                                    "tuning_tasks": art.tasks_total,
                                    "tuned_over_onnxruntime": tuned / ort, "untuned_over_onnxruntime": untuned / ort}}


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

def quality_figures(runs: Path, plan: Plan) -> dict:
    """Hypervolume per sampler and seed on one spec, and the single-technique recipes run the same way."""
    from search.spec import SearchSpec
    from search.plots import hypervolume_history
    from search.study import OBJECTIVES, create_study, default_storage

    # A budget and reference point on the scale of digits models on this host (about 0.005-0.07 ms, 1-120 KiB,
    # 1e-4-0.03 mJ), so each objective moves the hypervolume; fp16 (emulated by TVM on x86) is over budget.
    base = SearchSpec(name="bench-quality", trials=plan.quality_trials, workers=2, budget=_search_budget(),
                      latency_budget_ms=0.1, reference_point=(0.0, 0.1, 131072.0, 0.03))
    curves: dict[str, dict[int, list[float]]] = {}
    fronts = []  # each search's front, as objective vectors
    for sampler in SAMPLERS:
        for seed in plan.quality_seeds:
            spec = replace(base, name=f"bench-q-{sampler}-s{seed}-{_stamp()}", sampler=sampler, seed=seed)
            _say(f"  {spec.name}: {plan.quality_trials} trials")
            outcome = _run(spec, runs)
            curves.setdefault(sampler, {})[seed] = [hv for _, hv in hypervolume_history(outcome.rows, base)]
            fronts.append([_point(r) for r in outcome.front])

    recipes_spec = replace(base, name=f"bench-recipes-{_stamp()}", trials=len(RECIPES), sampler="random")
    study = create_study(recipes_spec, default_storage(runs), resume=False)
    for change in RECIPES.values():
        study.enqueue_trial({**PLAIN, **change})
    _say(f"  {len(RECIPES)} single-technique recipes, run through the same service")
    recipe_rows = sorted(_run(recipes_spec, runs, resume=True).rows, key=lambda r: r.number)

    recipes = {}
    for (label, _), row in zip(RECIPES.items(), recipe_rows):
        if row.state != "COMPLETE":
            recipes[label] = {"error": row.error}
            continue
        point = _point(row)
        recipes[label] = {"point": dict(zip([n for n, _ in OBJECTIVES], point)), "feasible": row.feasible,
                          "searches_covering": sum(_covers(front, point) for front in fronts),
                          "searches": len(fronts),
                          "on_union_front": _on_union_front(point, [q for front in fronts for q in front])}
    final = {s: [c[-1] for c in seeds.values()] for s, seeds in curves.items()}
    return {"trials": plan.quality_trials, "seeds": list(plan.quality_seeds), "curves": curves,
            "final_hypervolume": {s: _spread(v) for s, v in final.items()},
            "over_random": {s: _spread([a / b for a, b in zip(final[s], final["random"]) if b > 0])
                            for s in SAMPLERS if s != "random"},
            "reference_point": list(base.reference_point), "latency_budget_ms": base.latency_budget_ms,
            "recipes": recipes}


def _point(row) -> list[float]:
    from search.study import OBJECTIVES

    return [row.value(n) for n, _ in OBJECTIVES]


# Measurement noise on a shared 2-core machine: a front point within this of a recipe counts as matching it.
TOLERANCE = {"accuracy": 0.01, "latency_ms_median": 0.10, "size_bytes": 0.0, "energy_mj": 0.10}


def _covers(front: list[list[float]], point: list[float]) -> bool:
    """Whether some front point dominates or matches ``point`` (accuracy up, the rest down, within TOLERANCE)."""
    from search.study import OBJECTIVES

    def ok(q):
        for (name, direction), a, b in zip(OBJECTIVES, q, point):
            tol = TOLERANCE[name]
            if direction == "maximize" and a < b - tol:
                return False
            if direction == "minimize" and a > b * (1 + tol):
                return False
        return True

    return any(ok(q) for q in front)


def _on_union_front(point: list[float], union: list[list[float]]) -> bool:
    """Whether the recipe found something every search missed: no point of any search's front dominates it."""
    from objectives.pareto import non_dominated
    from search.study import OBJECTIVES

    return len(union) in non_dominated(union + [point], [d for _, d in OBJECTIVES])


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
    from hardware_targets.calibration import calibrate_host

    report = calibrate_host(load_profile("host"), runs, candidates=plan.calibration_candidates, seed=1)
    return {k: report[k] for k in ("mape_uncalibrated", "mape_calibrated", "train", "held_out")}


# Report --------------------------------------------------------------------------------------------------------

def plots(results: dict, out: Path) -> list[str]:
    from search.plots import png_axes

    files = []
    q = results.get("quality")
    if q:
        with png_axes(out / "hypervolume_vs_trials.png", (6, 4)) as ax:
            for color, (sampler, seeds) in zip(("C0", "C1", "C2"), q["curves"].items()):
                for i, curve in enumerate(seeds.values()):
                    ax.plot(range(1, len(curve) + 1), curve, color=color, alpha=0.8,
                            label=sampler if i == 0 else None)
            ax.set(xlabel="finished trials", ylabel="hypervolume (4 objectives)",
                   title=f"Hypervolume vs trials ({len(q['seeds'])} seed(s) per sampler)")
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
    "fp16": "TVM's LLVM code for x86 has no fp16 arithmetic here and converts every fp16 operation in software, "
            "while onnxruntime casts fp16 nodes to its float32 kernels",
    "int8-ptq": _QDQ_AS_FLOAT,
    "int8-qat": _QDQ_AS_FLOAT,
}


def _slower_because(r: dict) -> list[str]:
    """The issue's aim is tuned TVM at least as fast as onnxruntime; say why wherever it is not."""
    out = []
    for precision, v in r["ratios"].items():
        kind = "tuned" if "tuned_over_onnxruntime" in v else "untuned"
        ratio = v[f"{kind}_over_onnxruntime"]["median"]
        if ratio > 1:
            out.append(f"- {precision}: {kind} TVM takes {ratio:.2f}x onnxruntime's time: {WHY_SLOWER[precision]}.")
    mb = r["mobilenet_v1_025_96"]
    if mb["tuned_over_onnxruntime"] > 1:
        per_task = (f" over {mb['tuning_tasks']} tuning tasks, about "
                    f"{mb['tuning_trials'] / max(1, mb['tuning_tasks']):.0f} per task," if "tuning_tasks" in mb else "")
        out.append(f"- MobileNetV1-0.25: tuned TVM takes {mb['tuned_over_onnxruntime']:.2f}x onnxruntime's time after "
                   f"{mb['tuning_trials']} MetaSchedule trials{per_task} where MetaSchedule usually needs thousands "
                   "per model to catch up with onnxruntime's hand-written AVX-512 convolutions (MLAS).")
    return (["Where TVM is slower:", "", *out, ""]) if out else ["Tuned TVM is at least as fast as onnxruntime "
                                                                  "for every tuned precision.", ""]


def report_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# edgesearch benchmarks ({results['date']}, {'quick' if results['quick'] else 'full'} mode)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f". Took {results['minutes']:.1f} min.", "",
             "Every comparison is measured in this run, side by side. Figures are medians, with the range and the "
             "number of repeats in brackets where there was more than one. All latencies are measured on this "
             "machine; energy in figure 5 is estimated (no RAPL counters here).", ""]
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
                  "Latency ratio TVM / onnxruntime per precision over the built-in candidates (below 1: TVM faster).",
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
    q = results.get("quality")
    if q:
        lines += ["## 5. Search quality", "",
                  f"Hypervolume of the feasible front after {q['trials']} trials, seeds {q['seeds']}:", "",
                  "| sampler | hypervolume | over random sampling |", "|---|---|---|"]
        for sampler, v in q["final_hypervolume"].items():
            ratio = q["over_random"].get(sampler)
            lines.append(f"| {sampler} | {_fmt(v, 4)} | {_fmt(ratio) if ratio and ratio['n'] else '-'} |")
        lines += ["", "![hypervolume vs trials](hypervolume_vs_trials.png)", ""] if "hypervolume_vs_trials.png" in \
            results["plots"] else [""]
        lines += ["Single-technique recipes, run through the same service. Covered: how many searches have a front "
                  "point that dominates or matches the recipe (accuracy within 0.01, latency and energy within 10%, "
                  "size no larger). Beyond every front: no point of any search dominates the recipe.", "",
                  "| recipe | accuracy | latency ms | size KiB | energy mJ | covered | beyond every front |",
                  "|---|---|---|---|---|---|---|"]
        for label, v in q["recipes"].items():
            if "error" in v:
                lines.append(f"| {label} | failed: {v['error']} | | | | | |")
                continue
            p = v["point"]
            lines.append(f"| {label} | {p['accuracy']:.3f} | {p['latency_ms_median']:.4f} | "
                         f"{p['size_bytes'] / 1024:.1f} | {p['energy_mj']:.2e} | {v['searches_covering']}/"
                         f"{v['searches']} | {'yes' if v['on_union_front'] else 'no'} |")
        lines.append("")
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


FIGURES = ("3", "6", "7", "1", "4", "5")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="edgesearch benchmarks (not tests): figures 1-7 of the benchmark issue, measured side by side. "
                    "Writes RUNS/bench/results.json, REPORT.md and plots, and logs them to the MLflow experiment "
                    "'bench'. Full mode took 38 minutes on 2 cores at its last run (at most 40), --quick 9.4.")
    parser.add_argument("--quick", action="store_true", help="smaller repeats and searches (under 10 minutes)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--only", nargs="+", choices=FIGURES, metavar="FIGURE",
                        help=f"run only these figures ({', '.join(FIGURES)}; 1 includes 2)")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: re-render REPORT.md and the plots from RUNS/bench/results.json "
                             "(MLflow keeps the run's original files)")
    args = parser.parse_args(argv)
    import tempfile

    plan = QUICK if args.quick else FULL
    wanted = set(args.only or FIGURES)
    bench = args.runs_dir / "bench"
    if args.report_only:
        results = json.loads((bench / "results.json").read_text())
        results["plots"] = plots(results, bench)
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
             ("5", "figure 5: search quality, samplers and recipes", "quality", lambda: quality_figures(work, plan))]
    for figure, title, key, run in steps:
        if figure not in wanted:
            continue
        _say(title)
        if figure == "3":
            with tempfile.TemporaryDirectory() as tmp:
                results[key] = runtime_figures(Path(tmp), plan)
        else:
            results[key] = run()
        _say(f"  done ({(time.perf_counter() - started) / 60:.1f} min so far)")
    results["minutes"] = (time.perf_counter() - started) / 60
    results["plots"] = plots(results, bench)
    (bench / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (bench / "REPORT.md").write_text(report_markdown(results))
    print(report_markdown(results))
    run_id = log_to_mlflow(results, bench, args.runs_dir)
    print(f"written to {bench / 'results.json'} and {bench / 'REPORT.md'}; MLflow experiment 'bench', run {run_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
