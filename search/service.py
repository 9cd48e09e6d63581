"""Service mode: a search submitted as a Ray Job; the Ray cluster is the service.

``submit_job`` hands the search to Ray's job submission API and remembers the
job id next to the search's outputs, so ``status``, ``logs`` and ``stop`` can
find it by the search's name.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from search.errors import ConfigError, SearchNotFoundError
from search.spec import SearchSpec


def _job_file(runs_dir: Path, name: str) -> Path:
    return Path(runs_dir) / "searches" / name / "job.json"


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    if not address or not address.startswith(("http://", "https://")):
        raise ConfigError(f"--detach needs --address with the cluster's dashboard URL (e.g. http://127.0.0.1:8265); "
                          f"got {address!r}.")
    try:
        return JobSubmissionClient(address)
    except Exception as exc:
        raise ConfigError(f"Cannot reach the Ray job service at {address}: {type(exc).__name__}: {exc}") from exc


def submit_job(spec: SearchSpec, address: str, *, storage: str, runs_dir: Path, resume: bool = False) -> str:
    client = _client(address)
    runs_dir = Path(runs_dir).resolve()
    folder = runs_dir / "searches" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec.to_dict(), indent=2))
    argv = [sys.executable, "-m", "search.cli", "--runs-dir", str(runs_dir), "submit", "--spec", str(spec_path),
            "--storage", storage, "--address", "auto"]
    if resume:
        argv.append("--resume")
    job_id = client.submit_job(entrypoint=shlex.join(argv), metadata={"edgesearch_search": spec.name})
    _job_file(runs_dir, spec.name).write_text(json.dumps({"job_id": job_id, "address": address}))
    return job_id


def _job(runs_dir: Path, name: str) -> dict:
    path = _job_file(runs_dir, name)
    if not path.is_file():
        raise SearchNotFoundError(f"Search {name!r} was not submitted as a Ray job from {runs_dir} "
                                  "(no job record); use 'edgesearch status' for searches run in the foreground.")
    return json.loads(path.read_text())


def job_status(runs_dir: Path, name: str) -> dict | None:
    """The job's id, address and Ray status, or None if the search did not run as a job."""
    if not _job_file(runs_dir, name).is_file():
        return None
    job = _job(runs_dir, name)
    try:
        status = str(_client(job["address"]).get_job_status(job["job_id"]).value)
    except Exception as exc:
        status = f"unknown (cluster unreachable: {type(exc).__name__})"
    return {**job, "status": status}


def job_logs(runs_dir: Path, name: str) -> str:
    job = _job(runs_dir, name)
    return _client(job["address"]).get_job_logs(job["job_id"])


def stop_job(runs_dir: Path, name: str) -> bool:
    job = _job(runs_dir, name)
    return bool(_client(job["address"]).stop_job(job["job_id"]))
