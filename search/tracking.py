"""MLflow logging: one experiment per search, a parent run, one nested run per candidate.

Only the driver talks to MLflow. Each finished trial is logged as it lands; the
parent run's front, plots and hypervolume are refreshed after every trial, and
the ``on_pareto_front`` tags follow the front as it changes. On resume, trials
already in the Optuna storage but missing in MLflow are logged first, so the two
stores agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path

from objectives.pareto import OBJECTIVES, objectives
from search.errors import ConfigError, first_line
from search.spec import SearchSpec
from search.study import (EMULATOR_ATTR, FLOOR_ATTR, TEACHER_ATTR, Row, best_within_budget, feasible_front,
                          front_hypervolume, search_bounds, search_state, shown_url, stored_trial, trial_artifact)

# log_table downloads the table it appends to, and MLflow draws a tqdm bar for that download: a bar in the middle
# of a resumed search's report, for one small file. Set once at import, before the MLflow thread starts.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# On a tracking server, MLflow prints two lines with links for every run it ends: 16 lines among an 8-trial search's
# report. The search prints the link to its runs once, where it ends.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

PARENT_ATTR = "mlflow_parent_run_id"
# the tracking server a search logs to, so later commands reach its runs without --tracking-uri; a local store is
# the runs folder's own, found wherever that folder is
TRACKING_URI_ATTR = "mlflow_tracking_server"
SEARCH_TAG = "edgesearch.search"  # on the experiment of each search
TRACKED_ATTR = "mlflow_tracked"  # False when the search's driver last ran without MLflow (--no-mlflow)
PLOT_INTERVAL_S = 30.0  # plots are re-drawn at most this often while a search runs, and always at its end
TRIAL_TAG = "edgesearch.trial"
SUMMARY_FILE = "summary.png"  # at the parent run's artifact root, where the UI lists it beside the front's table
FRONT_TABLE_FILE = "pareto_front_table.json"  # an MLflow table (log_table): the UI shows it as one
TABLE_TAG = "edgesearch.front_table_after_trials"
STATE_TAG = "edgesearch.logged_state"  # what the last finish logged: ``logged_state``
VIEW_KEY = "edgesearch"  # the runs table's shared view: MLflow reads it from this experiment tag and the URL's key
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
REVIEW_COLUMNS = (*(f"metrics.`{name}`" for name, _ in OBJECTIVES), "metrics.`balanced_accuracy`",
                  "metrics.`feasible`", "metrics.`on_front`",
                  "params.`precision`", "params.`width`", "params.`sparsity`")


def review_view_state() -> str:
    """The runs table a search is reviewed in: its objectives, feasibility and front membership as columns, the front
    first. Sorting by anything but the start time also lists the candidates flat instead of under their parent."""
    return json.dumps({"orderByKey": "metrics.`on_front`", "orderByAsc": False,
                       "selectedColumns": list(REVIEW_COLUMNS)})


def local_tracking_uri(runs_dir: Path) -> str:
    """The runs folder's own MLflow store."""
    return f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}"


def default_tracking_uri(runs_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri(runs_dir)


def search_tracking_uri(study, runs_dir: Path) -> str:
    """Where a stored search's runs are: the tracking server it logged to, else ``default_tracking_uri``."""
    return study.user_attrs.get(TRACKING_URI_ATTR) or default_tracking_uri(runs_dir)


def answers(uri: str, timeout_s: float = 2.0) -> bool:
    """Whether a tracking server's port takes a connection now: a command that only catches MLflow up on the way
    (``status``) skips it when not, instead of waiting out MLflow's retries and timeouts."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout_s).close()
        return True
    except (OSError, ValueError):
        return False


def artifact_root(runs_dir: Path) -> str:
    """Where runs of a local (SQLite) store keep their files: beside the store, never the working directory."""
    return (Path(runs_dir).resolve() / "mlartifacts").as_uri()


def search_experiment(client, name: str, parent: str | None):
    """A search's experiment: that of its own run, which a rename in the UI does not move, else the one named after
    it (a search not yet logged, or logged to another store); None when there is none."""
    if parent:
        from mlflow.exceptions import MlflowException

        try:
            return client.get_experiment(client.get_run(parent).info.experiment_id)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc.error_code):
                raise
    return client.get_experiment_by_name(name)


def experiment_id(client, uri: str, runs_dir: Path, name: str, tags: dict[str, str], parent: str | None = None) -> str:
    """The experiment of search ``name`` (whose run is ``parent`` when it has logged before), created if new; a local
    store keeps its artifacts under ``artifact_root``. One deleted in MLflow is set aside for a new search, and named
    for a resumed one to restore."""
    resumed = parent is not None
    exp = search_experiment(client, name, parent)
    if exp is not None and exp.lifecycle_stage == "deleted":
        if resumed:
            raise ConfigError(deleted_experiment(exp, uri, "to log the rest of the search beside its runs, or pass "
                                                 "--no-mlflow; the search's trials are kept in its study."))
        set_aside(client, exp)
        exp = None
    if exp is not None and not resumed and client.search_runs([exp.experiment_id], "tags.`edgesearch.role` = 'search'",
                                                              max_results=1):
        raise ConfigError(f"The MLflow experiment {name!r} at {shown_url(uri)} already holds the runs of another "
                          "search of that name (one in another Optuna store, or one deleted with --no-mlflow), which "
                          "this search's would mix with: choose another --name, or delete that experiment in MLflow; "
                          "nothing was run.")
    if exp is not None and not resumed and exp.tags.get(SEARCH_TAG) != "true":
        from mlflow.entities import ViewType

        if client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1):
            raise ConfigError(f"The MLflow experiment {name!r} at {shown_url(uri)} holds runs that edgesearch did not "
                              "log (another project's), which this search's would mix with, and its view would "
                              "change: choose another --name, or rename that experiment in MLflow; nothing was run.")
        for key, value in tags.items():  # an empty one made by hand (say, with its permissions set): the search's now
            client.set_experiment_tag(exp.experiment_id, key, value)
    if exp is not None:
        if exp.tags.get(VIEW_TAG) != review_view_state():
            client.set_experiment_tag(exp.experiment_id, VIEW_TAG, review_view_state())
        return exp.experiment_id
    location = {"artifact_location": f"{artifact_root(runs_dir)}/{name}"} if uri.startswith("sqlite:") else {}
    return client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development",
                                                VIEW_TAG: review_view_state(), **tags}, **location)


def deleted_experiment(exp, uri: str, why: str) -> str:
    """That a search's experiment was deleted in MLflow (the UI's delete), and how to restore it for ``why``."""
    return (f"The MLflow experiment {exp.name!r} at {shown_url(uri)} was deleted in MLflow: restore it "
            f"('MLFLOW_TRACKING_URI={shown_url(uri)} mlflow experiments restore -x {exp.experiment_id}') {why}")


def set_aside(client, exp) -> str:
    """Rename an experiment out of the way of a new one of its name, and leave it deleted (``mlflow gc`` removes it
    for good); returns its new name. MLflow renames active experiments only."""
    moved = f"{exp.name}.deleted-{time.strftime('%Y%m%d-%H%M%S')}"
    while client.get_experiment_by_name(moved) is not None:  # set aside twice in one second
        moved += "+"
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    client.rename_experiment(exp.experiment_id, moved)
    client.delete_experiment(exp.experiment_id)
    return moved


def relocate_artifacts(uri: str, runs_dir: Path) -> None:
    """Point the searches of a local store moved or copied with its runs folder at the artifacts beside it.

    MLflow records artifact locations as absolute paths: a store copied to another machine kept sending new files
    (an export's model card) to the old folder, and the UI looked there for the old ones. Only the store of
    ``runs_dir`` itself is rewritten, and only the searches' locations (``RUNS/mlartifacts/NAME``)."""
    import sqlite3

    db = Path(runs_dir).resolve() / "mlflow.db"
    if uri != local_tracking_uri(runs_dir) or not db.is_file():
        return
    new_root = artifact_root(runs_dir)
    with contextlib.closing(sqlite3.connect(db)) as con, con:  # closed, and committed on the way out
        located = con.execute("SELECT e.artifact_location FROM experiments e JOIN experiment_tags t ON "
                              "t.experiment_id = e.experiment_id WHERE t.key = ?", (SEARCH_TAG,)).fetchall()
        # RUNS/mlartifacts/NAME, with the name the search had when it began (a rename in the UI keeps the folder)
        moved = {location.rpartition("/mlartifacts/")[0] + "/mlartifacts" for (location,) in located
                 if "/mlartifacts/" in location and not location.startswith(f"{new_root}/")}
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for old_root in moved:
            for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                                  ("logged_models", "artifact_location")):
                if table in tables:
                    con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                                f"WHERE substr({column}, 1, ?) = ?",
                                (new_root, len(old_root) + 1, len(old_root) + 1, f"{old_root}/"))


def file_store_error(uri: str) -> str | None:
    """What is wrong with a tracking URI naming a folder: MLflow 3 refuses its file store (``./mlruns``)."""
    from urllib.parse import urlsplit

    scheme = urlsplit(uri).scheme
    if (scheme and scheme != "file") or uri == "databricks":  # MLflow's name for a Databricks workspace
        return None
    folder = uri[len("file://"):] if uri.startswith("file://") else uri.removeprefix("file:")
    db = Path(folder).expanduser().resolve().with_suffix(".db")
    return (f"The MLflow tracking URI {uri} names a folder (MLflow's file store, which MLflow 3 no longer writes); "
            f"pass a database, e.g. sqlite:///{db}, or a tracking server's http:// URL.")


def check_tracking(uri: str, alternative: str = "", runs_dir: Path | None = None) -> None:
    """Fail before any work if the tracking server cannot be reached; ``alternative`` names another way on. With
    ``runs_dir``, a local store that came with its runs folder from elsewhere is adopted (``relocate_artifacts``)."""
    from mlflow.tracking import MlflowClient

    if error := file_store_error(uri):
        raise ConfigError(f"{error} Nothing was run.")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    # a failed write to a SQLite store (a full disk) was a traceback per try; the failure itself is reported
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    if uri.startswith(("http://", "https://")):
        # each retry of a server that went down was a warning line in the report; the failure itself is reported
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from contextlib import nullcontext

    from filelock import FileLock

    # a new SQLite store is created (schema migrations) by the first call: serialise it across processes
    lock = FileLock(uri[len("sqlite:///"):] + ".lock") if uri.startswith("sqlite:///") else nullcontext()
    try:
        with lock:
            MlflowClient(uri).search_experiments(max_results=1)
            if runs_dir is not None:
                relocate_artifacts(uri, runs_dir)
    except Exception as exc:
        first = re.sub(r"(://[^:/@\s]+:)[^@/\s]+@", r"\1***@", first_line(exc)).rstrip(".")  # MLflow repeats the URL
        raise ConfigError(f"Cannot reach the MLflow tracking store at {shown_url(uri)}: {first}. Start the server or "
                          f"pass another --tracking-uri{alternative}; nothing was run.") from exc


class SearchTracker:
    """Logs a search to MLflow; safe to create again on resume."""

    def __init__(self, spec: SearchSpec, study, tracking_uri: str, runs_dir: Path):
        from mlflow.tracking import MlflowClient

        self.spec = spec
        self.study = study
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.runs_dir = Path(runs_dir)
        self.experiment_id = self._experiment(runs_dir)
        self.experiment_name = self.client.get_experiment(self.experiment_id).name
        self.parent_id = self._parent_run()
        if words := study.user_attrs.get(EMULATOR_ATTR):  # what the figures of an emulated target are worth
            self.client.set_tag(self.parent_id, "emulator", words)
        self.children: dict[int, str] = self._existing_children()
        self.on_front: dict[int, bool] = {}
        self.shipped_logged: set[int] = set()
        self.teacher_logged = False
        self._plotted_at = float("-inf")

    def _experiment(self, runs_dir: Path) -> str:
        return experiment_id(self.client, self.uri, runs_dir, self.spec.name, {SEARCH_TAG: "true"},
                             self.study.user_attrs.get(PARENT_ATTR))

    def _parent_run(self) -> str:
        run_id = self.study.user_attrs.get(PARENT_ATTR)
        if run_id:
            try:
                self.client.update_run(run_id, status="RUNNING")
            except Exception as exc:
                if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(exc, "error_code", "")):
                    if self.client.get_run(run_id).info.lifecycle_stage == "deleted":  # in the UI
                        raise ConfigError(
                            f"The MLflow run of search {self.spec.name!r} ({run_id} at {shown_url(self.uri)}) was "
                            f"deleted in MLflow: restore it ('MLFLOW_TRACKING_URI={shown_url(self.uri)} mlflow runs "
                            f"restore --run-id {run_id}') to log the rest of the search under it, or pass "
                            "--no-mlflow; the search's trials are kept in its study.") from None
                    raise
                where = self.study.user_attrs.get(TRACKING_URI_ATTR)
                raise ConfigError(
                    f"Search {self.spec.name!r} logged its runs to MLflow "
                    + (f"at {where}" if where else "in another tracking store") + f" (its run {run_id}), which "
                    f"{shown_url(self.uri)} does not hold: pass "
                    + (f"--tracking-uri {where}." if where else "the --tracking-uri it ran with.")) from None
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=f"search {self.spec.name}",
                                     tags={"edgesearch.role": "search", "target": self.spec.target,
                                           "dataset": self.spec.dataset})
        # stored at once: a failure while the spec is logged leaves a run the resume goes on with, not one it takes
        # for another search's
        self.study.set_user_attr(PARENT_ATTR, run.info.run_id)
        # a URI with a password is not stored (nor usable with it hidden): later commands are told to pass it
        server = not self.uri.startswith("sqlite:") and shown_url(self.uri) == self.uri
        self.study.set_user_attr(TRACKING_URI_ATTR, self.uri if server else "")
        params = _flatten(self.spec.to_dict())
        for key, value in params.items():
            self.client.log_param(run.info.run_id, key, str(value)[:500])
        self.client.log_dict(run.info.run_id, self.spec.to_dict(), "spec.json")
        self._log_profile(run.info.run_id)
        return run.info.run_id

    def _log_profile(self, run_id: str) -> None:
        from hardware_targets import load_profile

        profile = load_profile(self.spec.target)
        self.client.log_artifact(run_id, profile.source, "target_profile")

    def _existing_children(self) -> dict[int, str]:
        """Completely logged trial runs; a run left half-logged by a failure is deleted, to be logged again."""
        runs = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
                                       max_results=5000)
        children = {}
        for r in runs:
            if TRIAL_TAG not in r.data.tags:
                continue
            if r.info.status == "RUNNING":
                self.client.delete_run(r.info.run_id)
            else:
                children[int(r.data.tags[TRIAL_TAG])] = r.info.run_id
        return children

    def recover(self) -> None:
        """After a failed sync: forget what may be half-written and rebuild from the store."""
        self.children = self._existing_children()
        self.on_front, self.shipped_logged = {}, set()

    def log_trial(self, row: Row) -> None:
        """One nested run for one finished trial: knobs, metrics with provenance, tags, ONNX model."""
        if row.number in self.children:
            return
        tags = {"mlflow.parentRunId": self.parent_id, TRIAL_TAG: str(row.number), "target": self.spec.target,
                "state": row.state, "feasible": str(row.feasible).lower(), "on_pareto_front": "false"}
        trial = stored_trial(self.study, row.number)
        if row.state == "FAIL":
            tags["failure_reason"] = (row.error or "unknown")[:5000]
        else:
            tags["provenance"] = str(trial.user_attrs.get("provenance"))
        for key, value in (("reused_from_trial", row.reused_from), ("recipe", row.recipe), ("stopped", row.stopped),
                           ("screened_out", trial.user_attrs.get("screened_out")),
                           ("retimed", trial.user_attrs.get("retimed")), ("rung", trial.user_attrs.get("rung"))):
            if value is not None:
                tags[key] = str(value)[:5000]
        run = self.client.create_run(self.experiment_id, run_name=f"trial {row.number}", tags=tags)
        run_id = run.info.run_id
        for key, value in (row.knobs or {}).items():
            self.client.log_param(run_id, key, str(value))
        from mlflow.entities import Metric as MlflowMetric

        now = int(time.time() * 1000)
        metrics = [MlflowMetric(name, float(value), now, 0) for name, (value, _, _) in row.metrics.items()]
        metrics += [MlflowMetric("feasible", float(row.feasible), now, 0), MlflowMetric("on_front", 0.0, now, 0)]
        for stage, seconds in (trial.user_attrs.get("stage_seconds") or {}).items():
            metrics.append(MlflowMetric(f"seconds_{stage}", float(seconds), now, 0))
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
        provenance = {name: prov for name, (_, _, prov) in row.metrics.items()}
        if provenance:
            self.client.log_dict(run_id, {"metrics": {n: {"value": v, "unit": u, "provenance": p}
                                                      for n, (v, u, p) in row.metrics.items()}},
                                 "metrics_with_provenance.json")
        for kind in ("onnx", "tflite"):  # the graph, and for a microcontroller the flatbuffer that ships
            path = trial_artifact(trial, kind, self.runs_dir)
            if path and path.is_file():
                self.client.log_artifact(run_id, path, "model")
        # screened out or stopped by halving is a finished evaluation (tags say why), not a failure
        status = "KILLED" if row.interrupted else "FAILED" if row.state == "FAIL" else "FINISHED"
        self.client.set_terminated(run_id, status)
        self.children[row.number] = run_id

    def update_front(self, all_rows: list[Row], finished: bool = False) -> None:
        """Refresh the front-dependent tags, the parent's metrics, table and plots."""
        from mlflow.entities import Metric as MlflowMetric
        from mlflow.entities import RunTag

        front = feasible_front(all_rows)
        members = {r.number for r in front}
        stamp, step = int(time.time() * 1000), len(all_rows)  # MLflow's latest value is that of the highest step
        for r in all_rows:  # the shipping stage's figures replace the searched ones (kept as their step 0)
            if r.shipped and r.number in self.children and r.number not in self.shipped_logged:
                figures = [MlflowMetric(n, float(v), stamp, step) for n, (v, _, _) in r.shipped["metrics"].items()]
                figures.append(MlflowMetric("feasible", float(r.feasible), stamp, step))
                tags = [RunTag("ships_as", r.shipped["option"]),
                        RunTag("runtime_figures", json.dumps(r.shipped["figures"])),
                        RunTag("feasible", str(r.feasible).lower())]
                self.client.log_batch(self.children[r.number], metrics=figures, tags=tags)
                self.shipped_logged.add(r.number)
        for number, run_id in self.children.items():
            now = number in members
            if self.on_front.get(number) != now:  # a tag to filter on, a metric to sort and chart by
                self.client.log_batch(run_id, metrics=[MlflowMetric("on_front", float(now), stamp, step)],
                                      tags=[RunTag("on_pareto_front", str(now).lower())])
                self.on_front[number] = now
        hv = front_hypervolume(front, search_bounds(self.study, self.spec))
        self.client.log_metric(self.parent_id, "hypervolume", hv, step=step)
        self.client.log_metric(self.parent_id, "trials_finished", step, step=step)
        self.client.log_metric(self.parent_id, "front_size", len(front), step=step)
        teacher = self.study.user_attrs.get(TEACHER_ATTR)
        if teacher and not self.teacher_logged:  # what distilled candidates learnt from (its torch model)
            self.client.log_metric(self.parent_id, f"teacher_{self.spec.metric}", teacher[self.spec.metric], step=0)
            self.teacher_logged = True
        best = best_within_budget(all_rows)
        if best is not None:
            for name, _ in objectives(self.spec.metric):
                self.client.log_metric(self.parent_id, f"best_{name}", best.value(name), step=step)
            self.client.set_tag(self.parent_id, "best_trial", str(best.number))
        self.client.log_dict(self.parent_id, [_row_dict(r) for r in front], "pareto_front.json")
        if finished or (all_rows and time.monotonic() - self._plotted_at >= PLOT_INTERVAL_S):
            self._log_plots(all_rows, front, finished)
            self._plotted_at = time.monotonic()
        if finished:
            self.client.set_tag(self.parent_id, STATE_TAG, logged_state(all_rows))
            self.client.set_terminated(self.parent_id, "FINISHED")

    def _log_plots(self, all_rows: list[Row], front: list[Row], finished: bool) -> None:
        """The plots, the summary figure at the top of the parent's artifacts, and the front as an MLflow table."""
        from search.plots import front_table, pareto_figures, summary_columns, summary_figure

        bounds = search_bounds(self.study, self.spec)
        floor = (self.study.user_attrs.get(FLOOR_ATTR) or {}).get("value")
        with tempfile.TemporaryDirectory() as tmp:
            plots = Path(tmp) / "plots"
            plots.mkdir()
            # the interactive page (plotly.js inside, megabytes) once the search has finished, PNGs while it runs
            if pareto_figures(all_rows, front, self.spec, plots, bounds, floor, interactive=finished):
                self.client.log_artifacts(self.parent_id, str(plots), "plots")
            summary = summary_figure(all_rows, front, self.spec, Path(tmp) / SUMMARY_FILE, bounds, floor)
            if summary:
                self.client.log_artifact(self.parent_id, str(summary))
        logged_after = self.client.get_run(self.parent_id).data.tags.get(TABLE_TAG) if finished else None
        if finished and logged_after != str(len(all_rows)):
            # MLflow appends to a logged table: one block per finish with new trials (a resumed search adds one)
            table = front_table(front)
            data = {"after_trials": [len(all_rows)] * len(table),
                    **{c: [row[i] for row in table] for i, c in enumerate(summary_columns(self.spec.metric))}}
            self.client.log_table(self.parent_id, data, FRONT_TABLE_FILE)
            self.client.set_tag(self.parent_id, TABLE_TAG, str(len(all_rows)))

    def sync(self, all_rows: list[Row], finished: bool = False) -> None:
        before = len(self.children)
        for row in all_rows:
            self.log_trial(row)
        if (finished and len(self.children) == before
                and self.client.get_run(self.parent_id).data.tags.get(STATE_TAG) == logged_state(all_rows)):
            # the last finish logged these very rows: the front, plots and table stand (redrawn, they took seconds)
            self.client.set_terminated(self.parent_id, "FINISHED")
            return
        self.update_front(all_rows, finished)

    def fail(self) -> None:
        self.client.set_terminated(self.parent_id, "FAILED")

    @property
    def experiment_url_path(self) -> str:
        return f"#/experiments/{self.experiment_id}/runs"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def logged_state(all_rows: list[Row]) -> str:
    """A digest of every trial's state, knobs and figures (the shipped ones too): what a finished search's front,
    plots and table are drawn from."""
    text = json.dumps([[r.number, r.state, _row_dict(r)] for r in all_rows], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _row_dict(r: Row) -> dict:
    shipped = {"ships_as": r.shipped["option"], "runtime_figures": r.shipped["figures"]} if r.shipped else {}
    return {"trial": r.number, **r.knobs, **shipped, **{n: {"value": v, "unit": u, "provenance": p}
                                                        for n, (v, u, p) in r.metrics.items()}}


def sync_search(study, spec: SearchSpec, tracking_uri: str, runs_dir: Path) -> int:
    """Log to MLflow every finished trial it is missing (after an outage), and the front; returns how many runs were
    logged. A search whose driver is still running is left to its driver, which logs its own trials. The search's
    run ends FINISHED if the search is done, KILLED if it stopped (a driver killed outright left it RUNNING)."""
    from search.study import rows

    state, _ = search_state(study, spec)
    if state == "running":
        raise ConfigError(f"Search {spec.name!r} is still running; its driver logs its trials to MLflow. "
                          "Sync it once it has finished or stopped.")
    check_tracking(tracking_uri, runs_dir=runs_dir)
    tracker = SearchTracker(spec, study, tracking_uri, runs_dir)
    before = len(tracker.children)
    # a stopped search gets what a finished one has (the interactive page, the front table), which its driver left
    # out to stop at once; the state digest spares a second sync the redrawing
    tracker.sync(rows(study), finished=True)
    if state == "stopped":
        tracker.client.set_terminated(tracker.parent_id, "KILLED")
    study.set_user_attr(TRACKED_ATTR, True)  # in MLflow now: status, resume hints and delete treat it so
    return len(tracker.children) - before
