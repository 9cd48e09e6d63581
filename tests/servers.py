"""The servers the tests start: waiting for MLflow and the edgesearch UI to answer; real Ray clusters."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from search.ui import QUIET_ENV
from search.workers import ENVIRON_LOCK

# a node or client that shares only the network with the tests: a private mount namespace needs root and unshare
CAN_SHARE_NOTHING = os.geteuid() == 0 and shutil.which("unshare") is not None


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, proc, timeout: float = 90.0) -> None:
    """Return once ``url``/health answers OK; kill ``proc`` and fail if it does not within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                return
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"the server at {url} did not come up within {timeout:g} s")


def start_mlflow_server(backend_store_uri: str, artifacts: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1 that proxies its artifacts to ``artifacts``, in a process group of its
    own, answering once this returns. Started as `edgesearch ui` starts its server: without MLflow's job runner
    (a Huey consumer of 10 workers that edgesearch never uses), which made a start on a loaded 2-core machine take
    19 s instead of 10 (median of 5 each, NOTES.md)."""
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                               backend_store_uri, "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, **QUIET_ENV})
    wait_until_healthy(f"http://127.0.0.1:{port}", server, timeout=120)
    return server


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path, port: int):
    """A real `mlflow server` (``start_mlflow_server``) while the block runs; yields its URL."""
    server = start_mlflow_server(backend_store_uri, artifacts, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def stop_ray_cluster(temp_dir: str, port: int) -> None:
    """Stop the Ray processes of one cluster: those naming its temp folder or its port (`ray stop` stops all)."""
    import psutil

    def ours(cmdline: str) -> bool:
        return temp_dir in cmdline or f":{port} " in cmdline + " "

    roots = [p for p in psutil.process_iter(["cmdline"]) if ours(" ".join(p.info["cmdline"] or []))]
    procs = {p.pid: p for p in roots}
    for p in roots:  # agents rename themselves (ray::DashboardAgent): find them as children
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    procs = list(procs.values())
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    # the GCS server and the autoscaler monitor outlast SIGTERM by 20 s and more; a test cluster keeps nothing
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        p.kill()


def ray_cluster(free_port, *options, num_cpus: int = 2, python_dir: Path | None = None):
    """A real `ray start --head` cluster with token authentication; stopped when the generator ends (with any node
    that joined it). Its `python` is this one, as a cluster's image has edgesearch, or the one in ``python_dir``."""
    # set up as README's recipe says: idle workers kept, at the driver's priority (search.workers.LOCAL_RAY_CONFIG)
    first = str(python_dir or Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_kill_idle_workers_interval_ms": "0", "RAY_worker_niceness": "0",
           "PATH": os.pathsep.join([first, os.environ.get("PATH", "")])}
    ray_bin = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    # every port its own: two clusters of one test run (a module's and a test's) on Ray's fixed default agent port
    # left the second without a job agent ("No available agent to submit job")
    port, dash, agent = free_port(), free_port(), free_port()
    # its own temp folder, short: Ray's socket paths must fit 107 bytes, and pytest's (more so xdist's) may not
    temp_dir = tempfile.mkdtemp(prefix="esh-")
    try:
        started = subprocess.run([ray_bin, "start", "--head", "--num-cpus", str(num_cpus), "--port", str(port),
                                  "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                                  "--dashboard-agent-listen-port", str(agent),
                                  "--disable-usage-stats", f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1",
                                  *options], env=env, capture_output=True, text=True, timeout=120)
        if started.returncode:
            raise RuntimeError(f"ray start --head failed: {started.stderr[-2000:]}")
    except BaseException:
        stop_ray_cluster(temp_dir, port)  # whatever a failed or timed-out start left running, and its folder
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray" in sys.modules:  # Ray caches the mode when imported: refreshed as Ray does when it turns tokens on
        from ray._raylet import Config

        Config.initialize("")
    try:
        yield {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env, "ray": ray_bin}
    finally:
        stop_ray_cluster(temp_dir, port)  # not `ray stop`, which would stop every Ray cluster on the machine
        shutil.rmtree(temp_dir, ignore_errors=True)
        if old is None:
            with ENVIRON_LOCK:  # a search's MLflow thread may be reading the environment
                os.environ.pop("RAY_AUTH_MODE", None)


def node_sharing_nothing(cluster: dict, private_over: Path, cpus: int, resources: dict) -> Path:
    """`ray start` a node that joins ``cluster`` from its own mount namespace, where a fresh tmpfs hides
    ``private_over``, and another holds its temp folder: the node shares nothing under either with this process.
    Needs root and util-linux `unshare`; ``stop_ray_cluster`` of the cluster stops it too."""
    import json

    # the node's temp folder: empty here, its own tmpfs there; short, since Ray's socket paths must fit 107 bytes
    own = tempfile.mkdtemp(prefix="esn-")
    script = (f"mount -t tmpfs tmpfs '{private_over}' && mount -t tmpfs tmpfs '{own}' && TMPDIR='{own}' "
              f"exec '{cluster['ray']}' "
              f"start --address={cluster['gcs']} --num-cpus={cpus} --resources='{json.dumps(resources)}' "
              f"--temp-dir='{own}' --node-ip-address=127.0.0.1 --disable-usage-stats")
    started = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                             env=cluster["env"], capture_output=True, text=True, timeout=120)
    if started.returncode:
        raise RuntimeError(f"ray start of the node sharing nothing failed: {started.stderr[-2000:]}")
    return Path(own)  # empty on this side: remove it once the cluster is stopped
