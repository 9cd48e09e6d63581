"""Fixtures of the search tests: one real tracked search, shared by the MLflow and UI tests."""

import dataclasses

import pytest

from search.candidate import Budget
from search.spec import SearchSpace, SearchSpec
from search.study import default_storage, load_study
from search.tracking import default_tracking_uri
from search.workers import run_search, start_ray

# no shipping stage: the searches below test other things; SHIP adds the stage's runtime comparison, without
# tuning, and a cap that every candidate after the first starts past: each is compared all the same
TINY = Budget(epochs=2, finetune_epochs=1, prune_steps=1, tuning_trials=0, timing_repeats=5, front_tuning_trials=0,
              front_tuning_minutes=0, teacher_epochs=2)
SHIP = dataclasses.replace(TINY, front_tuning_minutes=0.001)
# the values the digits loader gives a model, as a model card and main.cc must say them for a device to feed
DIGITS_VALUES = "scikit-learn's pixel counts (0 to 16) divided by 16; the training data spans 0 to 1"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """One local Ray cluster, started as a search starts its own, serves the in-process searches of the whole run,
    as a notebook's serves its searches: they reuse workers that have imported torch and TVM (a one-trial search
    took 9 s on it, 21 s starting its own). A test marked ``own_ray`` starts or joins one of its own; the searches
    run from the command line start theirs, as ``make run`` does."""
    import ray

    if item.get_closest_marker("own_ray"):
        if ray.is_initialized():
            ray.shutdown()
    elif not ray.is_initialized():
        start_ray(None, workers=2)


def pytest_sessionfinish(session):
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


def complete_trials(storage: str, name: str) -> list:
    """The finished trials of search ``name``, or none while it is not stored yet. The store is opened as the
    searches open it (under a file lock for SQLite): a bare open while a driver creates the schema made that
    driver's own open fail (UNIQUE constraint failed: alembic_version)."""
    try:
        return [t for t in load_study(name, storage).trials if t.state.name == "COMPLETE"]
    except Exception:  # not there yet, or a server database whose schema a search is creating: poll again
        return []


@pytest.fixture(scope="session")
def tracked_search(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    runs = tmp_path_factory.mktemp("tracked")
    spec = SearchSpec(name="tracked", trials=4, workers=2, latency_budget_ms=0.05, budget=SHIP,
                      space=SearchSpace(precision=("fp32", "fp16", "int8-ptq"), width=(0.25, 1.0)))
    uri = default_tracking_uri(runs)
    outcome = run_search(spec, runs, storage_url=default_storage(runs), tracking_uri=uri, report=lambda line: None)
    return spec, outcome, MlflowClient(uri), runs


