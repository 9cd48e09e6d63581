"""Service mode: the Ray cluster is the service, and a client needs only its job API (the dashboard's URL).

A search goes to the cluster by value: the spec, and a user's dataset or profile file, travel in the job's
working folder, which Ray uploads; the driver runs from the edgesearch installed on the cluster, in the cluster's
runs folder. ``status`` and ``export`` run as short jobs beside it, and an export comes back through the MLflow
tracking server; ``logs`` and ``stop`` ask Ray. Jobs are found by the search's name in their metadata, so any
client that reaches the dashboard can follow any search; nothing is read from the client's disk but its own
inputs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from search.errors import ConfigError, EdgeSearchError, SearchNotFoundError, ray_token_advice
from search.spec import SearchSpec, input_files, search_folder

# the shell on the cluster expands this: the nodes' $EDGESEARCH_RUNS, else a folder in the job user's home
CLUSTER_RUNS = "${EDGESEARCH_RUNS:-$HOME/edgesearch-runs}"
_KEY = "edgesearch_search"
IN_JOB = "EDGESEARCH_IN_JOB"  # set for commands that run as jobs: their stores are where they run
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
_RAY_LINE = re.compile(r"Running entrypoint for job |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\t[A-Z]+ \S+\.py:\d+ -- ")


def _job_file(runs_dir: Path, name: str) -> Path:
    return search_folder(runs_dir, name) / "job.json"


def _client(address: str):
    import logging

    from ray.job_submission import JobSubmissionClient

    for name in ("ray", "ray.dashboard.modules.dashboard_sdk"):  # not a line per upload step on the terminal
        logging.getLogger(name).setLevel(logging.WARNING)

    if not address or not address.startswith(("http://", "https://")):
        raise ConfigError(f"A detached search needs --address with the cluster's dashboard URL (e.g. "
                          f"http://127.0.0.1:8265); got {address!r}.")
    try:
        return JobSubmissionClient(address)
    except Exception as exc:
        if advice := ray_token_advice(f"The Ray job service at {address}", exc):
            raise ConfigError(advice) from exc
        raise ConfigError(f"Cannot reach the Ray job service at {address}: {type(exc).__name__}: {exc}") from exc


# a cluster started from a shell without edgesearch's environment runs jobs with a python that lacks it: said as
# an error line of ours ("No module named 'search'" from `python -m` named neither edgesearch nor what to do)
_INSTALLED = ("python -c 'import search.cli' 2>/dev/null || { echo \"edgesearch: error: The cluster's python "
              "($(command -v python)) does not have edgesearch installed. Start the Ray nodes from the environment "
              "'make setup' made (its .venv/bin first on the PATH, e.g. after 'source .venv/bin/activate'), or "
              "install edgesearch into that python.\"; exit 2; }")


def _entrypoint(runs_dir: str, argv: list[str], in_runs: bool = False) -> str:
    """The job's shell command; ``in_runs`` runs it in the runs folder, where relative paths then land."""
    runs = shlex.quote(runs_dir) if runs_dir else f'"{CLUSTER_RUNS}"'
    cd = f"mkdir -p {runs} && cd {runs} && " if in_runs else ""
    return f"{_INSTALLED} && {cd}{IN_JOB}=1 python -m search.cli --runs-dir {runs} {shlex.join(argv)}"


def _error_line(logs: str) -> str | None:
    """The message of the last ``edgesearch: error:`` line a job printed, if any."""
    said = [line for line in logs.splitlines() if line.startswith("edgesearch: error: ")]
    return said[-1].removeprefix("edgesearch: error: ") if said else None


STARTED_LINE = "dataset "  # a search's first line once its inputs are read and its checks passed


def wait_started(address: str, job_id: str, timeout_s: float = 90.0) -> None:
    """Follow a submitted search until it has started (its first line) or failed: a search refused at once on the
    cluster (no edgesearch there, a name taken, inputs it cannot read) is said by `submit`, not by a later `status`."""
    client = _client(address)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id) if status != "PENDING" else ""
        if status in _TERMINAL and status != "SUCCEEDED":
            said = _error_line(logs)
            raise EdgeSearchError(f"The search failed on the cluster (Ray job {job_id}): " + (
                said or "\n" + "\n".join(logs.splitlines()[-20:])))
        if status in _TERMINAL or any(line.startswith(STARTED_LINE) for line in logs.splitlines()):
            return
        time.sleep(0.5)


def _stores(meta: dict[str, str], tracking: bool = True) -> list[str]:
    """The options that point a command on the cluster at the search's own Optuna and MLflow stores."""
    argv = ["--storage", meta["edgesearch_storage"]] if meta.get("edgesearch_storage") else []
    if not tracking:
        return argv
    uri = meta.get("edgesearch_tracking_uri", "")
    return argv + (["--no-mlflow"] if uri == "none" else ["--tracking-uri", uri] if uri else [])


def _payload(spec: SearchSpec) -> Path:
    """A folder with the spec and the input files it names, which Ray uploads as the job's working folder."""
    folder = Path(tempfile.mkdtemp(prefix="edgesearch-job-"))
    data = spec.to_dict()
    for field, path in input_files(spec).items():
        if not path.is_file():
            raise ConfigError(f"The search's {field} file {str(path)!r} does not exist on this machine.")
        (folder / "inputs").mkdir(exist_ok=True)
        shutil.copyfile(path, folder / "inputs" / f"{field}{path.suffix}")
        data[field] = f"inputs/{field}{path.suffix}"
    (folder / "spec.json").write_text(json.dumps(data, indent=2))
    return folder


def submit_job(address: str, name: str, *, spec: SearchSpec | None = None, trials: int | None = None,
               runs_dir: str = "", storage: str = "", tracking_uri: str = "", client_runs: Path | None = None) -> str:
    """Submit a new search (``spec``) or the resumption of search ``name``; returns the Ray job id.

    ``runs_dir``, ``storage`` and ``tracking_uri`` are as seen from the cluster ("" = the cluster's defaults;
    ``tracking_uri`` "none" = no MLflow). A resumption reuses those of the search's last job unless given.
    """
    client = _client(address)
    jobs = searches_on_cluster(address)
    last = jobs.get(name)
    if last is not None and str(last.status.value) in ("PENDING", "RUNNING"):
        raise ConfigError(f"Search {name!r} is already {last.status.value.lower()} on the cluster at {address} "
                          f"(Ray job {last.submission_id}): follow it with 'edgesearch status {name}', or stop it "
                          "first.")
    runtime_env = None
    if spec is not None:
        payload = _payload(spec)
        runtime_env = {"working_dir": str(payload)}
        argv = ["submit", "--spec", "spec.json", "--keep-inputs"]
    else:
        last = find_job(address, name, jobs).metadata
        runs_dir = runs_dir or last.get("edgesearch_runs_dir", "")
        storage = storage or last.get("edgesearch_storage", "")
        tracking_uri = tracking_uri or last.get("edgesearch_tracking_uri", "")
        argv = ["submit", "--name", name, "--resume", *(["--trials", str(trials)] if trials is not None else [])]
    meta = {_KEY: name, "edgesearch_command": "submit", "edgesearch_runs_dir": runs_dir,
            "edgesearch_storage": storage, "edgesearch_tracking_uri": tracking_uri}
    try:
        job_id = _submit(client, entrypoint=_entrypoint(runs_dir, argv + ["--address", "auto", *_stores(meta)]),
                         runtime_env=runtime_env, metadata=meta)
    except Exception as exc:  # an upload over Ray's size limit, say: said in one line, not a traceback
        raise EdgeSearchError(f"The cluster at {address} refused the search: {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:500]}") from exc
    finally:
        if runtime_env:
            shutil.rmtree(runtime_env["working_dir"], ignore_errors=True)
    if client_runs is not None:  # this client's memory of where the search went, so --address can be left out
        _job_file(client_runs, name).parent.mkdir(parents=True, exist_ok=True)
        _job_file(client_runs, name).write_text(json.dumps({"job_id": job_id, "address": address}))
    return job_id


def remembered_address(runs_dir: Path, name: str) -> str | None:
    """The cluster this client submitted search ``name`` to, if it did (never within a job: it is there). One that
    no longer answers is said with where it was remembered and the ways on."""
    path = _job_file(runs_dir, name)
    if os.environ.get(IN_JOB) or not path.is_file():
        return None
    address = json.loads(path.read_text())["address"]
    try:
        _client(address)
    except ConfigError as exc:
        raise ConfigError(f"{str(exc).rstrip('.')}. Search {name!r} was submitted to that cluster from here "
                          f"({path}): start it again, pass --address with where it runs now, or --storage (and "
                          "--tracking-uri) with the search's stores to read them directly.") from exc
    return address


def searches_on_cluster(address: str) -> dict:
    """Each search submitted to the cluster, with its newest job, oldest search first."""
    newest = {}
    for job in _client(address).list_jobs():
        meta = job.metadata or {}
        if meta.get("edgesearch_command") == "submit" and meta.get(_KEY):
            seen = newest.get(meta[_KEY])
            if seen is None or (job.start_time or 0) > (seen.start_time or 0):
                newest[meta[_KEY]] = job
    return dict(sorted(newest.items(), key=lambda item: item[1].start_time or 0))


def find_job(address: str, name: str, jobs: dict | None = None):
    """The newest job that ran search ``name`` (its first run or a resumption), among ``jobs`` (as
    ``searches_on_cluster`` gives them) when the caller has listed them already."""
    job = (searches_on_cluster(address) if jobs is None else jobs).get(name)
    if job is None:
        raise SearchNotFoundError(f"No search named {name!r} was submitted to the cluster at {address}.")
    return job


def job_logs(address: str, name: str) -> str:
    return _client(address).get_job_logs(find_job(address, name).submission_id)


def stop_job(address: str, name: str) -> bool:
    return bool(_client(address).stop_job(find_job(address, name).submission_id))


def _submit(client, wait_s: float = 60.0, **job) -> str:
    """Submit a job; a cluster whose job agent is still starting (a head just started: "No available agent to
    submit job") is asked again for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _run_beside(address: str, search_job, argv: list[str], timeout_s: float, in_runs: bool = False) -> str:
    """Run an edgesearch command as a job on the cluster, in the runs folder of the search that ``search_job``
    ran; its output. A command that failed there raises its own message (an ``EdgeSearchError``) or its log's tail.
    """
    client = _client(address)
    meta = search_job.metadata
    job_id = _submit(client, entrypoint=_entrypoint(meta.get("edgesearch_runs_dir", ""), argv, in_runs),
                     metadata={_KEY: meta[_KEY], "edgesearch_command": argv[0]})
    deadline = time.monotonic() + timeout_s
    while (status := str(client.get_job_status(job_id).value)) not in _TERMINAL:
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise EdgeSearchError(f"'{argv[0]}' did not finish on the cluster within {timeout_s:g} s (Ray job "
                                  f"{job_id}, stopped).")
        time.sleep(0.5)
    logs = client.get_job_logs(job_id)
    if status != "SUCCEEDED":
        raise EdgeSearchError(_error_line(logs) or
                              f"'{argv[0]}' {status.lower()} on the cluster (Ray job {job_id}):\n{logs[-2000:]}")
    return "\n".join(line for line in logs.splitlines() if not _RAY_LINE.match(line))


def status_on_cluster(address: str, search_job) -> str:
    """What ``edgesearch status`` prints for the search that ``search_job`` (``find_job``) ran, run there."""
    return _run_beside(address, search_job, ["status", search_job.metadata[_KEY], *_stores(search_job.metadata)],
                       timeout_s=300)


def export_on_cluster(address: str, name: str, out: Path, options: list[str], *, tracking_uri: str | None = None,
                      overwrite: bool = False) -> dict:
    """Export on the cluster (where the trial's files and tuning records are), then download the export from the
    MLflow tracking server into ``out``, checking every file against the model card's hashes; the card."""
    from search.export import prepare_dir

    job = find_job(address, name)
    meta = job.metadata
    searched_with = meta.get("edgesearch_tracking_uri", "")
    if not searched_with.startswith(("http://", "https://")):
        raise ConfigError(f"Search {name!r} logs to {searched_with or 'the cluster’s local MLflow store'}, which "
                          "this machine cannot read: an export comes back through an MLflow tracking server. Submit "
                          "the search with --tracking-uri http://HOST:5000 (an `mlflow server` with "
                          "--artifacts-destination), or run export on the cluster.")
    out = prepare_dir(out, overwrite)
    there = f"exports/{name}-{uuid.uuid4().hex[:12]}"  # in the cluster's runs folder, kept there
    _run_beside(address, job, ["export", "--search", name, "--out", there, *options, *_stores(meta)],
                timeout_s=1800, in_runs=True)
    return _download_export(tracking_uri or searched_with, name, there, out)


def _download_export(tracking_uri: str, name: str, there: str, out: Path) -> dict:
    import mlflow
    from mlflow.tracking import MlflowClient

    from search.export import registered_model_name, sha256
    from search.study import shown_url

    versions = [v for v in MlflowClient(tracking_uri, registry_uri=tracking_uri).search_model_versions(
        f"name='{registered_model_name(name)}'") if (v.tags or {}).get("exported_to", "").endswith(there)]
    if not versions:
        raise EdgeSearchError(f"The export of {name!r} finished on the cluster but is not registered in "
                              f"{shown_url(tracking_uri)}.")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a few small files
    with tempfile.TemporaryDirectory(prefix="edgesearch-export-") as tmp:
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=versions[0].source, dst_path=tmp,
                                                       tracking_uri=tracking_uri))
        card = json.loads((got / "model_card.json").read_text())
        for rel, digest in card["artifacts"].items():
            if not (got / rel).is_file() or sha256(got / rel) != digest:
                raise EdgeSearchError(f"{rel} of the export downloaded from {shown_url(tracking_uri)} does not "
                                      "match the model card's hash.")
        for path in got.iterdir():
            shutil.move(str(path), out / path.name)
    return card
