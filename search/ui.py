"""Serving the MLflow UI for a runs folder: on the right page, quiet, and gone when it is told to stop.

``edgesearch ui`` starts ``mlflow server`` (with the landing page of ``search.ui_app``) as a child in its own session and stops the whole tree (the server, its
workers, any job runner) on SIGINT, SIGTERM or SIGHUP, so a service manager or a test fixture never leaves a
server listening behind it. Telemetry and MLflow's GenAI job runners are off: this is a local review tool.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from search.errors import ConfigError

QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
             # the server's own import of a module starlette deprecates: a warning a user takes for a fault of theirs
             "PYTHONWARNINGS": "ignore:starlette.middleware.wsgi is deprecated"}
STOP_GRACE_S = 10.0
LANDING_ROUTE = "/edgesearch/open"  # served by search.ui_app inside the MLflow server


def _free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now; a port it may not take at all is an error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as servers bind: a port whose last connections linger in TIME_WAIT is free, a listening one is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ConfigError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from exc
            return False


def port_owner(host: str, port: int) -> str | None:
    """None when ``host:port`` can be bound; else who holds it, as far as this user can tell."""
    if _free(host, port):
        return None
    import psutil

    try:
        if proc := _listener(port):
            return f"process {proc.pid} ({' '.join(proc.cmdline())[:120] or proc.name()})"
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        pass
    return "another process"


def _listener(port: int):
    """The process listening on TCP ``port``, where this user may see it."""
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None


def served_store(port: int) -> tuple[str, int] | None:
    """The tracking store that an ``edgesearch ui`` listening on ``port`` serves (through its MLflow server, or the
    server's worker that holds the port), and that ``edgesearch ui``'s process id; else None."""
    import psutil

    try:
        proc = _listener(port)
        for p in [proc, *proc.parents()] if proc else []:
            command = p.cmdline()
            if "--backend-store-uri" in command and "--app-name" in command and \
                    command[command.index("--app-name") + 1:][:1] == ["edgesearch"]:
                return command[command.index("--backend-store-uri") + 1], p.ppid()
    except (psutil.AccessDenied, psutil.NoSuchProcess, IndexError):
        pass
    return None


def free_port_after(host: str, port: int) -> int | None:
    """The first port above ``port`` that ``host`` can listen on (of the next 100)."""
    return next((p for p in range(port + 1, min(port + 101, 65536)) if _free(host, p)), None)


def stop_tree(pid: int, grace_s: float = STOP_GRACE_S) -> None:
    """Terminate a process and everything it started, then kill what is left after ``grace_s``."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [root, *root.children(recursive=True)]  # taken before any exits, so orphans are not lost
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def landing_paths(tracking_uri: str, search: str | None, parent: str | None = None) -> list[tuple[str, str]]:
    """What to open, as (label, path): the landing page for the runs of the search's experiment (the newest search
    when none is named) in MLflow's model-training view with the review columns, and for the search's summary
    figure; the experiments list when there is no search yet."""
    from mlflow.tracking import MlflowClient

    from search.study import shown_url
    from search.tracking import (SEARCH_TAG, SUMMARY_FILE, VIEW_KEY, VIEW_TAG, deleted_experiment,
                                 review_view_state, search_experiment)

    client = MlflowClient(tracking_uri)
    if search:
        exp = search_experiment(client, search, parent)  # its own run's: renamed in the UI, it is still the search's
        if exp is None:
            raise ConfigError(f"No search named {search!r} in {shown_url(tracking_uri)}; 'edgesearch list' shows "
                              "them.")
        if exp.lifecycle_stage == "deleted":
            raise ConfigError(deleted_experiment(exp, tracking_uri, f"to review it there; 'edgesearch status "
                                                 f"{search}' shows the search from its study."))
    else:
        found = client.search_experiments(filter_string=f"tags.`{SEARCH_TAG}` = 'true'",
                                          order_by=["creation_time DESC"], max_results=1)
        exp = found[0] if found else None
    if exp is None:  # a new runs folder: the experiments list, where a search started next appears
        return [("open (no search has logged here yet: `make run` or `edgesearch submit` starts one; reload then)",
                 "/#/experiments?workflowType=machine_learning")]
    if exp.tags.get(VIEW_TAG) != review_view_state():  # a search logged before the view existed
        client.set_experiment_tag(exp.experiment_id, VIEW_TAG, review_view_state())
    paths = [("open", f"{LANDING_ROUTE}?experiment={exp.experiment_id}&view={VIEW_KEY}")]
    parent = client.search_runs([exp.experiment_id], "tags.`edgesearch.role` = 'search'", max_results=1)
    if parent and any(f.path == SUMMARY_FILE for f in client.list_artifacts(parent[0].info.run_id)):
        paths.append(("summary", f"{LANDING_ROUTE}?experiment={exp.experiment_id}&run={parent[0].info.run_id}"
                                 f"&artifact={SUMMARY_FILE}"))
    return paths


def serve(tracking_uri: str, host: str, port: int, search: str | None = None, say=print,
          parent: str | None = None) -> int:
    """Run the MLflow UI until it exits or a stop signal arrives; returns the server's exit code."""
    from search.study import shown_url

    url = f"http://{host}:{port}"
    owner = port_owner(host, port)
    served = served_store(port) if owner else None
    if served and served[0] == tracking_uri:  # `make ui` again, its first server still up: its links
        landing = landing_paths(tracking_uri, search, parent)
        say(f"MLflow UI for {shown_url(tracking_uri)} is already served at {url} by an edgesearch ui started "
            f"before (process {served[1]}; Ctrl-C where it runs, or kill {served[1]}, stops it)")
        for label, path in landing:
            say(f"{label}: {url}{path}")
        return 0
    if owner:
        free = free_port_after(host, port)
        raise ConfigError(f"Port {port} on {host} is already in use by {owner}; stop it or pass "
                          f"{f'--port {free} (free)' if free else '--port'}.")
    landing = landing_paths(tracking_uri, search, parent)  # an unknown search is refused before anything is said
    say(f"MLflow UI for {shown_url(tracking_uri)} at {url} (Ctrl-C to stop)")
    for label, path in landing:
        say(f"{label}: {url}{path}")
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", tracking_uri,
               "--registry-store-uri", tracking_uri,
               "--host", host, "--port", str(port), "--workers", "1", "--app-name", "edgesearch"]
    server = subprocess.Popen(command, env={**os.environ, **QUIET_ENV}, start_new_session=True)

    def stop(signum, _frame):
        stop_tree(server.pid)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return server.wait()
    finally:
        stop_tree(server.pid)
        for s, handler in previous.items():
            signal.signal(s, handler)
