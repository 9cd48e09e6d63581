"""Deleting a stored search: its trials, its MLflow experiment and the files only it made.

A search's name is taken while its study exists (``submit`` refuses it), so a user who wants to start one afresh
under the same name deletes the old one. What other searches share stays: the teachers, tuning records and
screenings (caches keyed by what made them), and exported folders and registered models (a deployment's).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna

from search.errors import ConfigError
from search.spec import search_folder
from search.study import live_driver, shown_url
from search.tracking import PARENT_ATTR, SEARCH_TAG, TRACKED_ATTR, check_tracking, search_experiment, set_aside


@dataclass
class Deleted:
    """What ``delete_search`` removed, for the command to say."""

    trials: int
    experiment: str | None = None  # the name the MLflow experiment was moved to, in MLflow's deleted state
    folder: Path | None = None
    file_bytes: int = 0


def delete_search(study: optuna.Study, runs_dir: Path, tracking_uri: str | None) -> Deleted:
    """Delete the search of ``study``: its MLflow experiment first (renamed so that the name is free again, then
    deleted as MLflow deletes, which ``mlflow gc`` makes final), then its study, then its folder. A search whose
    driver runs is refused, and an unreachable tracking store stops it before anything is deleted."""
    name = study.study_name
    if mark := live_driver(study):
        raise ConfigError(f"Search {name!r} is running (driver process {mark['pid']} on {mark['host']}); stop it "
                          "(Ctrl-C in its terminal, or edgesearch stop for a detached search) before deleting it; "
                          "nothing was deleted.")
    experiment = None
    # one logged to MLflow once (then resumed with --no-mlflow) has an experiment too, which a new search of the
    # name would be refused for
    if tracking_uri and (study.user_attrs.get(TRACKED_ATTR, True) or PARENT_ATTR in study.user_attrs):
        check_tracking(tracking_uri, " (or --no-mlflow: delete the search and leave its MLflow experiment)",
                       runs_dir)
        experiment = _delete_experiment(tracking_uri, name, study.user_attrs.get(PARENT_ATTR))
    trials = len(study.get_trials(deepcopy=False))
    optuna.delete_study(study_name=name, storage=study._storage)
    folder = search_folder(runs_dir, name)
    if not folder.is_dir():
        return Deleted(trials, experiment)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    shutil.rmtree(folder)
    return Deleted(trials, experiment, folder, size)


def _delete_experiment(uri: str, name: str, parent: str | None) -> str | None:
    """Move the search's experiment out of the way of a new search of the same name, and delete it. An experiment
    of that name that no search made (no ``SEARCH_TAG``) is someone else's: refused."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = search_experiment(client, name, parent)
    if exp is None:
        return None
    if SEARCH_TAG not in exp.tags:
        raise ConfigError(f"The MLflow experiment {name!r} at {shown_url(uri)} was not made by an edgesearch search; "
                          "delete it in MLflow if it should go, or pass --no-mlflow; nothing was deleted.")
    return set_aside(client, exp)
