"""Benchmarks: speed, scaling and fidelity, measured side by side in one run, reported as ratios.

Writes ``runs/bench/results.json`` and ``runs/bench/REPORT.md``. Not a test: nothing
here asserts a timing. Figures (numbered as in the benchmark issue):
1. search throughput and the share of each stage and of the service itself;
2. parallel efficiency: the same trials with 1 and 2 workers;
3. compiler vs runtime: TVM (untuned) vs onnxruntime on the same ONNX, per precision,
   on the built-in candidates and on MobileNetV1-0.25 at 96x96x3;
6. sampler cost: time per ``ask`` at 100 and 1,000 trials;
7. emulator fidelity: median absolute percentage error on held-out host measurements.
Figures 4 (tuning reuse) and 5 (search quality against recipes) are not implemented yet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def _spread(values):
    return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values)),
            "n": len(values)}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import optuna
    import ray
    import torch
    import tvm

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "versions": {"torch": torch.__version__, "tvm": tvm.__version__, "optuna": optuna.__version__,
                         "ray": ray.__version__}}


def search_figures(runs: Path, trials: int) -> dict:
    """Figures 1 and 2: the same spec (same seed, so the same candidates) with 1 and 2 workers."""
    from search.candidate import Budget
    from search.spec import SearchSpace, SearchSpec
    from search.study import default_storage, load_study
    from search.workers import run_search

    out = {}
    for workers in (1, 2):
        name = f"bench-w{workers}-{time.strftime('%H%M%S')}"
        spec = SearchSpec(name=name, trials=trials, workers=workers, sampler="random", seed=0,
                          budget=Budget(epochs=5, finetune_epochs=1, prune_steps=1, timing_repeats=10),
                          space=SearchSpace(precision=("fp32", "int8-ptq", "int8-qat")))
        started = time.perf_counter()
        run_search(spec, runs, storage_url=default_storage(runs), report=lambda line: None)
        wall = time.perf_counter() - started
        study = load_study(name, default_storage(runs))
        stages: dict[str, float] = {}
        for t in study.trials:
            for stage, sec in (t.user_attrs.get("stage_seconds") or {}).items():
                stages[stage] = stages.get(stage, 0.0) + sec
        worker_seconds = sum(stages.values())
        # time the workers were busy, over the wall time they had: what is left is the service's own cost
        capacity = wall * workers
        out[workers] = {"wall_seconds": wall, "candidates_per_hour": trials / wall * 3600,
                        "stage_share": {k: v / worker_seconds for k, v in stages.items()},
                        "service_overhead_share": max(0.0, 1 - worker_seconds / capacity)}
    return {"throughput": out[2], "single_worker": out[1],
            "parallel_speedup": out[1]["wall_seconds"] / out[2]["wall_seconds"]}


def runtime_figures(tmp: Path, repeats: int) -> dict:
    """Figure 3: untuned TVM vs onnxruntime, same ONNX, same thread count (1)."""
    import torch

    from hardware_targets import load_profile
    from hardware_targets.backends.local import LocalBackend, time_onnxruntime
    from hardware_targets.workloads import export_mobilenet_v1
    from search.candidate import Budget, Candidate
    from search.data import load_dataset
    from search.models import build_model
    from search.stages.compile import compile_tvm
    from search.stages.compress import quantization_aware_finetune
    from search.stages.export import export_onnx, input_dtype, ort_session
    from search.stages.train import fit

    host = load_profile("host")
    backend = LocalBackend(host)
    digits = load_dataset("digits")
    ratios: dict[str, list[float]] = {}
    for precision in ("fp32", "fp16", "int8-ptq", "int8-qat"):
        for width in (0.5, 1.0, 2.0):
            torch.manual_seed(0)
            c = Candidate(precision=precision, width=width, budget=Budget(epochs=1, finetune_epochs=1))
            model = fit(build_model(digits.sample_shape, 10, width), digits, 1)
            if precision == "int8-qat":
                model = quantization_aware_finetune(model, c, digits)
            path = export_onnx(model, c, digits, tmp / f"{precision}-{width}.onnx")
            dtype = input_dtype(precision)
            art = compile_tvm(path, host.tvm_target, tmp / f"{precision}-{width}.so", (1, 1, 8, 8), dtype.name)
            sample = digits.x_val[:1].astype(dtype)
            tvm_ms = backend.measure(art, path, precision, sample, repeats)["latency_ms_median"].value
            ort_ms = time_onnxruntime(ort_session(path, 1), sample, repeats)["ort_latency_ms_median"].value
            ratios.setdefault(precision, []).append(tvm_ms / ort_ms)
    mobilenet = export_mobilenet_v1(tmp / "mobilenet.onnx")
    art = compile_tvm(mobilenet, host.tvm_target, tmp / "mobilenet.so", (1, 3, 96, 96), "float32")
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
    tvm_ms = backend.measure(art, mobilenet, "fp32", x, repeats)["latency_ms_median"].value
    ort_ms = time_onnxruntime(ort_session(mobilenet, 1), x, repeats)["ort_latency_ms_median"].value
    return {"tvm_untuned_over_onnxruntime": {p: _spread(v) for p, v in ratios.items()},
            "mobilenet_v1_025_96": {"tvm_untuned_ms": tvm_ms, "onnxruntime_ms": ort_ms, "ratio": tvm_ms / ort_ms}}


def sampler_figures() -> dict:
    """Figure 6: cost of one ask as the study grows, with a cheap synthetic objective."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    samplers = {"nsga2": lambda: optuna.samplers.NSGAIISampler(seed=0),
                "tpe": lambda: optuna.samplers.TPESampler(seed=0, multivariate=True),
                "random": lambda: optuna.samplers.RandomSampler(seed=0)}
    out = {}
    for name, make in samplers.items():
        study = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"], sampler=make())
        costs = {}
        for n in range(1, 1001):
            started = time.perf_counter()  # define-by-run: the sampler works in ask() and in each suggest
            t = study.ask()
            w = t.suggest_float("width", 0.25, 2.0)
            s = t.suggest_float("sparsity", 0.0, 0.95)
            p = t.suggest_categorical("precision", ["fp32", "fp16", "int8"])
            t.suggest_float("temperature", 1, 10)
            t.suggest_float("alpha", 0, 1)
            ask = time.perf_counter() - started
            t.set_constraint("budget", w * (1 - s) - 1.0)
            study.tell(t, [w * (1 - s / 2), w * (1 - s), w * (2 if p == "fp32" else 1), w])
            if n in (100, 1000):
                costs[n] = ask * 1e3
        out[name] = {"ask_ms_at_100": costs[100], "ask_ms_at_1000": costs[1000]}
    return out


def emulator_figures(runs: Path, candidates: int) -> dict:
    """Figure 7: the emulator's host error after calibration, on held-out candidates."""
    from hardware_targets import load_profile
    from hardware_targets.calibration import calibrate_host

    report = calibrate_host(load_profile("host"), runs, candidates=candidates, seed=1)
    return {k: report[k] for k in ("mape_uncalibrated", "mape_calibrated", "train", "held_out")}


def report_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# edgesearch benchmarks ({results['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
             "Every comparison is measured in this run, side by side; ratios with median and range.", ""]
    s = results.get("search")
    if s:
        t = s["throughput"]
        lines += ["## 1. Search throughput (2 workers)", "", f"{t['candidates_per_hour']:.0f} candidates per hour; "
                  f"service overhead {100 * t['service_overhead_share']:.1f}% of worker capacity (wall time x workers "
                  "not spent in a stage: Ray start-up, scheduling, Optuna, storage; large for short searches).", "",
                  "| stage | share |", "|---|---|"]
        lines += [f"| {k} | {100 * v:.1f}% |" for k, v in sorted(t["stage_share"].items(), key=lambda kv: -kv[1])]
        lines += ["", "## 2. Parallel efficiency", "",
                  f"Same trials, 1 vs 2 workers: speed-up {s['parallel_speedup']:.2f}x "
                  f"({s['single_worker']['wall_seconds']:.0f} s vs {t['wall_seconds']:.0f} s).", ""]
    r = results["runtime"]
    lines += ["## 3. Compiler vs runtime (untuned TVM / onnxruntime, 1 thread)", "", "| precision | median | range |",
              "|---|---|---|"]
    lines += [f"| {p} | {v['median']:.2f} | {v['min']:.2f}-{v['max']:.2f} |"
              for p, v in r["tvm_untuned_over_onnxruntime"].items()]
    mb = r["mobilenet_v1_025_96"]
    lines += ["", f"MobileNetV1-0.25 at 96x96x3: TVM untuned {mb['tvm_untuned_ms']:.3f} ms vs onnxruntime "
              f"{mb['onnxruntime_ms']:.3f} ms (ratio {mb['ratio']:.1f}). Untuned TVM is not a fair latency; tuned "
              "figures are not in this report yet.", "", "## 6. Sampler cost per ask", "",
              "| sampler | ms per ask + 5 suggests at 100 trials | at 1,000 trials |", "|---|---|---|"]
    lines += [f"| {k} | {v['ask_ms_at_100']:.2f} | {v['ask_ms_at_1000']:.2f} |" for k, v in results["samplers"].items()]
    e = results["emulator"]
    lines += ["", "## 7. Emulator fidelity on the host", "",
              f"Median absolute percentage error on {e['held_out']} held-out candidates: "
              f"{e['mape_uncalibrated']:.1f}% uncalibrated, {e['mape_calibrated']:.1f}% calibrated "
              f"(fitted on {e['train']}).", "", "Figures 4 (tuning reuse) and 5 (search quality) are not measured yet."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="edgesearch benchmarks (not tests)")
    parser.add_argument("--quick", action="store_true", help="smaller repeats and searches (under 10 minutes)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    import tempfile

    bench = args.runs_dir / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick, "machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        print("figure 3: TVM vs onnxruntime ...", flush=True)
        results["runtime"] = runtime_figures(Path(tmp), repeats=10 if args.quick else 30)
    print("figure 6: sampler cost ...", flush=True)
    results["samplers"] = sampler_figures()
    print("figure 7: emulator fidelity ...", flush=True)
    results["emulator"] = emulator_figures(bench / "work", candidates=9 if args.quick else 18)
    print("figures 1-2: searches with 1 and 2 workers ...", flush=True)
    results["search"] = search_figures(bench / "work", trials=4 if args.quick else 12)
    (bench / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (bench / "REPORT.md").write_text(report_markdown(results))
    print(report_markdown(results))
    print(f"written to {bench / 'results.json'} and {bench / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
