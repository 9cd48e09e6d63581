"""A real MLflow server killed mid-search and restarted: nothing is missing at the end."""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from search.candidate import Budget
from search.spec import SearchSpace, SearchSpec
from search.study import default_storage, load_study, rows
from search.cli import main
from search.tracking import PARENT_ATTR, TRACKING_URI_ATTR, answers, sync_search
from tests.servers import start_mlflow_server
from search.workers import run_search


def _start(store: Path, port: int) -> subprocess.Popen:
    return start_mlflow_server(f"sqlite:///{store / 'mlflow.db'}", store / "artifacts", port)


def _stop(proc: subprocess.Popen, how: signal.Signals = signal.SIGTERM) -> None:
    os.killpg(proc.pid, how)
    proc.wait(timeout=60)


def test_server_down_mid_search_loses_no_metric(tmp_path, free_port, monkeypatch, capsys):
    # a request to a server that is down fails at once, not after retries: what fails is logged by a later sync
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    store = tmp_path / "mlflow"
    store.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start(store, port)
    # no distillation, so no teacher to train: the test is about what reaches MLflow, not what the trials cost
    spec = SearchSpec(name="flaky", trials=2, workers=1, recipes=False,
                      budget=Budget(epochs=2, finetune_epochs=0, prune_steps=1, timing_repeats=3,
                                    front_tuning_trials=0),
                      space=SearchSpace(precision=("fp32", "int8-ptq"), width=(0.25, 0.5), sparsity=(0.0, 0.0),
                                        temperature=(1.0, 1.0), alpha=(1.0, 1.0)))
    lines, result = [], {}

    def search() -> None:
        try:
            result["outcome"] = run_search(spec, tmp_path, storage_url=default_storage(tmp_path), tracking_uri=uri,
                                           report=lines.append)
        except BaseException as exc:  # shown by the assertion below, not only as a thread's warning
            result["error"] = exc

    worker = threading.Thread(target=search)
    worker.start()
    deadline = time.time() + 240
    while not any(line.startswith("[1/2]") for line in lines) and worker.is_alive() and time.time() < deadline:
        time.sleep(0.5)
    _stop(server, signal.SIGKILL)  # down at once (a graceful stop takes seconds) while trial 2 finishes
    while not any("MLflow logging failed" in line for line in lines) and worker.is_alive() and time.time() < deadline:
        time.sleep(0.5)
    server = _start(store, port)  # back while the search goes on, or after it ended
    try:
        worker.join(timeout=600)
        assert "outcome" in result, result.get("error", "the search did not end in 600 s")
        assert any("MLflow logging failed" in line for line in lines)
        study = load_study("flaky", default_storage(tmp_path))
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("flaky")
        # A run the outage cut off mid-logging is left RUNNING; sync deletes it and logs its trial again.
        logged = [r for r in client.search_runs([exp.experiment_id])
                  if "mlflow.parentRunId" in r.data.tags and r.info.status != "RUNNING"]
        # On a busy machine the search can end before the server is back: what it could not log, sync logs now.
        assert sync_search(study, spec, uri, tmp_path) == len(study.trials) - len(logged)
        parent = study.user_attrs[PARENT_ATTR]
        drawn = len(client.get_metric_history(parent, "hypervolume"))  # one entry per front update
        assert sync_search(study, spec, uri, tmp_path) == 0
        # nothing changed since: the front is not drawn and logged again, and the search's run is closed as before
        assert len(client.get_metric_history(parent, "hypervolume")) == drawn
        assert client.get_run(parent).info.status == "FINISHED"
        exp = client.get_experiment_by_name("flaky")
        children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
        assert sorted(int(r.data.tags["edgesearch.trial"]) for r in children) == [t.number for t in study.trials]
        final = {r.number: r for r in rows(study)}  # the stored figures, the shipping stage's where it ran
        for run in children:
            trial = study.trials[int(run.data.tags["edgesearch.trial"])]
            stored = {k.split(":", 1)[1]: final[trial.number].value(k.split(":", 1)[1])
                      for k in trial.user_attrs if k.startswith("metric:")}
            assert stored and all(run.data.metrics[k] == v for k, v in stored.items())
        # the search remembers its tracking server: sync, status and export find its runs without --tracking-uri
        assert study.user_attrs[TRACKING_URI_ATTR] == uri
        assert answers(uri) and not answers(f"http://127.0.0.1:{free_port()}")  # status skips a server that is down
        assert main(["--runs-dir", str(tmp_path), "sync", "flaky"]) == 0
        assert f"MLflow {uri} already held every finished trial" in capsys.readouterr().out
        # and a store that does not hold its runs is one line naming the one that does, not a traceback
        other = f"sqlite:///{tmp_path / 'other.db'}"
        assert main(["--runs-dir", str(tmp_path), "sync", "flaky", "--tracking-uri", other]) == 2
        assert capsys.readouterr().err.strip().endswith(f"which {other} does not hold: pass --tracking-uri {uri}.")
        # an export whose tracking server is down says so, and how to export without it, before writing anything
        down = f"http://127.0.0.1:{free_port()}"
        assert main(["--runs-dir", str(tmp_path), "export", "--search", "flaky", "--tracking-uri", down,
                     "--out", str(tmp_path / "out")]) == 2
        assert "pass another --tracking-uri (or --no-mlflow: export without registering the model); nothing was " \
               "run." in capsys.readouterr().err and not (tmp_path / "out").exists()
        # and the report stays the search's own: MLflow's link lines for each run it ends are not printed
        assert "View run" in _end_a_run(uri, quiet=False)  # MLflow's default, which this relies on
        assert _end_a_run(uri, quiet=True) == ""
        # deleted through the server it remembers: the experiment's name is free there again
        experiment = client.get_experiment_by_name("flaky").experiment_id
        assert main(["--runs-dir", str(tmp_path), "delete", "flaky", "--yes"]) == 0
        assert "its MLflow experiment, renamed 'flaky.deleted-" in capsys.readouterr().out
        assert client.get_experiment_by_name("flaky") is None
        assert client.get_experiment(experiment).lifecycle_stage == "deleted"
    finally:
        _stop(server)


def _end_a_run(uri: str, quiet: bool) -> str:
    """What a process that creates and ends a run on the tracking server prints, with edgesearch's tracking module
    imported (``quiet``) or not."""
    import sys

    script = ("import search.tracking\n" if quiet else "") + (
        "from mlflow.tracking import MlflowClient\n"
        f"client = MlflowClient('{uri}')\n"
        "run = client.create_run(client.get_experiment_by_name('flaky').experiment_id)\n"
        "client.set_terminated(run.info.run_id)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"})
    assert done.returncode == 0, done.stderr
    return done.stdout
