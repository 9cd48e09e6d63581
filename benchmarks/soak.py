"""Load test: a 100-trial search of the cheapest candidates on 2 workers, end to end.

Checks that every trial lands in Optuna and in MLflow, that the driver's memory
stays flat (RSS after trial 100 within 20% of after trial 20), and that no Ray
or MLflow process outlives the search. Writes ``runs/bench/soak.json``.
Run with ``make soak``; not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import psutil


def _leftovers(before: set[int]) -> list[str]:
    names = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["pid"] not in before and ("ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd
                                            or "mlflow" in cmd.split(" ")[0]):
            names.append(cmd[:120])
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)

    from mlflow.tracking import MlflowClient

    from hardware_targets.host import host_cpu
    from search.candidate import Budget
    from search.spec import SearchSpace, SearchSpec
    from search.study import default_storage, load_study
    from search.tracking import default_tracking_uri
    from search.workers import run_search

    runs = args.runs_dir / "soak"
    name = f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = SearchSpec(name=name, target="cortex-m4", trials=args.trials, workers=2, latency_budget_ms=50,
                      sampler="random", recipes=False, halving=False,
                      budget=Budget(epochs=1, finetune_epochs=0, prune_steps=1, timing_repeats=1),
                      space=SearchSpace(precision=("fp32", "int8-ptq"), width=(0.25, 0.5), sparsity=(0.0, 0.0)))
    before = {p.pid for p in psutil.process_iter()}
    me = psutil.Process()
    rss: dict[int, int] = {}
    started = time.perf_counter()

    def report(line: str) -> None:
        print(line, flush=True)
        if line.startswith("["):
            done = int(line[1:].split("/")[0])
            rss[done] = me.memory_info().rss

    storage, uri = default_storage(runs), default_tracking_uri(runs)
    run_search(spec, runs, storage_url=storage, tracking_uri=uri, report=report)
    wall = time.perf_counter() - started
    time.sleep(5)  # let Ray's processes exit
    study = load_study(name, storage)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    children = [r for r in client.search_runs([exp.experiment_id], max_results=5000)
                if "mlflow.parentRunId" in r.data.tags]
    early = rss.get(min(20, args.trials))
    late = rss.get(args.trials)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": {**host_cpu().summary(), "cores": os.cpu_count()},
        "trials_requested": args.trials, "trials_in_optuna": len(study.trials),
        "trials_in_mlflow": len(children), "wall_seconds": round(wall, 1),
        "driver_rss_mb_after_20": round(early / 2**20, 1) if early else None,
        "driver_rss_mb_after_last": round(late / 2**20, 1) if late else None,
        "rss_growth": round(late / early - 1, 3) if early and late else None,
        "leftover_processes": _leftovers(before),
    }
    result["passed"] = (result["trials_in_optuna"] == result["trials_in_mlflow"] == args.trials
                        and result["rss_growth"] is not None and result["rss_growth"] <= 0.2
                        and not result["leftover_processes"])
    out = args.runs_dir / "bench" / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
