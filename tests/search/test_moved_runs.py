"""A runs folder moved to another place (another machine) after its search: export, MLflow and resume work there."""

import json
import re
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from search.cli import _keep_inputs, main
from search.spec import SearchSpace, SearchSpec
from search.study import best_within_budget, default_storage, load_study, rows, stored_spec, trial_artifact
from search.tracking import default_tracking_uri
from search.workers import run_search
from tests.search.conftest import TINY


@pytest.fixture(scope="module")
def moved(tmp_path_factory, digits):
    """A search whose dataset was kept in its runs folder (--keep-inputs), then the folder moved elsewhere, the
    original dataset and the old place gone."""
    before = tmp_path_factory.mktemp("searched-here")
    data = before / "data.npz"
    np.savez(data, x_train=digits.x_train, y_train=digits.y_train, x_test=digits.x_test, y_test=digits.y_test)
    runs = before / "runs"
    spec = _keep_inputs(SearchSpec(name="moved", dataset=str(data), trials=2, workers=2, recipes=False, budget=TINY,
                                   space=SearchSpace(precision=("fp32",), width=(0.25, 0.5)),
                                   latency_budget_ms=1000.0), runs)
    assert spec.dataset.startswith(str(runs.resolve()))
    run_search(spec, runs, storage_url=default_storage(runs), tracking_uri=default_tracking_uri(runs),
               report=lambda line: None)
    after = tmp_path_factory.mktemp("copied-there") / "runs"
    shutil.move(str(runs), after)
    shutil.rmtree(before)
    return after, data


def test_an_export_reads_the_moved_folder_and_writes_nothing_where_it_was(moved, tmp_path, capsys):
    runs, data = moved
    study = load_study("moved", default_storage(runs))
    spec = stored_spec(study, runs)
    assert spec.dataset == str(runs.resolve() / "searches" / "moved" / "inputs" / "data.npz")
    trial = next(t for t in study.trials if t.state.name == "COMPLETE")
    assert trial_artifact(trial, "onnx", runs).is_file()
    assert trial_artifact(trial, "onnx", runs).is_relative_to(runs.resolve() / "searches" / "moved")  # its own
    assert not trial_artifact(trial, "onnx").exists()  # as recorded: the folder it was made in
    # listed there with what it found: the best within budget, its p90 latency and that the latency was measured
    assert main(["--runs-dir", str(runs), "list"]) == 0
    best = best_within_budget(rows(study))
    listed = capsys.readouterr().out.splitlines()[1]
    assert listed.split()[:6] == ["moved", "2/2", "done", "host", "1000", "ms"]
    p90 = best.value("latency_ms_p90")
    assert listed.endswith(f"accuracy {best.value('accuracy'):.4f}, p90 {p90:.4g} ms (measured)")

    # in a process of its own, as on the other machine (MLflow caches where each run's files go, per process)
    done = subprocess.run([sys.executable, "-m", "search.cli", "--runs-dir", str(runs), "export", "--search", "moved",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    card = json.loads((tmp_path / "out" / "model_card.json").read_text())
    assert card["verification"]["onnxruntime_test_accuracy"] == card["metrics"]["accuracy_test"]["value"]
    uri = default_tracking_uri(runs)
    assert not data.parent.exists()  # MLflow wrote the export's files beside the store, not in the old folder
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("moved")
    assert experiment.artifact_location == (runs.resolve() / "mlartifacts" / "moved").as_uri()
    run = client.get_run(card["mlflow_run_id"])
    assert run.info.artifact_uri.startswith(experiment.artifact_location + "/")
    # the UI (and any client) finds the files logged before the move: the graph of each trial, the exported card
    assert [f.path for f in client.list_artifacts(run.info.run_id, "model")] == ["model/model.onnx"]
    assert client.download_artifacts(run.info.run_id, "model/model.onnx", str(tmp_path))
    with sqlite3.connect(runs / "mlflow.db") as con:
        old = con.execute("SELECT count(*) FROM runs WHERE artifact_uri LIKE ?", (f"%{data.parent.name}%",))
        assert old.fetchone()[0] == 0


def test_the_same_data_elsewhere_is_taken_and_other_data_refused(moved, tmp_path, capsys):
    runs, _ = moved
    kept = runs / "searches" / "moved" / "inputs" / "data.npz"
    copy = tmp_path / "my-copy.npz"
    shutil.move(kept, copy)
    assert main(["--runs-dir", str(runs), "submit", "--name", "moved", "--resume", "--no-mlflow"]) == 2
    assert "pass its copy on this machine with --dataset PATH" in capsys.readouterr().err
    other = tmp_path / "other.npz"
    with np.load(copy) as arrays:
        np.savez(other, **{**arrays, "y_test": np.roll(arrays["y_test"], 1)})
    assert main(["--runs-dir", str(runs), "submit", "--name", "moved", "--resume", "--no-mlflow",
                 "--dataset", str(other)]) == 2
    assert "is not the data search 'moved' ran on" in capsys.readouterr().err
    export = ["--runs-dir", str(runs), "export", "moved", "--no-mlflow", "--out", str(tmp_path / "out")]
    assert main([*export, "--dataset", str(other)]) == 2
    assert "is not the data search 'moved' ran on" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main([*export, "--dataset", str(copy)]) == 0
    assert main(["--runs-dir", str(runs), "submit", "--name", "moved", "--resume", "--no-mlflow",
                 "--dataset", str(copy)]) == 0
    assert stored_spec(load_study("moved", default_storage(runs))).dataset == str(copy.resolve())


def test_a_host_search_is_not_resumed_on_a_cpu_of_another_kind(moved):
    """Its resumed trials would be timed on this CPU, beside latencies measured on the first: one front, two CPUs."""
    from hardware_targets.host import host_cpu, parse_cpuinfo
    from search.errors import ConfigError
    from search.study import check_same_cpu
    from tests.hardware_targets.test_host import AVX2_EPYC, SAPPHIRE

    runs, _ = moved
    study = load_study("moved", default_storage(runs))
    spec = stored_spec(study, runs)
    check_same_cpu(study, spec, host_cpu())  # where it was searched: goes on
    other = next(cpu for cpu in (parse_cpuinfo(AVX2_EPYC), parse_cpuinfo(SAPPHIRE)) if cpu.key != host_cpu().key)
    with pytest.raises(ConfigError, match=(rf"measured its latencies on .* \(CPU kind {host_cpu().key}\); this machine "
                                           rf"is {re.escape(other.model)} \(CPU kind {other.key}\)")):
        check_same_cpu(study, spec, other)
