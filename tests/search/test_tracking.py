"""MLflow: a real tracking store after a real tiny search, and a real server that is down."""

import json
from pathlib import Path

import pytest

from tests.oracles import OBJECTIVES, pareto_front
from search.errors import ConfigError
from search.spec import SearchSpec
from search.study import default_storage
from search.workers import run_search

from tests.search.conftest import TINY


def test_parent_and_children_match_the_study(tracked_search):
    spec, outcome, client, folder = tracked_search
    exp = client.get_experiment_by_name("tracked")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    # every stored trial is a run: the 4 of the budget that trained, and any screened out before training
    trained = [r for r in outcome.rows if r.stopped != "screened"]
    assert len(parents) == 1 and len(children) == len(outcome.rows) and len(trained) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["latency_budget_ms"] == "0.05" and parent.data.params["trials"] == "4"
    assert "hypervolume" in parent.data.metrics
    # the distillation teacher (recipe 4 distils) the student runs learnt from, by its validation accuracy
    from search.study import load_study

    teacher = load_study("tracked", default_storage(folder)).user_attrs["teacher"]
    assert parent.data.metrics["teacher_accuracy"] == pytest.approx(teacher["accuracy"]) and 0 < teacher["accuracy"]
    history = client.get_metric_history(parent.info.run_id, "hypervolume")
    # refreshed as trials finished, not only at the end (MLflow's thread runs below the workers, so on a busy
    # machine one refresh may cover several trials): a value logged when some but not all trials had finished
    assert any(0 < h.step < len(outcome.rows) for h in history), [h.step for h in history]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert set(child.data.params) >= {"precision", "sparsity", "pruning", "temperature", "alpha", "width"}
        assert child.data.tags["provenance"] == "measured" and child.data.tags["target"] == "host"
        assert child.data.tags["feasible"] in ("true", "false")
        if child.data.tags.get("stopped") == "screened":  # its untrained graph was timed over the budget
            assert child.data.tags["feasible"] == "false" and child.data.tags["screened_out"]
            assert "latency_ms_median" in child.data.metrics
            assert "accuracy" not in child.data.metrics  # never trained
            continue
        assert {"accuracy", "latency_ms_median", "latency_ms_p90", "size_bytes", "peak_activation_bytes",
                "seconds_compile", "seconds_tune"} <= set(child.data.metrics)
        assert {"seconds_train", "seconds_distill"} & set(child.data.metrics)  # distilling when alpha < 1
        names = [a.path for a in client.list_artifacts(child.info.run_id, "model")]
        assert names == ["model/model.onnx"]
        prov = client.download_artifacts(child.info.run_id, "metrics_with_provenance.json")
        assert json.loads(Path(prov).read_text())["metrics"]["peak_activation_bytes"]["provenance"] == "estimated"


def test_on_pareto_front_tags_equal_the_recomputed_front(tracked_search):
    spec, outcome, client, _ = tracked_search
    exp = client.get_experiment_by_name("tracked")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    feasible = [r for r in children if r.data.tags["feasible"] == "true"]
    assert feasible, "digits candidates of width <= 1 fit 0.05 ms on the project's CPUs"
    for r in feasible:
        assert r.data.metrics["latency_ms_p90"] <= spec.latency_budget_ms
    points = {r.info.run_id: {n: r.data.metrics[n] for n, _ in OBJECTIVES} for r in feasible
              if "reused_from_trial" not in r.data.tags}
    tagged = {r.info.run_id for r in children if r.data.tags["on_pareto_front"] == "true"}
    assert tagged == pareto_front(points)
    # the same membership as a metric, which the runs table sorts on, and the feasibility the table shows
    assert {r.info.run_id for r in children if r.data.metrics.get("on_front") == 1.0} == tagged
    assert all(r.data.metrics["feasible"] == float(r.data.tags["feasible"] == "true") for r in children)


def test_plots_are_valid_images_and_html(tracked_search):
    _, _, client, _ = tracked_search
    exp = client.get_experiment_by_name("tracked")
    parent = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags][0]
    folder = Path(client.download_artifacts(parent.info.run_id, "plots"))
    for name in ("pareto_accuracy_vs_latency", "pareto_accuracy_vs_size"):
        assert (folder / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "hypervolume.png").read_bytes()[:4] == b"\x89PNG"
    # one page of the interactive views, which carries plotly.js once (4.8 MB), not once per view
    html = (folder / "interactive.html").read_text()
    assert "<html" in html and "trial" in html and "parcoords" in html
    assert html.count("plotly.js v") == 1 and html.count('class="plotly-graph-div"') == 4
    assert not list(folder.glob("pareto_*.html"))
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "pareto_front.json")).read_text())
    assert all(row["latency_ms_median"]["provenance"] == "measured" for row in table)
    assert Path(client.download_artifacts(parent.info.run_id, "summary.png")).read_bytes()[:4] == b"\x89PNG"
    import pandas as pd

    # MlflowClient.load_table searches the global tracking URI, not its own: read what log_table wrote instead
    assert {"path": "pareto_front_table.json", "type": "table"} in json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    logged = pd.read_json(client.download_artifacts(parent.info.run_id, "pareto_front_table.json"), orient="split")
    assert sorted(logged["trial"].astype(int)) == sorted(row["trial"] for row in table)
    assert set(logged["after_trials"]) == {len(children_of(client, exp))}  # the table of the finished search


def children_of(client, exp) -> list:
    return [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]


def test_unreachable_tracking_server_fails_before_any_work(tmp_path, free_port):
    port = free_port()
    spec, lines = SearchSpec(name="nowhere", trials=1, workers=1, budget=TINY), []
    with pytest.raises(ConfigError, match="Cannot reach the MLflow tracking store"):
        run_search(spec, tmp_path, storage_url=default_storage(tmp_path), tracking_uri=f"http://127.0.0.1:{port}",
                   report=lines.append)
    assert not (tmp_path / "candidates").exists()  # nothing trained
    # the default space times fp16 and int8 against fp32 on the host first: not for a server that is down
    assert not (tmp_path / "screening").exists() and not any("timed" in line for line in lines), lines
    import optuna

    assert "nowhere" not in [s.study_name for s in optuna.get_all_study_summaries(default_storage(tmp_path))]


def test_a_tracking_uri_naming_a_folder_says_what_to_pass_instead(tmp_path, monkeypatch, capsys):
    from search.cli import main

    spec, lines = SearchSpec(name="folder", trials=1, workers=1, budget=TINY), []
    with pytest.raises(ConfigError, match=r"names a folder \(MLflow's file store"):
        run_search(spec, tmp_path, storage_url=default_storage(tmp_path), tracking_uri=f"file://{tmp_path}/mlruns",
                   report=lines.append)
    assert not any("timed" in line for line in lines), lines  # refused before anything is timed
    with pytest.raises(SystemExit) as exited:  # argparse's error: usage, the message, exit code 2
        main(["--runs-dir", str(tmp_path), "submit", "--name", "folder", "--tracking-uri", "mlruns"])
    assert exited.value.code == 2
    assert f"pass a database, e.g. sqlite:///{Path.cwd() / 'mlruns.db'}" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "mlruns"))
    with pytest.raises(SystemExit) as exited:
        main(["--runs-dir", str(tmp_path), "sync", "folder"])
    assert exited.value.code == 2 and "names a folder" in capsys.readouterr().err
    assert main(["--runs-dir", str(tmp_path), "list"]) == 0  # a command that never reads MLflow is not refused


def test_the_service_reports_its_own_time_by_part(tracked_search):
    _, outcome, _, _ = tracked_search
    t = outcome.timings
    assert set(t) == {"ray_start", "optuna", "logging", "logging_background", "dispatch", "dispatches", "wall",
                      "transfer", "transfer_workers"}  # on one machine no result brought files (no transfer_bundles)
    moving = {"transfer", "transfer_workers"}
    assert all(v > 0 for k, v in t.items() if k not in moving)  # Ray started, trials told, MLflow written, re-fed
    assert t["transfer"] + t["transfer_workers"] < 0.01 * t["wall"]  # a shared disk: a check per task, no files
    assert t["ray_start"] + t["optuna"] + t["logging"] < t["wall"]
    assert t["dispatch"] < t["optuna"]  # a freed worker waits for Optuna's tell and ask, not for MLflow


def test_feasible_points_stay_apart_when_others_are_far_over_budget():
    """Points 100x over a 0.05 ms budget must not squeeze the feasible ones into one line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from search.plots import ScatterInfo, _draw_scatter

    feasible = [(0.004, 0.90), (0.012, 0.93), (0.03, 0.95)]
    over = [(5.0, 0.97), (2.5, 0.96)]
    info = ScatterInfo("latency_ms_p90", "latency (ms, p90)",
                       [(x, y, True, "") for x, y in feasible] + [(x, y, False, "") for x, y in over],
                       [(x, y, i) for i, (x, y) in enumerate(feasible)], 0.05, "measured")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        _draw_scatter(ax, info, "t")
        fig.canvas.draw()
        pixels = sorted(ax.transData.transform(feasible)[:, 0])
        assert min(b - a for a, b in zip(pixels, pixels[1:])) > 20  # distinct on screen
        assert ax.get_xscale() == "log"
        labels = [t.get_text() for t in ax.texts]
        assert labels == ["0", "1", "2"]  # each front point carries its trial number
    finally:
        plt.close(fig)


def test_the_legend_hides_no_point():
    """The off1 search's points at 0.02 ms and 0.77-0.83 accuracy sat under the legend, which matplotlib's "best"
    put over them: the budget's shaded span left it no empty corner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from search.plots import ScatterInfo, _draw_scatter

    points = [(0.0057, 0.978), (0.022, 0.772), (0.022, 0.828), (0.022, 0.344), (0.033, 0.417), (0.052, 0.694)]
    info = ScatterInfo("latency_ms_p90", "latency (ms, p90)", [(x, y, True, "") for x, y in points],
                       [(0.0057, 0.978, 5)], 1.0, "measured")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        _draw_scatter(ax, info, "t")
        fig.tight_layout()
        fig.canvas.draw()
        legend = ax.get_legend().get_window_extent()
        assert not any(legend.contains(px, py) for px, py in ax.transData.transform(points))
        assert legend.y1 < ax.get_window_extent().y0  # and not on the axes at all
        assert legend.y0 >= 0  # inside the picture
    finally:
        plt.close(fig)


def test_front_step_line_holds_only_points_this_view_shows_as_better():
    from search.plots import staircase

    # trial 8 is on the four-objective front (smallest) but beaten here by trial 2; 4 ties 5 on latency and loses
    front = [(0.010, 0.97, 2), (0.011, 0.82, 8), (0.005, 0.93, 4), (0.005, 0.95, 5), (0.0186, 0.986, 1)]
    assert staircase(front) == [(0.005, 0.95), (0.010, 0.97), (0.0186, 0.986)]


def test_appending_to_the_front_table_draws_no_download_bar_in_the_report(tmp_path):
    """A resumed search appends its front to the logged table, which MLflow downloads first: with its tqdm bar
    that was a bar in the middle of the search's report. Run as the driver runs, in a process of its own."""
    import os
    import subprocess
    import sys

    def append_twice(quiet: bool) -> str:
        script = ("import search.tracking\n" if quiet else "") + (
            "from mlflow.tracking import MlflowClient\n"
            f"client = MlflowClient('sqlite:///{tmp_path}/{quiet}.db')\n"
            f"run = client.create_run(client.create_experiment('e', artifact_location='{tmp_path}/{quiet}'))\n"
            "for n in (1, 2):\n"
            "    client.log_table(run.info.run_id, {'after_trials': [n]}, 'table.json')\n")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              env={k: v for k, v in os.environ.items()
                                   if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"})
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "Downloading artifacts" in append_twice(quiet=False)  # MLflow's own default, which the test relies on
    assert "Downloading artifacts" not in append_twice(quiet=True)
