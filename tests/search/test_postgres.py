"""Multi-user storage: Optuna studies and the MLflow tracking store on a real PostgreSQL server (Debian's), which
the fixture starts on 127.0.0.1 in a folder of its own and stops afterwards."""

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from search.study import load_study, rows
from tests.search.conftest import complete_trials
from tests.servers import mlflow_server


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found or not found[-1]:
        raise AssertionError(f"PostgreSQL's {name} is missing: `make test` installs Debian's postgresql")
    return found[-1]


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as Debian's postgres user."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="module")
def postgres(free_port):
    """A PostgreSQL server for this module; yields ``url(database)``, a function that creates a database."""
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="edgesearch-pg-"))  # not under pytest's 0700 folders: postgres reads it
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run(_as_postgres([_pg_bin("initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True)
    subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(data / "db"), "-w", "-l", str(data / "log"), "-o",
                                 f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)

    def url(database: str) -> str:
        subprocess.run(_as_postgres([_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                     database]), check=True, capture_output=True)
        return f"postgresql://postgres@127.0.0.1:{port}/{database}"

    try:
        yield url
    finally:
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


RESTARTED = 5  # trials of the search stopped with Ctrl-C and resumed


def _spec(folder: Path, name: str, trials: int) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "trials": trials, "workers": 1, "recipes": False,
        "budget": {"epochs": 3, "finetune_epochs": 0, "prune_steps": 1, "timing_repeats": 3,
                   "front_tuning_minutes": 0},
        "space": {"precision": ["fp32"], "width": [0.25, 0.5], "sparsity": [0.0, 0.0]}}))
    return path


def _asked(storage: str, name: str) -> bool:
    """Whether search ``name``'s driver has asked for a trial: it is stored and marked as driven."""
    try:
        return bool(load_study(name, storage).trials)
    except Exception:  # not stored yet, or its schema is being created: poll again
        return False


def _submit(runs: Path, storage: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search.cli", "--runs-dir", str(runs), "submit", "--storage",
                             storage, "--no-mlflow", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def test_two_searches_at_once_and_a_restarted_driver_on_postgresql(postgres, tmp_path, capsys):
    """Two users' searches share one PostgreSQL database at the same time; one driver is stopped with Ctrl-C and
    resumed."""
    from search.cli import main

    storage = postgres("optuna")
    steady = _submit(tmp_path / "a", storage, "--spec", str(_spec(tmp_path, "steady", 1)))
    # five candidates on one worker, stopped as soon as the first has finished: four are still to go (with three, a
    # loaded machine finished them all between the first and the Ctrl-C)
    stopped = _submit(tmp_path / "b", storage, "--spec", str(_spec(tmp_path, "restarted", RESTARTED)),
                      start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 300
        while not _asked(storage, "restarted") and time.time() < deadline:
            time.sleep(0.2)
        # a second driver for it is refused while its own runs: it would re-queue the trials running under it
        capsys.readouterr()
        assert main(["--runs-dir", str(tmp_path / "b"), "submit", "--name", "restarted", "--resume", "--storage",
                     storage, "--no-mlflow"]) == 2
        assert f"Search 'restarted' is still running (driver process {stopped.pid} on " in capsys.readouterr().err
        while len(complete_trials(storage, "restarted")) < 1 and time.time() < deadline:
            time.sleep(0.2)
        assert complete_trials(storage, "restarted"), "the second search finished no trial in 300 s"
        stopped.send_signal(signal.SIGINT)  # as a terminal sends it
        _, said = stopped.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stopped.pid, signal.SIGKILL)  # whatever of the driver and its Ray cluster is left
        stopped.wait()
    before = {t.number: t.values for t in complete_trials(storage, "restarted")}
    assert stopped.returncode == 130 and 1 <= len(before) < RESTARTED, said[-2000:]
    assert (f"search 'restarted' interrupted before its trial budget ({len(before)} of {RESTARTED}): {len(before)} "
            f"finished trial(s) are kept in {storage}; continue it (the trials it was running start again) "
            "with: ") in said
    assert f"submit --name restarted --resume --storage '{storage}' --no-mlflow" in said
    # what the stopped driver was running is queued again at once: `status` does not call it running
    assert not load_study("restarted", storage).get_trials(states=(optuna.trial.TrialState.RUNNING,))
    capsys.readouterr()
    assert main(["--runs-dir", str(tmp_path / "b"), "status", "restarted", "--storage", storage]) == 0
    status = capsys.readouterr().out
    assert (f"0 running; a candidate screened out costs nothing, one stopped by halving a third); stopped: before "
            f"its trial budget ({len(before)} of {RESTARTED}); continue it with: ") in status
    assert f"submit --name restarted --resume --storage '{storage}' --no-mlflow" in status
    # a resume that would change what the finished trials mean is refused, and changes nothing
    refused = _submit(tmp_path / "b", storage, "--name", "restarted", "--resume", "--latency-budget-ms", "5")
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2 and "--latency-budget-ms would change what its finished trials mean" in err
    assert {t.number: t.values for t in complete_trials(storage, "restarted")} == before
    resumed = _submit(tmp_path / "b", storage, "--name", "restarted", "--resume")
    for proc in (steady, resumed):
        out, err = proc.communicate(timeout=600)
        if proc is resumed:
            resumed_out = out
        assert proc.returncode == 0, err[-2000:]
        assert "feasible Pareto front" in out
        # the next step names the storage, which is not the runs folder's default
        assert f"export {'steady' if proc is steady else 'restarted'} --storage '{storage}' --no-mlflow" in out
    steady_rows = rows(load_study("steady", storage))
    assert len(steady_rows) == 1 and all(r.state == "COMPLETE" for r in steady_rows)
    study = load_study("restarted", storage)
    complete = {t.number: t.values for t in study.trials if t.state.name == "COMPLETE"}
    assert all(complete[n] == v for n, v in before.items())  # finished before the kill: kept, not re-run
    counted = [r for r in rows(study) if not r.interrupted]
    assert len(counted) == RESTARTED
    interrupted = len(rows(study)) - len(counted)  # one worker: the candidate it was training when stopped, if any
    assert ("interrupted by a stopped driver" in resumed_out) == bool(interrupted)
    assert {s.study_name for s in optuna.get_all_study_summaries(storage)} == {"steady", "restarted"}
    capsys.readouterr()
    assert main(["--runs-dir", str(tmp_path), "list", "--storage", storage]) == 0
    listed = {line.split()[0]: line.split()[1:3] for line in capsys.readouterr().out.splitlines()[1:]}
    assert listed == {"steady": ["1/1", "done"], "restarted": [f"{RESTARTED}/{RESTARTED}", "done"]}
    # deleted from the shared database, the other search stays
    assert main(["--runs-dir", str(tmp_path / "b"), "delete", "steady", "--yes", "--storage", storage]) == 0
    assert f"deleted search 'steady': 1 trial(s) from {storage}" in capsys.readouterr().out
    assert {s.study_name for s in optuna.get_all_study_summaries(storage)} == {"restarted"}


@pytest.mark.slow  # PostgreSQL runs by default through the two-searches test; MLflow's server through the tracking tests
def test_an_mlflow_tracking_server_on_postgresql_holds_every_candidate(postgres, free_port, tmp_path):
    from mlflow.tracking import MlflowClient

    from search.spec import SearchSpace, SearchSpec
    from search.workers import run_search
    from tests.search.conftest import TINY

    with mlflow_server(postgres("mlflow"), tmp_path / "artifacts", free_port()) as uri:
        storage = postgres("optuna_tracked")
        spec = SearchSpec(name="tracked-pg", trials=2, workers=1, budget=TINY, recipes=False,
                          space=SearchSpace(precision=("fp32",), width=(0.25, 0.5), sparsity=(0.0, 0.0)))
        outcome = run_search(spec, tmp_path, storage_url=storage, report=lambda line: None, tracking_uri=uri)
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("tracked-pg")
        children = {int(r.data.tags["edgesearch.trial"]): r for r in client.search_runs([experiment.experiment_id])
                    if "edgesearch.trial" in r.data.tags}
        assert sorted(children) == [r.number for r in outcome.rows]
        for r in outcome.rows:
            if r.state == "COMPLETE":
                assert children[r.number].data.metrics["accuracy"] == r.value("accuracy")
                # the graph went through the server to its artifact store, not a path on this machine
                assert "model/model.onnx" in {a.path for a in client.list_artifacts(children[r.number].info.run_id,
                                                                                     "model")}


def _backends(storage: str, database: str) -> list[int]:
    """The server processes of the client connections to ``database``, seen from a connection of its own."""
    import psycopg

    with psycopg.connect(storage.rsplit("/", 1)[0] + "/postgres") as admin:
        return [pid for (pid,) in admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))]


def test_a_process_that_looks_searches_up_again_and_again_leaves_the_server_connections(postgres):
    """A notebook or a poll looks a search up hundreds of times: every lookup used to open a pool of its own, whose
    connection stayed open until garbage collection ran, until PostgreSQL refused every user ("too many clients")."""
    import gc

    from search.errors import SearchNotFoundError

    storage = postgres("lookups")
    gc.disable()  # as in a busy process, where collection runs seldom
    try:
        for _ in range(150):  # more than the server's 100 connections
            with pytest.raises(SearchNotFoundError, match="No search named 'nothing'"):
                load_study("nothing", storage)
    finally:
        gc.enable()
    assert len(_backends(storage, "lookups")) <= 2
    # the server drops them (a restart, an idle timeout): the next lookup connects again
    import psycopg

    with psycopg.connect(storage.rsplit("/", 1)[0] + "/postgres") as admin:
        for pid in _backends(storage, "lookups"):
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(SearchNotFoundError, match="No search named 'nothing'"):
        load_study("nothing", storage)


def test_a_storage_password_is_not_printed(capsys, tmp_path):
    from search.cli import main
    from search.study import shown_url

    assert shown_url("postgresql://edge:s3cret@db.example:5432/optuna") == "postgresql://edge:***@db.example:5432/optuna"
    assert shown_url("sqlite:////tmp/runs/optuna.db") == "sqlite:////tmp/runs/optuna.db"
    # a database that refuses the connection (nothing listens on port 1): one line, exit 2, no password
    for command in (["list"], ["status", "any"]):
        assert main(["--runs-dir", str(tmp_path), *command, "--storage", "postgresql://edge:s3cret@127.0.0.1:1/x"]) == 2
        err = capsys.readouterr().err
        assert "Cannot open the Optuna storage 'postgresql://edge:***@127.0.0.1:1/x'" in err
        assert "s3cret" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # a file's path where a URL belongs: the URL to pass instead
    assert main(["--runs-dir", str(tmp_path), "list", "--storage", "mine.db"]) == 2
    assert f"is not a database URL: pass sqlite:///{Path.cwd() / 'mine.db'} for a file" in capsys.readouterr().err


def test_a_tracking_password_is_not_printed(monkeypatch):
    from search.errors import ConfigError
    from search.tracking import check_tracking

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # nothing listens on port 1: refused at once
    with pytest.raises(ConfigError) as refused:
        check_tracking("http://edge:s3cret@127.0.0.1:1")
    assert str(refused.value).startswith("Cannot reach the MLflow tracking store at http://edge:***@127.0.0.1:1: ")
    assert "s3cret" not in str(refused.value) and "127.0.0.1:1/api/" in str(refused.value)
