"""Deleting a search frees its name: its trials, its MLflow experiment and its own files go; shared caches stay."""

import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search.cli import main
from search.spec import SearchSpace, SearchSpec
from search.study import DRIVER_ATTR, default_storage, load_study
from search.tracking import default_tracking_uri
from search.workers import run_search
from tests.search.conftest import TINY

ONE = SearchSpace(precision=("fp32",), width=(0.25, 0.25), sparsity=(0.0, 0.0))


def _search(runs, name="again", tracked=True):
    spec = SearchSpec(name=name, trials=1, workers=1, recipes=False, budget=TINY, space=ONE, latency_budget_ms=100.0)
    return run_search(spec, runs, storage_url=default_storage(runs),
                      tracking_uri=default_tracking_uri(runs) if tracked else None, report=lambda line: None)


def test_a_deleted_search_frees_its_name_and_keeps_what_others_share(tmp_path, capsys):
    runs = tmp_path / "runs"
    # run with --no-mlflow, then logged by `sync`: in MLflow as any logged search (until 2026-12-06 its delete left
    # the experiment, and a new search of the name was refused until it was deleted in MLflow by hand)
    _search(runs, tracked=False)
    assert main(["--runs-dir", str(runs), "sync", "again"]) == 0
    storage, client = default_storage(runs), MlflowClient(default_tracking_uri(runs))
    (old_run,) = client.search_runs([client.get_experiment_by_name("again").experiment_id],
                                    "tags.`edgesearch.trial` = '0'")
    assert main(["--runs-dir", str(runs), "submit", "--name", "again", "--trials", "1", "--no-mlflow"]) == 2
    assert "already exists" in capsys.readouterr().err
    # without --yes: what would go, and nothing goes
    assert main(["--runs-dir", str(runs), "delete", "again"]) == 2
    said = capsys.readouterr().err
    assert "removes its 1 trial(s)" in said and "pass --yes" in said and str(runs / "searches" / "again") in said
    assert load_study("again", storage).trials
    # a running search is refused, wherever its driver runs
    study = load_study("again", storage)
    study.set_user_attr(DRIVER_ATTR, {"host": "elsewhere", "pid": 1, "seen": time.time()})
    assert main(["--runs-dir", str(runs), "delete", "again", "--yes"]) == 2
    assert "is running (driver process" in capsys.readouterr().err
    study.set_user_attr(DRIVER_ATTR, None)

    assert main(["--runs-dir", str(runs), "delete", "again", "--yes"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("deleted search 'again': 1 trial(s)") and "MiB of its files" in said
    assert "again" not in [s.study_name for s in optuna.get_all_study_summaries(storage)]
    assert not (runs / "searches" / "again").exists()
    assert any((runs / "tuning").iterdir()) or any((runs / "screening").iterdir())  # shared caches stay
    gone = client.get_run(old_run.info.run_id)  # in MLflow's deleted state, under another name
    assert client.get_experiment(gone.info.experiment_id).lifecycle_stage == "deleted"
    assert client.get_experiment(gone.info.experiment_id).name.startswith("again.deleted-")

    # the name starts afresh: a new study and a new experiment, holding only the new search's runs
    _search(runs)
    assert len(load_study("again", storage).trials) == 1
    experiment = client.get_experiment_by_name("again")
    assert experiment.lifecycle_stage == "active" and experiment.experiment_id != gone.info.experiment_id
    assert old_run.info.run_id not in {r.info.run_id for r in client.search_runs([experiment.experiment_id])}

    # its experiment left in MLflow, the name is not taken again into it: the two searches' runs would mix
    assert main(["--runs-dir", str(runs), "delete", "again", "--yes", "--no-mlflow"]) == 0
    assert main(["--runs-dir", str(runs), "submit", "--name", "again", "--trials", "1"]) == 2
    assert "already holds the runs of another search of that name" in capsys.readouterr().err
    assert "again" not in [s.study_name for s in optuna.get_all_study_summaries(storage)]  # nothing was run


def test_an_experiment_no_search_made_is_not_deleted(tmp_path, capsys):
    runs = tmp_path / "runs"
    storage = default_storage(runs)
    runs.mkdir(exist_ok=True)  # default_storage may have made it
    from search.study import create_study

    create_study(SearchSpec(name="mine", trials=1, budget=TINY, space=ONE), storage, resume=False)
    client = MlflowClient(default_tracking_uri(runs))
    client.create_experiment("mine")  # a user's own experiment that happens to share the name
    assert main(["--runs-dir", str(runs), "delete", "mine", "--yes"]) == 2
    assert "was not made by an edgesearch search" in capsys.readouterr().err
    assert load_study("mine", storage) and client.get_experiment_by_name("mine").lifecycle_stage == "active"
    assert main(["--runs-dir", str(runs), "delete", "mine", "--yes", "--no-mlflow"]) == 0
    with pytest.raises(Exception, match="No search named 'mine'"):
        load_study("mine", storage)
    assert client.get_experiment_by_name("mine").lifecycle_stage == "active"


@pytest.mark.slow  # ~18 s; by default the other tests here run a search into its own experiment
def test_a_users_own_experiment_of_the_name_is_not_taken_over(tmp_path, capsys):
    """An experiment of the search's name that another project logs to: the search's runs would mix with its
    runs and its default view change. One made empty by hand (its permissions set on a shared server) is the
    search's to use."""
    from search.tracking import SEARCH_TAG, VIEW_TAG

    runs = tmp_path / "runs"
    runs.mkdir()
    client = MlflowClient(default_tracking_uri(runs))
    theirs = client.create_experiment("theirs")
    client.set_terminated(client.create_run(theirs, run_name="my own training").info.run_id)
    assert main(["--runs-dir", str(runs), "submit", "--name", "theirs", "--trials", "1"]) == 2
    assert "holds runs that edgesearch did not log (another project's)" in capsys.readouterr().err
    assert "theirs" not in [s.study_name for s in optuna.get_all_study_summaries(default_storage(runs))]
    untouched = client.get_experiment(theirs)
    assert VIEW_TAG not in untouched.tags and SEARCH_TAG not in untouched.tags
    assert [r.info.run_name for r in client.search_runs([theirs])] == ["my own training"]

    empty = client.create_experiment("empty")
    _search(runs, "empty")
    adopted = client.get_experiment(empty)
    assert adopted.tags[SEARCH_TAG] == "true" and len(client.search_runs([empty])) == 2  # the search's and trial 0
    assert main(["--runs-dir", str(runs), "delete", "empty", "--yes"]) == 0
    assert client.get_experiment(empty).lifecycle_stage == "deleted"


def test_what_a_user_does_to_a_search_in_the_mlflow_ui_is_kept_or_named(tmp_path, capsys):
    runs = tmp_path / "runs"
    _search(runs, "gone")
    storage, client = default_storage(runs), MlflowClient(default_tracking_uri(runs))
    first = client.get_experiment_by_name("gone").experiment_id
    (parent,) = client.search_runs([first], "tags.`edgesearch.role` = 'search'")
    client.delete_run(parent.info.run_id)  # the UI's delete, of the search's run
    assert main(["--runs-dir", str(runs), "submit", "--name", "gone", "--resume", "--trials", "2"]) == 2
    assert f"mlflow runs restore --run-id {parent.info.run_id}" in capsys.readouterr().err
    client.restore_run(parent.info.run_id)
    client.delete_experiment(first)  # and of its experiment

    # resuming, or reviewing it: told how to restore it, and nothing runs
    assert main(["--runs-dir", str(runs), "submit", "--name", "gone", "--resume", "--trials", "2"]) == 2
    said = capsys.readouterr().err
    assert f"mlflow experiments restore -x {first}" in said and "--no-mlflow" in said
    assert len(load_study("gone", storage).trials) == 1
    assert main(["--runs-dir", str(runs), "ui", "gone", "--port", "0"]) == 2
    assert "was deleted in MLflow" in capsys.readouterr().err

    # the study deleted alone: a new search of the name sets the deleted experiment aside, still deleted
    assert main(["--runs-dir", str(runs), "delete", "gone", "--yes", "--no-mlflow"]) == 0
    _search(runs, "gone")
    old = client.get_experiment(first)
    assert old.lifecycle_stage == "deleted" and old.name.startswith("gone.deleted-")
    second = client.get_experiment_by_name("gone")
    assert second.lifecycle_stage == "active" and second.experiment_id != first

    # renamed in the UI, it is still the search's: a resume logs there, each trial once
    client.rename_experiment(second.experiment_id, "gone-kept")
    assert main(["--runs-dir", str(runs), "submit", "--name", "gone", "--resume", "--trials", "2"]) == 0
    assert "MLflow: experiment 'gone-kept' in" in capsys.readouterr().out
    assert client.get_experiment_by_name("gone") is None
    trials = [r.data.tags.get("edgesearch.trial") for r in client.search_runs([second.experiment_id])]
    assert sorted(t for t in trials if t) == ["0", "1"]

    # deleting a search whose experiment the UI deleted deletes it as well
    client.delete_experiment(second.experiment_id)
    assert main(["--runs-dir", str(runs), "delete", "gone", "--yes"]) == 0
    assert client.get_experiment(second.experiment_id).name.startswith("gone-kept.deleted-")


def test_a_study_of_another_tool_in_a_shared_storage_is_left_alone(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    storage = default_storage(runs)
    theirs = optuna.create_study(study_name="theirs", storage=storage)
    theirs.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)

    assert main(["--runs-dir", str(runs), "list"]) == 0
    assert "not edgesearch's" in capsys.readouterr().out
    for command in (["status", "theirs"], ["export", "--search", "theirs", "--out", str(tmp_path / "x")],
                    ["delete", "theirs", "--yes"], ["submit", "--name", "theirs", "--resume"], ["sync", "theirs"]):
        assert main(["--runs-dir", str(runs), *command]) == 2, command
        err = capsys.readouterr().err
        assert "'theirs'" in err and "was not made by edgesearch" in err and "Traceback" not in err, command
    assert main(["--runs-dir", str(runs), "submit", "--name", "theirs", "--trials", "1"]) == 2
    assert "holds a study 'theirs' of another tool; choose another --name" in capsys.readouterr().err
    kept = optuna.load_study(study_name="theirs", storage=storage)  # untouched: its trials, and no spec written
    assert len(kept.trials) == 2 and kept.user_attrs == {}
