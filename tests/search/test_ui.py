"""The MLflow UI as a user sees it: a real server, a real headless Chromium, real screenshots."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.servers import wait_until_healthy


SCREENSHOTS = Path(os.environ.get("EDGESEARCH_TEST_OUTPUTS", Path(__file__).parents[2] / "runs" / "test-outputs"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000", "--virtual-time-budget=20000"]


def _chromium(*args) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([shutil.which("chromium"), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def ui_server(tracked_search, free_port):
    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium package")
    _, _, client, runs = tracked_search
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "search.cli", "--runs-dir", str(runs), "ui", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, server)
    # "MLflow UI for ... at ...", then the links to the search's runs and to its summary
    printed = [server.stdout.readline() for _ in range(3)]
    link = printed[1].split("open: ", 1)[1].strip()
    summary = printed[2].split("summary: ", 1)[1].strip()
    yield url, client, link, summary
    os.killpg(server.pid, 15)
    server.wait(timeout=30)


def test_ui_binds_to_localhost_only(ui_server):
    url = ui_server[0]
    assert url.startswith("http://127.0.0.1:")
    assert shutil.which("ss"), "the listener check needs ss (Debian's iproute2)"
    port = url.rsplit(":", 1)[1]
    listeners = [line.split()[3] for line in subprocess.run(["ss", "-ltnH"], capture_output=True, text=True,
                                                             check=True).stdout.splitlines() if line.strip()]
    on_port = [addr for addr in listeners if addr.rsplit(":", 1)[1] == port]
    assert on_port == [f"127.0.0.1:{port}"], on_port  # not 0.0.0.0, *, [::] or a public address


def test_ui_lands_on_the_search_runs_with_its_objectives_front_first(ui_server):
    """What `edgesearch ui` links to, as a browser renders it: the model-training runs page of the search, every
    candidate a row (not folded under the parent), the objectives as columns, the front's rows first."""
    url, client, link, _ = ui_server
    exp = client.get_experiment_by_name("tracked")
    assert link == f"{url}/edgesearch/open?experiment={exp.experiment_id}&view=edgesearch"
    dom = _chromium("--dump-dom", link).stdout
    current = re.findall(r'aria-current="page"[^>]*href="([^"]+)"', dom)
    assert any(h.startswith(f"#/experiments/{exp.experiment_id}/runs?") and "workflowType=machine_learning" in h
               for h in current), current
    columns = set(re.findall(r'col-id="((?:metrics|params)\.`[^`]+`)"', dom))
    wanted = {f"metrics.`{m}`" for m in ("accuracy", "latency_ms_p90", "size_bytes", "energy_mj", "feasible",
                                           "on_front")}
    assert wanted <= columns, wanted - columns
    shown = {int(i): run for i, run in re.findall(r'role="row" row-index="(\d+)" row-id="([0-9a-f]+)"', dom)}
    order = [shown[i] for i in sorted(shown)]
    children = client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''")
    candidates = {r.info.run_id for r in children if "mlflow.parentRunId" in r.data.tags}
    front = {r.info.run_id for r in children if r.data.tags.get("on_pareto_front") == "true"}
    assert len(candidates) >= 4 and candidates <= set(order)  # the 4 trained, and any screened out
    assert front and set(order[:len(front)]) == front
    assert "Ask questions about your experiments" not in dom  # MLflow's assistant panel did not open on its own
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "mlflow_search_runs.png"
    _chromium(f"--screenshot={shot}", link)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_summary_figure_renders_among_the_search_run_artifacts(ui_server):
    url, client, _, summary = ui_server
    exp = client.get_experiment_by_name("tracked")
    parent = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags][0]
    assert summary == (f"{url}/edgesearch/open?experiment={exp.experiment_id}&run={parent.info.run_id}"
                       "&artifact=summary.png")
    shown = r'<img[^>]*alt="summary\.png"[^>]*src="blob:'
    for _ in range(3):  # with the other core busy the image's fetch can outlast one page load's time budget
        dom = _chromium("--dump-dom", summary).stdout
        if re.search(shown, dom):
            break
    assert "summary.png" in dom and "pareto_front_table.json" in dom and "Artifacts" in dom
    assert re.search(shown, dom)  # shown, not just listed
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)  # not left to the test above: each test stands alone
    shot = SCREENSHOTS / "mlflow_search_summary.png"
    _chromium(f"--screenshot={shot}", summary)
    assert shot.stat().st_size > 20_000


def _in_sandboxed_frames(url: str, expression: str, done, timeout_s: float = 90.0) -> tuple[list, bytes]:
    """What ``expression`` gives in each frame of ``url`` in headless Chromium, polled until ``done(values)``, and a
    screenshot. MLflow shows an HTML artifact in a sandboxed frame of its own, which --dump-dom leaves out and
    --screenshot draws blank (another renderer process): the DevTools protocol reaches it, with one process."""
    import asyncio
    import base64
    import json
    import urllib.request

    import aiohttp

    async def run(ws_url):
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            ids = iter(range(1, 10**6))

            async def call(method, **params):
                n = next(ids)
                await ws.send_json({"id": n, "method": method, "params": params})
                while (reply := await ws.receive_json()).get("id") != n:
                    pass
                return reply.get("result", {})

            await call("Page.enable")
            await call("Page.navigate", url=url)
            deadline, values = time.monotonic() + timeout_s, []
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                tree, values = (await call("Page.getFrameTree"))["frameTree"], []
                frames = [tree]
                while frames:
                    frame = frames.pop()
                    frames += frame.get("childFrames", [])
                    world = await call("Page.createIsolatedWorld", frameId=frame["frame"]["id"])
                    if "executionContextId" not in world:  # a frame the page replaced meanwhile
                        continue
                    got = await call("Runtime.evaluate", expression=expression, returnByValue=True,
                                     contextId=world["executionContextId"])
                    values.append(got.get("result", {}).get("value"))
                if done(values):
                    break
            return values, base64.b64decode((await call("Page.captureScreenshot"))["data"])

    tree = []
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen([shutil.which("chromium"), *(f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time")),
                                    "--remote-debugging-port=0",
                                    "--disable-site-isolation-trials",
                                    "--disable-features=IsolateOrigins,site-per-process",
                                    f"--user-data-dir={profile}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            active = Path(profile) / "DevToolsActivePort"
            for _ in range(300):
                if active.exists() and len(active.read_text().split()) == 2:
                    break
                time.sleep(0.1)
            port = active.read_text().split()[0]
            tabs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10))
            return asyncio.run(run(next(t for t in tabs if t["type"] == "page")["webSocketDebuggerUrl"]))
        finally:  # the whole browser, its renderers too: one still writing the profile would outlive its removal
            import contextlib

            import psutil

            with contextlib.suppress(psutil.NoSuchProcess):
                tree = [psutil.Process(browser.pid), *psutil.Process(browser.pid).children(recursive=True)]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(browser.pid, signal.SIGKILL)
            for proc in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            browser.wait(timeout=30)
            psutil.wait_procs(tree, timeout=30)


def test_interactive_plots_render_in_the_mlflow_artifact_viewer(ui_server):
    """The search's one interactive page (plotly.js inside, once) drawn by plotly inside MLflow's viewer: each
    Pareto view and the knobs' parallel coordinates as an SVG plot, not an empty frame."""
    _, _, _, summary = ui_server
    page = summary.replace("artifact=summary.png", "artifact=plots/interactive.html")
    drawn = "[...document.querySelectorAll('.plotly-graph-div')].filter(d => d.querySelector('svg.main-svg')).length"
    values, shot = _in_sandboxed_frames(page, drawn, lambda values: 4 in values)
    assert values[0] == 0 and 4 in values[1:], values  # MLflow's page itself draws none; its artifact frame all four
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "mlflow_interactive_plots.png").write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"


def test_ui_again_gives_the_running_servers_links_and_another_store_a_free_port(ui_server, tracked_search,
                                                                                    tmp_path):
    """`make ui` run twice (the first still up in another terminal): the links of the server already serving the
    store, not "port in use"; a UI of another runs folder on that port is refused with a port that is free."""
    url, _, link, summary = ui_server
    runs, port = tracked_search[3], url.rsplit(":", 1)[1]
    again = subprocess.run([sys.executable, "-m", "search.cli", "--runs-dir", str(runs), "ui", "--port", port],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert f"is already served at {url} by an edgesearch ui started before" in lines[0]
    assert lines[1:] == [f"open: {link}", f"summary: {summary}"]
    other = subprocess.run([sys.executable, "-m", "search.cli", "--runs-dir", str(tmp_path), "ui", "--port", port],
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and f"Port {port} on 127.0.0.1 is already in use" in other.stderr, other.stderr
    from search.ui import port_owner

    free = int(re.search(r"pass --port (\d+) \(free\)", other.stderr)[1])
    assert free > int(port) and port_owner("127.0.0.1", free) is None


def _start_ui(runs, port):
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "--runs-dir", str(runs), "ui", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_healthy(f"http://127.0.0.1:{port}", proc)
    return proc


def test_sigterm_stops_the_whole_ui_tree_and_frees_the_port(tracked_search, free_port):
    import psutil

    from search.ui import port_owner

    _, _, _, runs = tracked_search
    port = free_port()
    ui = _start_ui(runs, port)
    tree = [ui.pid] + [c.pid for c in psutil.Process(ui.pid).children(recursive=True)]
    assert len(tree) >= 2  # edgesearch ui and the mlflow server (and its workers)
    ui.send_signal(15)
    assert ui.wait(timeout=60) is not None
    said = ui.stderr.read()  # the server's start, as a user sees it: no library's warning to take for a fault
    assert "Uvicorn running on" in said and "Warning" not in said and "Registry store URI not provided" not in said
    _, alive = psutil.wait_procs([psutil.Process(p) for p in tree if psutil.pid_exists(p)], timeout=15)
    assert [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    assert port_owner("127.0.0.1", port) is None


def test_a_taken_port_is_refused_with_who_holds_it(tracked_search, free_port):
    import socket

    _, _, _, runs = tracked_search
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        done = subprocess.run([sys.executable, "-m", "search.cli", "--runs-dir", str(runs), "ui", "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"Port {port} on 127.0.0.1 is already in use by process {os.getpid()}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_unknown_search_is_refused_before_the_ui_says_it_is_up(tracked_search, free_port):
    _, _, _, runs = tracked_search
    done = subprocess.run([sys.executable, "-m", "search.cli", "--runs-dir", str(runs), "ui", "no-such-search",
                           "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "No search named 'no-such-search'" in done.stderr
    assert "MLflow UI for" not in done.stdout and len(done.stderr.strip().splitlines()) == 1


def test_a_new_runs_folder_opens_the_experiments_list_and_says_how_a_search_gets_there(tmp_path):
    from search.tracking import check_tracking, default_tracking_uri
    from search.ui import landing_paths

    uri = default_tracking_uri(tmp_path)
    check_tracking(uri, runs_dir=tmp_path)  # the store `ui` creates in a new runs folder
    [(label, path)] = landing_paths(uri, None)
    assert path == "/#/experiments?workflowType=machine_learning"
    assert "no search has logged here yet" in label and "edgesearch submit" in label
