"""Shared fixtures: real datasets, real profiles, tiny budgets."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from tests.servers import free_tcp_port

warnings.filterwarnings("ignore")


@pytest.fixture(scope="session")
def free_port():
    """Gives TCP ports on 127.0.0.1 that nothing listens on right now."""
    return free_tcp_port


@pytest.fixture(scope="session")
def digits():
    from search.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def mnist1d():
    from search.data import load_dataset

    return load_dataset("mnist1d")


@pytest.fixture(scope="session")
def host():
    from hardware_targets import load_profile

    return load_profile("host")


@pytest.fixture
def tiny_budget():
    from search.candidate import Budget

    return Budget(epochs=3, finetune_epochs=1, prune_steps=2, tuning_trials=0, timing_repeats=5, teacher_epochs=3)


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory) -> Path:
    """One runs/ folder for the session, so teachers and tuning records are reused across tests."""
    return tmp_path_factory.mktemp("runs")
