"""MLflow's server with one more page: ``/edgesearch/open``, the landing page ``edgesearch ui`` links to.

Registered as an MLflow app plugin (entry point ``mlflow.app``, name ``edgesearch``) and started with
``mlflow server --app-name edgesearch``. The page runs on the UI's own origin, so it can make the browser-side
settings MLflow keeps in ``localStorage`` before sending the browser on to the search's runs: the model-training
view, and the assistant panel not opened on its own (MLflow opens it on a local server's first visit; a user who
opens it again keeps it open). The runs table's columns and sort come from the experiment's shared view state.
"""

from __future__ import annotations

import html
import json
import re

from flask import Response, request
from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import create_fastapi_app

from search.ui import LANDING_ROUTE

# MLflow's useLocalStorage hook stores each key as `<key>_v<version>` holding JSON
SET_ALWAYS = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True}
SET_IF_UNSET = {"mlflow.assistant.panelOpen_v1": False, "mlflow.workflowType_v1": "machine_learning"}
SAFE = re.compile(r"[A-Za-z0-9_-]+")
SAFE_PATH = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


def runs_page(experiment_id: str, view_key: str | None) -> str:
    """The fragment of MLflow's runs page for one experiment, in model-training mode, with a shared view."""
    query = "workflowType=machine_learning" + (f"&viewStateShareKey={view_key}" if view_key else "")
    return f"/#/experiments/{experiment_id}/runs?{query}"


def artifact_page(experiment_id: str, run_id: str, artifact: str) -> str:
    """The fragment of MLflow's page showing one artifact of a run, in model-training mode."""
    return f"/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{artifact}?workflowType=machine_learning"


def landing_html(target: str) -> str:
    script = (f"const always = {json.dumps(SET_ALWAYS)}, unset = {json.dumps(SET_IF_UNSET)};\n"
              "try {\n"
              "  for (const [k, v] of Object.entries(always)) localStorage.setItem(k, JSON.stringify(v));\n"
              "  for (const [k, v] of Object.entries(unset))\n"
              "    if (localStorage.getItem(k) === null) localStorage.setItem(k, JSON.stringify(v));\n"
              "} catch (e) {}\n"
              f"location.replace({json.dumps(target)});\n")
    link = html.escape(target, quote=True)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>edgesearch</title></head><body>"
            f"<script>{script}</script><noscript><a href='{link}'>Open the search's runs</a></noscript>"
            "</body></html>")


def _open():
    args = request.args
    experiment, view, run, artifact = (args.get(k) for k in ("experiment", "view", "run", "artifact"))
    plain = (experiment, view, run)
    if not (experiment or "").isdigit() or not all(v is None or SAFE.fullmatch(v) for v in plain) or (
            artifact is not None and (run is None or not SAFE_PATH.fullmatch(artifact))):
        return Response("expected ?experiment=<id>[&view=<share key>] or ?experiment=<id>&run=<id>&artifact=<path>",
                        status=400, mimetype="text/plain")
    target = artifact_page(experiment, run, artifact) if artifact else runs_page(experiment, view)
    return Response(landing_html(target), mimetype="text/html")


flask_app.add_url_rule(LANDING_ROUTE, "edgesearch_open", _open)
app = create_fastapi_app(flask_app)
