"""The benchmark script's own plumbing (its figures are measured by `make bench`, never asserted here)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_results_go_to_the_bench_experiment_beside_the_store(tmp_path):
    from mlflow.tracking import MlflowClient

    from search.tracking import default_tracking_uri

    bench = _bench()
    out = tmp_path / "bench"
    out.mkdir()
    results = {"date": "2026-11-25 10:00:00", "quick": True, "plots": [],
               "machine": {"cpu": "test", "cores": 2, "versions": {"torch": "x"}},
               "reuse": {"ratio": 142.0, "first": {"seconds": 208.4}}, "note": "text is not a metric"}
    (out / "results.json").write_text(json.dumps(results))
    (out / "REPORT.md").write_text("# report\n")
    run_id = bench.log_to_mlflow(results, out, tmp_path)
    client = MlflowClient(default_tracking_uri(tmp_path))
    exp = client.get_experiment_by_name("bench")
    assert exp.artifact_location.startswith((tmp_path / "mlartifacts").resolve().as_uri())
    run = client.get_run(run_id)
    assert run.data.metrics == {"reuse.ratio": 142.0, "reuse.first.seconds": 208.4}
    assert run.data.params["cores"] == "2" and run.data.tags["mode"] == "quick"
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["REPORT.md", "results.json"]


def test_the_report_says_why_wherever_tvm_is_slower_than_onnxruntime():
    bench = _bench()

    def ratio(x):
        return {"median": x, "min": x, "max": x, "n": 1}

    runtime = {"ratios": {"fp32": {"untuned_over_onnxruntime": ratio(1.2), "tuned_over_onnxruntime": ratio(0.8)},
                          "fp16": {"untuned_over_onnxruntime": ratio(97.0)}},
               "mobilenet_v1_025_96": {"tuned_over_onnxruntime": 5.4, "tuning_trials": 132, "tuning_tasks": 22}}
    text = "\n".join(bench._slower_because(runtime))
    assert "fp32" not in text  # tuned fp32 met the aim: nothing to explain
    assert "- fp16: untuned TVM takes 97.00x" in text and "software" in text
    assert "software" not in "\n".join(bench._slower_because({**runtime, "fp16_native": True}))
    assert "132 MetaSchedule trials over 22 tuning tasks, about 6 per task" in text
    # onnxruntime's kernels are named by the measuring CPU's widest vector instructions, not a fixed ISA
    assert "hand-written vector convolutions" in text  # results from before the bench recorded the flags
    for isa, name in ((["sse4_2", "avx", "avx2", "fma"], "AVX2"), (["avx2", "avx512f", "avx512_vnni"], "AVX-512"),
                      (["asimd", "asimddp"], "Neon"), (["sse4_2"], "SSE")):
        assert f"hand-written {name} convolutions" in "\n".join(bench._slower_because({**runtime, "cpu_isa": isa}))
    runtime["ratios"].pop("fp16")
    runtime["mobilenet_v1_025_96"]["tuned_over_onnxruntime"] = 0.9
    assert bench._slower_because(runtime)[0].startswith("Tuned TVM is at least as fast")


def test_worker_time_on_infeasible_candidates_is_counted_by_outcome():
    import optuna

    bench = _bench()
    study = optuna.create_study(directions=["maximize", "minimize"])
    for seconds, violation, state in ((10.0, -1.0, "COMPLETE"), (1.0, 3.0, "PRUNED"), (5.0, 0.5, "COMPLETE"),
                                      (2.0, None, "FAIL")):
        trial = study.ask()
        trial.set_user_attr("stage_seconds", {"train": seconds * 0.8, "measure": seconds * 0.2})
        if violation is not None:
            trial.set_constraint("latency_budget", violation)
        if state == "COMPLETE":
            study.tell(trial, [0.9, 1.0])
        else:
            study.tell(trial, state=getattr(optuna.trial.TrialState, state))
    # infeasible: the screened-out 1 s and the over-budget 5 s, of 18 s in all (a failure is not "infeasible")
    assert bench._infeasible_share(study) == 6.0 / 18.0


def _trained(width: float, sparsity: float, accuracy: float, latency_ms: float, budget_ms: float, number: int):
    from search.study import Row

    kept = width * (1 - sparsity)
    metrics = {"accuracy": (accuracy, "", "measured"), "latency_ms_p90": (latency_ms, "ms", "measured"),
               "size_bytes": (1e4 * kept, "B", "measured"), "energy_mj": (1e-3 * kept, "mJ", "estimated")}
    knobs = {"precision": "fp32", "pruning": "structured", "width": width, "sparsity": sparsity}
    return Row(number, "COMPLETE", knobs, metrics, latency_ms <= budget_ms, None)


def test_the_ceiling_places_where_outcomes_pay_and_its_test_power_follows_the_seeds():
    bench = _bench()
    budget, bounds = 0.01, [0.01, 2e4, 2e-3]
    # width 0.5 unpruned (half the channels) is accurate and fits; width 2 with 25% pruned keeps 1.5x and is over
    small = [_trained(0.5, 0.0, 0.9, 0.004, budget, i) for i in range(6)]
    large = [_trained(2.0, 0.25, 0.95, 0.02, budget, 10 + i) for i in range(6)]
    # random sampling trained only the large, infeasible shape: every random search scores 0
    out = bench.placement_ceiling(small + large, large, bounds, n=1, n_random=2, seeds=5)
    assert out["placed_kept"] == [0.5]
    assert out["provenance"] == "estimated"
    expected = (0.9 * (1 - 0.4) * (1 - 0.25) * (1 - 0.25))  # accuracy x (1 - latency, size, energy / bounds)
    assert out["oracle"]["median"] == pytest.approx(expected)
    assert out["random"]["max"] == 0.0
    assert out["p_oracle_higher"] == 1.0 and out["test_power"] == 1.0  # 5 against 5, all higher: p = 0.004
    # one search per arm shows nothing, however far apart (p = 0.5)
    assert bench.placement_ceiling(small + large, large, bounds, 1, 2, seeds=1)["test_power"] == 0.0
    # where random sampling reaches the same outcomes, the oracle is never higher
    same = bench.placement_ceiling(small, small, bounds, 1, 2, seeds=5)
    assert same["p_oracle_higher"] == 0.0 and same["test_power"] == 0.0


def test_figure_5s_budget_is_what_every_search_screens_for_the_reference_model_on_this_machine(tmp_path):
    from dataclasses import replace

    from hardware_targets.profile import load_profile
    from search.candidate import Candidate
    from search.data import load_dataset
    from search.spec import SearchSpec
    from search.stages.screen import screen_candidate

    bench = _bench()
    spec = SearchSpec(name="bench-quality", trials=2, budget=bench._search_budget())
    budget = bench.reference_budget_ms(spec, tmp_path)
    # a search of the figure (any seed) meets the reference shape in its own cache, at the budget's figure
    searched = replace(spec, seed=3, latency_budget_ms=budget)
    reference = Candidate(precision="fp32", width=bench.BUDGET_REFERENCE_WIDTH, budget=searched.budget,
                          seed=searched.seed, temperature=4.0, alpha=0.5)
    screened = screen_candidate(reference, load_dataset(searched.dataset), load_profile(searched.target), tmp_path,
                                latency_budget_ms=budget)
    assert screened["cached"] and screened["fits"]
    assert screened["metrics"]["latency_ms_p90"][2] == "measured"
    assert budget == pytest.approx(screened["metrics"]["latency_ms_p90"][0], rel=5e-3)  # three figures


def test_a_guide_row_over_seeds_reports_medians_and_the_accuracy_range():
    bench = _bench()

    def seed(acc_base, acc, p90, runtime):
        base = {"label": "fp32 full width", "runtime": "onnxruntime", "latency_ms_p90": 0.010, "size_bytes": 4000,
                "gzip_bytes": 3600, "accuracy_test": acc_base, "per_runtime_ms": {"tvm": 0.012, "onnxruntime": 0.010}}
        row = {"label": "90% unstructured pruning", "runtime": runtime, "latency_ms_p90": p90, "size_bytes": 4000,
               "gzip_bytes": 900, "accuracy_test": acc, "per_runtime_ms": {"tvm": 0.012, "onnxruntime": p90}}
        return bench._against_first_row([base, row])[1]

    # accuracy points by hand: -4.0, -6.0, -2.0; faster: 1.0, 2.0, 0.5
    runs = [seed(0.97, 0.93, 0.010, "onnxruntime"), seed(0.96, 0.90, 0.005, "tvm"),
            seed(0.95, 0.93, 0.020, "onnxruntime")]
    row = bench._over_seeds(runs)
    assert row["accuracy_points"] == pytest.approx(-4.0)
    assert (row["accuracy_points_spread"]["min"], row["accuracy_points_spread"]["max"]) == pytest.approx((-6.0, -2.0))
    assert row["faster_x"] == pytest.approx(1.0) and row["smaller_x"] == pytest.approx(1.0)
    assert row["smaller_gzip_x"] == pytest.approx(4.0)  # 3600 / 900
    assert row["faster_x_per_runtime"]["onnxruntime"] == pytest.approx(1.0)
    assert row["runtime"] == "onnxruntime (2 of 3) / tvm (1 of 3)"
    assert bench._points(row) == "-4.0 points (-6.0 to -2.0)"
    assert bench._points(bench._over_seeds(runs[:1])) == "-4.0 points"


def test_the_int8_rows_say_plainly_whether_int8_pays():
    """Figure 3's int8 verdict compares what would ship for int8 with what ships for fp32, not TVM's two builds."""
    bench = _bench()
    row = {"tvm_tuned_ms": 0.93, "tuned_over_onnxruntime_int8": 1.15, "tuning_seconds": 422.0, "tasks": 49,
           "tasks_tuned": 48, "integer_products": 13, "max_abs_diff_vs_onnxruntime": 0.0, "over_fp32_tuned": 0.94}
    int8 = {"integer_kernels": True, "onnxruntime_ms": 0.81, "onnxruntime_int8_over_fp32": 4.6, "per_task": {"4": row},
            "float_qdq": {"4": {**row, "integer_products": 0}}, "shipped_ms": 0.81, "shipped_over_fp32_shipped": 4.6}
    text = "\n".join(bench._int8_lines(int8))
    assert "| 4 | integer kernels (VNNI) | 48/49 |" in text and "| 4 | float QDQ |" in text
    assert "int8 is not faster than fp32" in text
    text = "\n".join(bench._int8_lines({**int8, "per_task": {}, "float_qdq": {}, "shipped_over_fp32_shipped": 0.8}))
    assert "not tuned in this plan" in text and "int8 is faster than fp32" in text
    assert bench._int8_lines(None) == []


@pytest.mark.slow  # two 2-trial searches on real Ray clusters; the default run's share-nothing test covers the node
def test_figure_9_runs_the_search_on_one_node_and_on_two_that_share_nothing(tmp_path):
    """`make bench` ran figure 9 through the tests' cluster helpers, whose signature changed under it unnoticed."""
    import os
    import shutil
    from dataclasses import replace

    bench = _bench()
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a node in its own mount namespace needs root and unshare")
    figures = bench.cluster_figures(tmp_path, replace(bench.QUICK, cluster_trials=2))
    one, two = figures["one_node"], figures["two_nodes"]
    assert one["completed"] == two["completed"] == 2
    assert one["bundles"] == 0 and two["bundles"] > 0 and two["megabytes"] > 0  # files moved only across nodes
    assert figures["wall_ratio"] == pytest.approx(two["wall_s"] / one["wall_s"])
    machine = {"cpu": "test", "cores": 2, "python": "3", "versions": {}}
    report = bench.report_markdown({"date": "today", "quick": True, "minutes": 1.0, "machine": machine,
                                    "cluster": figures})
    assert "## 9. Two nodes that share nothing" in report and "Not measured" not in report


def test_a_report_written_mid_run_says_what_is_still_to_come(tmp_path):
    bench = _bench()
    machine = {"cpu": "test", "cores": 2, "python": "3", "versions": {}}
    results = {"date": "today", "quick": True, "machine": machine, "cluster": {"skipped": "no root"},
               "pending": ["figure 8: the classic guide's rows"]}
    bench._write(results, tmp_path, started=0.0)
    report = (tmp_path / "REPORT.md").read_text()
    assert "min so far" in report and "still to come: figure 8: the classic guide's rows" in report
    assert "Not measured: no root" in report  # what finished is in it
    assert json.loads((tmp_path / "results.json").read_text())["pending"] == results["pending"]
    results["pending"].clear()
    bench._write(results, tmp_path, started=0.0)
    assert "still to come" not in (tmp_path / "REPORT.md").read_text()


@pytest.mark.slow  # a 4-trial search on real Ray and MLflow; `make soak` runs it at 100 trials
def test_the_soak_counts_every_trial_in_optuna_and_mlflow_and_leaves_no_process(tmp_path):
    """`make soak` is run by no other test: like figure 9, its code could break unnoticed."""
    spec = importlib.util.spec_from_file_location("soak", ROOT / "benchmarks" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    assert soak.main(["--trials", "4", "--runs-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench" / "soak.json").read_text())
    assert result["trials_in_optuna"] == result["trials_in_mlflow"] == 4
    assert result["leftover_processes"] == [] and result["passed"]
    assert result["machine"]["model"] and result["machine"]["cores"] >= 1
