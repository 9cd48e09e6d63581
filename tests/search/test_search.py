"""Whole searches with real Ray, real Optuna storage and the real pipeline, on tiny budgets."""

import dataclasses
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient

from search.errors import ConfigError
from search.spec import SearchSpace, SearchSpec
from search.study import (STAGE_WORDS, create_study, default_storage, finished_count, knob_names, load_study,
                          requeue_interrupted, rows, search_state, spent_budget, stored_spec, suggest_candidate)
from search.workers import run_search
from tests.oracles import OBJECTIVES, pareto_front
from tests.search.conftest import SHIP, TINY, complete_trials
from tests.servers import CAN_SHARE_NOTHING, ray_cluster

FAST_SPACE = SearchSpace(precision=("fp32", "int8-ptq", "fp16"), width=(0.25, 0.75))


@pytest.mark.slow  # the same search runs by default as the tracked search (test_tracking)
def test_four_trials_on_two_workers_give_a_feasible_non_dominated_front(tmp_path):
    spec = SearchSpec(name="four", trials=4, workers=2, latency_budget_ms=0.1, budget=SHIP, space=FAST_SPACE)
    storage = default_storage(tmp_path)
    lines = []
    outcome = run_search(spec, tmp_path, storage_url=storage, report=lines.append)
    study = load_study("four", storage)
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    progress = [line for line in lines if "ETA" in line and not line.startswith("[ship")]
    assert sum("trial" in line for line in progress) == 4  # one progress line per trial
    assert outcome.front, "some candidate of these sizes should fit 0.1 ms on the host"
    shipping = [line for line in lines if line.startswith("[ship")]
    assert shipping and all("onnxruntime" in line and "-> ships" in line for line in shipping)
    for row in outcome.front:
        assert row.feasible and row.value("latency_ms_p90") <= spec.latency_budget_ms
        assert row.metrics["latency_ms_p90"][2] == "measured"
        # the shipping stage timed it after the search: its figure is that of the runtime that ships
        assert row.shipped and row.value("latency_ms_p90") == row.shipped["figures"][row.shipped["option"]][
            "latency_ms_p90"]
    done = {r.number: {n: r.value(n) for n, _ in OBJECTIVES} for r in outcome.rows
            if r.feasible and r.reused_from is None}
    assert {r.number for r in outcome.front} == pareto_front(done)
    infeasible = [r for r in outcome.rows if not r.feasible]
    assert all(r not in outcome.front for r in infeasible)
    assert outcome.best in outcome.front and outcome.hypervolume > 0
    with pytest.raises(Exception, match="already exists"):
        run_search(spec, tmp_path, storage_url=storage, report=lines.append)


@pytest.mark.slow  # the same search of one point runs by default in test_export_errors
def test_knobs_already_evaluated_reuse_the_result(tmp_path):
    one_point = SearchSpace(precision=("fp32",), pruning=("unstructured",), sparsity=(0.0, 0.0),
                            temperature=(1.0, 1.0), alpha=(1.0, 1.0), width=(0.25, 0.25))
    spec = SearchSpec(name="dupes", trials=3, workers=1, budget=TINY, space=one_point)
    lines = []
    outcome = run_search(spec, tmp_path, storage_url=default_storage(tmp_path), report=lines.append)
    trials = load_study("dupes", default_storage(tmp_path)).trials
    assert [t.user_attrs.get("reused_from_trial") for t in trials] == [None, 0, 0]
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({tuple(t.values) for t in trials}) == 1
    assert sum("result reused" in line for line in lines) == 2 and len(outcome.rows) == 3


def test_a_failing_candidate_is_recorded_and_the_search_finishes(tmp_path):
    profile = tmp_path / "broken-board.yaml"
    profile.write_text(yaml.safe_dump({"name": "broken-board", "backend": "local",
                                       "tvm_target": {"kind": "llvm", "mtriple": "no-such-arch-xyz"}}))
    spec = SearchSpec(name="broken", trials=2, workers=2, target=str(profile), budget=TINY, space=FAST_SPACE)
    outcome = run_search(spec, tmp_path, storage_url=default_storage(tmp_path), report=lambda line: None)
    assert [r.state for r in outcome.rows] == ["FAIL", "FAIL"]
    assert all(r.error.startswith("compile failed") for r in outcome.rows)
    assert outcome.front == [] and outcome.best is None


def test_a_distilling_search_trains_its_teacher_first_in_view_and_once(tmp_path, monkeypatch):
    """The teacher is a stage of its own before the first trial: announced, with progress, on the search's CPUs,
    and cached, so the candidates that distil and the next search find it instead of training it unannounced."""
    distils = SearchSpace(precision=("fp32",), sparsity=(0.0, 0.0), temperature=(4.0, 4.0), alpha=(0.5, 0.5),
                          width=(0.25, 0.25))
    spec = SearchSpec(name="taught", trials=1, workers=1, recipes=False, space=distils,
                      budget=dataclasses.replace(TINY, teacher_epochs=3))
    storage, lines, status = default_storage(tmp_path), [], []

    def report(line: str) -> None:
        lines.append(line)
        if line.startswith("teacher: epoch 1/"):  # `status` meanwhile: running, and doing what
            study = load_study("taught", storage)
            status.append(search_state(study, stored_spec(study)))

    run_search(spec, tmp_path, storage_url=storage, report=report)
    assert status == [("running", "training the distillation teacher, before the first trial")]

    def where(start: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(start))

    assert (where("training the distillation teacher first (width 2, 3 epochs, 1 CPU thread(s))")
            < where("teacher: epoch 1/3, ") < where("distillation teacher trained in ")
            < where("distillation teacher: validation accuracy ") < where("[1/1] trial 0: ")), lines
    assert [p.name.split("-")[-2] for p in (tmp_path / "teachers").glob("*.pt")] == ["e3"]
    # what the students learn from is shown: the teacher's own validation accuracy, of its torch model
    import torch

    from search.data import load_dataset
    from search.stages.train import load_teacher

    data = load_dataset(spec.dataset)
    with torch.no_grad():
        teacher = load_teacher(data, next((tmp_path / "teachers").glob("*.pt")))
        right = teacher(torch.from_numpy(data.x_val)).argmax(1).numpy() == data.y_val
    scores = load_study("taught", storage).user_attrs["teacher"]
    assert scores["accuracy"] == pytest.approx(right.mean()) and scores["metric"] == "accuracy"
    assert f"distillation teacher: validation accuracy {right.mean():.4f} (measured on its fp32 torch model: " \
           "the teacher is not shipped)" in lines
    assert load_study("taught", storage).trials[0].user_attrs["teacher"] == "cached"  # the stage trained it

    again = []
    run_search(dataclasses.replace(spec, name="taught-again"), tmp_path, storage_url=storage, report=again.append)
    assert "distillation teacher (width 2, 3 epochs): cached, not trained again" in again
    assert f"distillation teacher: validation accuracy {right.mean():.4f}" in " ".join(again)
    assert not any(line.startswith(("training the distillation teacher", "teacher: epoch")) for line in again)

    # a distilling space whose one trial is a recipe that does not distil: no teacher is trained for it. And a
    # long wait for it (here half a second) says what runs
    monkeypatch.setattr("search.workers.QUIET_S", 0.5)
    fresh, untaught = tmp_path / "fresh", []
    recipe_first = dataclasses.replace(distils, precision=("fp32", "int8-ptq"), pruning=("structured",),
                                       temperature=(1.0, 4.0), alpha=(0.5, 1.0), width=(0.25, 1.0))
    run_search(dataclasses.replace(spec, name="untaught", recipes=True, space=recipe_first), fresh,
               storage_url=default_storage(fresh), report=untaught.append)
    assert any(line.startswith("distillation teacher not trained before the first trial: the 1 queued recipe(s) "
                               "fill the trial budget and none distils") for line in untaught), untaught
    assert not list(fresh.glob("teachers/*.pt")) and any(line.startswith("[1/1] trial 0: int8-ptq") for line in untaught)
    quiet = [line for line in untaught if line.startswith("running: ")]
    shown = [re.fullmatch(r"running: trial 0 \(int8-ptq w=1(, ([A-Za-z ()-]+))?\) for \dm\d\ds; a trial's line comes "
                          "once it is trained, compiled and measured", line) for line in quiet]
    assert quiet and all(shown), untaught
    # with the stage its worker is in, from storage as `status` reads it
    stages = [m.group(2) for m in shown if m.group(2)]
    assert stages and set(stages) <= set(STAGE_WORDS.values()), untaught
    assert untaught.index(quiet[0]) < next(i for i, line in enumerate(untaught) if line.startswith("[1/1] trial 0"))


def test_a_long_training_shows_its_first_epoch_then_a_line_per_progress_interval():
    """A 16-epoch teacher of 4 s epochs printed epoch 1, nothing for 26 s, then every epoch: the interval was
    counted from the start, not from the last line shown."""
    from search.workers import PROGRESS_S, EpochProgress

    now = [100.0]
    progress = EpochProgress("teacher", 16, clock=lambda: now[0])
    shown = []
    for epoch in range(1, 16):
        now[0] += 4.0
        if line := progress.line(epoch):
            shown.append(line)
    every = int(PROGRESS_S // 4) + (PROGRESS_S % 4 > 0)  # epochs between two lines
    assert [int(line.split("/")[0].split()[-1]) for line in shown] == list(range(1, 16, every))
    assert shown[0] == "teacher: epoch 1/16, 0m04s so far, ETA 1m00s"
    assert progress.elapsed() == 60.0


def _cli(runs, *args):
    return [sys.executable, "-m", "search.cli", "--runs-dir", str(runs), *args]


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2"])
def test_a_resumed_sampler_draws_new_knobs_not_the_first_runs_again(tmp_path, sampler):
    """Each driver makes its sampler anew; seeded as at the start, its random draws repeated the first run's, and a
    resume's first trials were earlier knobs again (reused results that spent trials of the budget)."""
    storage = default_storage(tmp_path)
    spec = SearchSpec(name="again", trials=8, budget=TINY, recipes=False, sampler=sampler)

    def draw(study, spec, n):
        drawn = []
        for _ in range(n):
            trial = study.ask()
            drawn.append(suggest_candidate(trial, spec).key())
            study.tell(trial, [0.5, 1.0, 1.0, 1.0], skip_if_finished=True)
        return drawn

    first = draw(create_study(spec, storage, resume=False), spec, 3)
    second = draw(create_study(spec, storage, resume=True), spec, 3)
    assert not set(first) & set(second), (first, second)
    # and the same resume, made again, draws the same: a seeded search stays reproducible
    again = dataclasses.replace(spec, name="again2")
    assert draw(create_study(again, storage, resume=False), again, 3) == first
    assert draw(create_study(again, storage, resume=True), again, 3) == second


def test_resume_reruns_interrupted_candidates_but_not_half_drawn_knobs(tmp_path):
    storage = default_storage(tmp_path)
    spec = SearchSpec(name="halfway", trials=4, budget=TINY)
    study = create_study(spec, storage, resume=False)
    running = study.ask()
    suggest_candidate(running, spec)  # dispatched when the driver died
    half = study.ask()
    half.suggest_categorical("precision", list(spec.space.precision))  # killed while drawing the rest
    existing = len(study.trials)  # the recipes still waiting, and the two interrupted trials
    from search.export import unfinished

    # an export now would say its winner may still change, and why
    assert unfinished(study, spec) == "the search was still running (2 trial(s) in progress)"
    assert requeue_interrupted(study) == 2
    assert unfinished(study, spec) == "the search had stopped before its trial budget (0 of 4)"
    trials = load_study("halfway", storage).trials
    assert all(trials[t.number].state.name == "FAIL" and trials[t.number].user_attrs["requeued"]
               for t in (running, half))
    assert "not re-run" in trials[half.number].user_attrs["error"]
    requeued = [t for t in trials if t.state.name == "WAITING" and t.number >= existing]
    assert [t.system_attrs["fixed_params"] for t in requeued] == [trials[running.number].params]
    assert trials[running.number].user_attrs["recipe"] == "fp16 only"  # the first trial of a search is a recipe
    assert requeued[0].user_attrs["recipe"] == "fp16 only"  # and its re-run still says so
    # in MLflow an interrupted trial is KILLED, not a failure, and so is a search whose driver was stopped
    from search.tracking import default_tracking_uri
    from search.workers import LOGGING_NICENESS, _Tracking

    assert [r.interrupted for r in rows(load_study("halfway", storage))] == [True, True]
    timings = {"logging": 0.0, "logging_background": 0.0}
    tracking = _Tracking(spec, load_study("halfway", storage), default_tracking_uri(tmp_path), tmp_path,
                         lambda line: None, timings)
    tracking.ready()
    # MLflow's thread yields the cores the workers time candidates on to them (Linux: a niceness per thread)
    here = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, tracking._thread.native_id) == min(19, here + LOGGING_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, 0) == here  # the driver's own thread is left as it is
    tracking.on_trial()
    client = MlflowClient(default_tracking_uri(tmp_path))
    _wait_for(lambda: len(client.search_runs([tracking.tracker.experiment_id])) == 3, 60, "two trial runs")
    tracking.abandon("KILLED")
    statuses = {r.info.run_name: r.info.status for r in client.search_runs([tracking.tracker.experiment_id])}
    assert statuses == {"search halfway": "KILLED", f"trial {running.number}": "KILLED",
                        f"trial {half.number}": "KILLED"}
    # reading a stopped search (status catches MLflow up) does not make its run FINISHED, nor RUNNING again
    from search.cli import main

    assert main(["--runs-dir", str(tmp_path), "status", "halfway", "--tracking-uri",
                 default_tracking_uri(tmp_path)]) == 0
    assert client.get_run(tracking.tracker.parent_id).info.status == "KILLED"


def test_a_stop_that_cuts_a_storage_commit_short_still_leaves_no_trial_running(tmp_path):
    """SIGTERM can land inside an Optuna commit, leaving that transaction open: the stopping driver still queues
    its running trial again. (Stops timed at random also left "database is locked" in about 1 in 20: the reason
    ``settle_stopped`` closes the pooled connections and tries twice.)"""
    from sqlalchemy import event

    from search.errors import Terminated
    from search.study import settle_stopped

    storage = default_storage(tmp_path)
    spec = SearchSpec(name="cut", trials=2, budget=TINY, recipes=False)
    study = create_study(spec, storage, resume=False)
    suggest_candidate(study.ask(), spec)
    engine = study._storage._backend.engine
    cut = []

    def signal_arrives(connection):
        if not cut:
            cut.append(True)
            raise Terminated(signal.SIGTERM)

    event.listen(engine, "commit", signal_arrives)
    with pytest.raises(Terminated):
        study.set_user_attr("beat", 1)  # the driver's beat, say
    settle_stopped(study)
    trials = load_study("cut", storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"] and trials[0].user_attrs["requeued"]


@pytest.mark.slow  # ~90 s; by default the PostgreSQL test interrupts and resumes a search from the command line
def test_an_interrupted_search_says_how_to_go_on_and_resumes_without_repeating_finished_trials(tmp_path):
    """Ctrl-C, as a user stops a search: what was kept and the command to resume are printed, MLflow's search run
    says KILLED rather than RUNNING, a resume that would change the search is refused, and the resume re-runs the
    interrupted candidates only. A driver killed outright leaves its trials RUNNING the same way
    (test_resume_reruns_interrupted_candidates_but_not_half_drawn_knobs)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "resumable", "trials": 5, "workers": 2, "budget": {"epochs": 2, "finetune_epochs": 1,
                                                                   "prune_steps": 1, "timing_repeats": 5,
                                                                   "front_tuning_minutes": 0},
        "space": {"precision": ["fp32", "int8-ptq"], "width": [0.25, 0.5]}}))
    storage = default_storage(tmp_path)
    err = tmp_path / "driver.err"
    with open(err, "w") as stderr:  # SIGINT as a terminal sends it; a test runner may have it ignored
        driver = subprocess.Popen(_cli(tmp_path, "submit", "--spec", str(spec)), stdout=subprocess.DEVNULL,
                                  stderr=stderr, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            _wait_for(lambda: len(complete_trials(storage, "resumable")) >= 2, 240, "two finished trials")
            driver.send_signal(signal.SIGINT)
            driver.wait(timeout=120)
        finally:
            driver.kill()
    before = {t.number: t.values for t in complete_trials(storage, "resumable")}
    assert 2 <= len(before) < 5 and driver.returncode == 130
    said = err.read_text()
    assert "search 'resumable' interrupted before its trial budget (" in said
    assert f"): {len(before)} finished trial(s) are kept in {storage}" in said
    assert f"--runs-dir {tmp_path} submit --name resumable --resume" in said
    from search.tracking import default_tracking_uri

    client = MlflowClient(default_tracking_uri(tmp_path))
    exp = client.get_experiment_by_name("resumable")
    parent = lambda: next(r for r in client.search_runs([exp.experiment_id])  # noqa: E731
                          if r.data.tags.get("edgesearch.role") == "search")
    assert parent().info.status == "KILLED"
    refused = subprocess.run(_cli(tmp_path, "submit", "--name", "resumable", "--resume", "--epochs", "3"),
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--epochs would change what its finished trials mean" in refused.stderr
    done = subprocess.run(_cli(tmp_path, "submit", "--name", "resumable", "--resume", "--workers", "1"),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    study = load_study("resumable", storage)
    complete = {t.number: t.values for t in study.trials if t.state.name == "COMPLETE"}
    assert all(complete[n] == v for n, v in before.items())  # finished trials kept, not re-run
    counted = [r for r in rows(study) if not r.interrupted]
    assert len(counted) == 5
    interrupted = [t for t in study.trials if t.user_attrs.get("requeued")]
    assert interrupted, "the driver was stopped with candidates on both workers"
    knobs = knob_names(stored_spec(study))  # stopped while drawing its knobs: nothing to re-run
    for t in interrupted:  # interrupted trials were re-run with the same knobs
        assert not set(t.params) >= knobs or any(o.params == t.params and o.state.name == "COMPLETE"
                                                 for o in study.trials if o.number > t.number)
    assert "feasible Pareto front" in done.stdout
    assert "order: screen every candidate before training; started from " in done.stdout  # the recipes ran first
    assert f"0 failed, {len(interrupted)} interrupted by a stopped driver" in done.stdout
    children = {int(r.data.tags["edgesearch.trial"]): r for r in client.search_runs([exp.experiment_id])
                if "mlflow.parentRunId" in r.data.tags}
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "FAIL")]
    assert sorted(children) == [t.number for t in finished]  # MLflow and Optuna agree at the end
    for t in finished:
        assert children[t.number].info.status == ("KILLED" if t.user_attrs.get("requeued") else "FINISHED")
        if t.state.name == "COMPLETE":
            assert children[t.number].data.metrics["accuracy"] == t.values[0]
    assert parent().info.status == "FINISHED"


@pytest.fixture(scope="module")
def ray_head(free_port):
    """A real `ray start --head` cluster with token authentication, stopped at the end."""
    yield from ray_cluster(free_port)


# where nodes can share nothing, that test searches on a cluster it starts and is refused more workers than it has
@pytest.mark.slow if CAN_SHARE_NOTHING else pytest.mark.usefixtures()
@pytest.mark.own_ray
def test_search_on_an_existing_cluster(ray_head, tmp_path):
    spec = SearchSpec(name="on-cluster", trials=2, workers=2, budget=TINY, space=FAST_SPACE)
    outcome = run_search(spec, tmp_path, storage_url=default_storage(tmp_path), address=ray_head["gcs"],
                         report=lambda line: None)
    assert len(outcome.rows) == 2 and all(r.state == "COMPLETE" for r in outcome.rows)
    too_many = SearchSpec(name="too-many", trials=1, workers=3, budget=TINY)
    with pytest.raises(Exception, match="'workers' field .* at most the 2"):
        run_search(too_many, tmp_path, storage_url=default_storage(tmp_path), address=ray_head["gcs"],
                   report=lambda line: None)


def test_a_wrong_cluster_address_is_refused_before_any_work_and_leaves_the_name_free(tmp_path, capsys, free_port):
    """Ray took about 4 minutes to give up on an address nothing answered at, and the empty study it left took the
    name; a process already on a cluster (this run's shared one, as a notebook's) searched there, not at the
    address it was given."""
    import socket

    from search.cli import main
    from search.tracking import PARENT_ATTR, default_tracking_uri

    runs = tmp_path / "runs"
    nowhere = f"127.0.0.1:{free_port()}"
    assert main(["--runs-dir", str(runs), "submit", "--name", "here", "--trials", "1", "--address", nowhere]) == 2
    said = capsys.readouterr()
    assert said.err.count("\n") == 1 and f"Nothing answers at the Ray cluster address {nowhere}" in said.err
    assert "ray start --head" in said.err
    # a Ray Client address: a search driven through one stalled after its first lines
    assert main(["--runs-dir", str(runs), "submit", "--name", "here", "--trials", "1", "--address",
                 "ray://127.0.0.1:10001"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ray://127.0.0.1:10001 is a Ray Client address" in err and "--detach" in err
    # a dashboard's address, as --detach takes it, passed without --detach
    assert main(["--runs-dir", str(runs), "submit", "--name", "here", "--trials", "1", "--address",
                 "http://127.0.0.1:8265"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HOST:6379" in err
    assert "address of a Ray cluster's dashboard, which takes a search submitted with --detach" in err
    assert main(["--runs-dir", str(runs), "list"]) == 0 and "here" not in capsys.readouterr().out

    spec = SearchSpec(name="here", trials=1, workers=1, recipes=False, budget=TINY, latency_budget_ms=100.0,
                      space=SearchSpace(precision=("fp32",), width=(0.25, 0.25), sparsity=(0.0, 0.0)))
    storage, uri = default_storage(runs), default_tracking_uri(runs)
    with socket.create_server(("127.0.0.1", 0)) as other:  # something answers there, but not this process's cluster
        elsewhere = f"127.0.0.1:{other.getsockname()[1]}"
        with pytest.raises(ConfigError, match=f"already connected to the Ray cluster at .*, not the one at "
                                              f"{elsewhere}: call ray.shutdown"):
            run_search(spec, runs, storage_url=storage, address=elsewhere, tracking_uri=uri, report=lambda line: None)
    assert "here" not in [s.study_name for s in optuna.get_all_study_summaries(storage)]
    # the same search without the address: refused nothing, and MLflow holds its one search run
    outcome = run_search(spec, runs, storage_url=storage, tracking_uri=uri, report=lambda line: None)
    assert [r.state for r in outcome.rows] == ["COMPLETE"]
    client = MlflowClient(uri)
    logged = client.search_runs([client.get_experiment_by_name("here").experiment_id],
                                "tags.`edgesearch.role` = 'search'")
    assert [r.info.run_id for r in logged] == [load_study("here", storage).user_attrs[PARENT_ATTR]]


@pytest.mark.slow  # ~55 s on a slow CPU: a second Ray head; nodes and resources run by default in test_share_nothing
@pytest.mark.own_ray
def test_host_candidates_stay_on_nodes_of_the_submitted_cpu_kind(free_port, tmp_path):
    """A cluster whose only node says it is another CPU kind: host figures would mix kinds, so the search is refused
    with what to do; an emulated target runs there."""
    from hardware_targets.host import cpu_kind_resource
    from search.errors import ConfigError

    other = cpu_kind_resource("0" * 10)
    head = ray_cluster(free_port, "--resources", json.dumps({other: 2}))
    cluster = next(head)
    try:
        host = SearchSpec(name="other-kind", trials=1, workers=1, budget=TINY, space=FAST_SPACE, recipes=False)
        with pytest.raises(ConfigError, match=f"no node of that kind that says so \\(kinds found: {'0' * 10}\\)"):
            run_search(host, tmp_path, storage_url=default_storage(tmp_path), address=cluster["gcs"],
                       report=lambda line: None)
        assert "other-kind" not in {st.study_name for st in optuna.get_all_study_summaries(default_storage(tmp_path))}
        emulated = dataclasses.replace(host, name="emulated-anywhere", target="rpi4")
        outcome = run_search(emulated, tmp_path, storage_url=default_storage(tmp_path), address=cluster["gcs"],
                             report=lambda line: None)
        assert [r.state for r in outcome.rows] == ["COMPLETE"]
    finally:
        next(head, None)


@pytest.mark.slow  # a Ray head of its own (~20 s); the detached search runs in the test below, slow too
@pytest.mark.own_ray
def test_a_cluster_whose_python_lacks_edgesearch_is_said_when_the_search_is_submitted(free_port, tmp_path):
    """A cluster started from a shell without edgesearch's environment: `submit --detach` said "submitted", and the
    job failed with `python -m search.cli`'s "No module named 'search'", found by a later `status`."""
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys._base_executable)  # the interpreter the environment was made from, without it
    head = ray_cluster(free_port, python_dir=bare)
    cluster = next(head)
    try:
        done = subprocess.run([sys.executable, "-m", "search.cli", "--runs-dir", str(tmp_path / "client"), "submit",
                               "--name", "bare", "--trials", "1", "--address", cluster["dashboard"], "--detach"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stdout + done.stderr
        assert ("The search failed on the cluster (Ray job raysubmit_" in done.stderr and
                f"The cluster's python ({bare / 'python'}) does not have edgesearch installed." in done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    finally:
        next(head, None)


def _client_sharing_only_the_network(hidden, own, runs, env):
    """The CLI as a client machine runs it: in its own mount namespace, a tmpfs hides ``hidden`` (the cluster's
    runs folder and MLflow's stores) and another makes ``own`` a folder the cluster cannot see."""
    def run(*argv, prepare=""):
        script = (f"mount -t tmpfs tmpfs '{hidden}' && mount -t tmpfs tmpfs '{own}' && {prepare} "
                  'exec "$0" "$@"')
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable,
                               "-m", "search.cli", "--runs-dir", str(runs), *argv],
                              capture_output=True, text=True, env=env, timeout=900)
    return run


@pytest.mark.slow  # ~3 minutes on a slow CPU; searching on an existing cluster runs by default (test_share_nothing)
@pytest.mark.own_ray
@pytest.mark.skipif(not CAN_SHARE_NOTHING,
                    reason="a private mount namespace needs root and unshare (the test machines have both)")
def test_a_client_sharing_only_the_network_submits_follows_stops_resumes_and_exports(
        ray_head, free_port, tmp_path_factory, tmp_path, digits):
    from ray.job_submission import JobSubmissionClient

    from hardware_targets.profile import PROFILE_DIR
    from objectives.accuracy import accuracy, predict_onnx
    from search.data import load_dataset
    from search.stages.export import ort_session
    from tests.servers import mlflow_server

    hidden, own = tmp_path_factory.mktemp("cluster"), tmp_path_factory.mktemp("client-own")
    data = tmp_path / "mine.npz"
    np.savez(data, x_train=digits.x_train, y_train=digits.y_train, x_test=digits.x_test, y_test=digits.y_test)
    with mlflow_server(f"sqlite:///{hidden}/mlflow.db", hidden / "artifacts", free_port()) as tracking:
        client = _client_sharing_only_the_network(hidden, own, tmp_path / "client", ray_head["env"])
        address = ray_head["dashboard"]
        # the user's dataset and profile exist only in the client's own folder
        sub = client("submit", "--name", "svc", "--dataset", f"{own}/mine.npz", "--target", f"{own}/my-host.yaml",
                     "--trials", "8", "--workers", "1", "--epochs", "2", "--front-tuning-minutes", "0",
                     "--address", address, "--detach", "--cluster-runs-dir", str(hidden / "runs"),
                     "--tracking-uri", tracking,
                     prepare=f"cp '{data}' '{own}/mine.npz' && cp '{PROFILE_DIR / 'host.yaml'}' '{own}/my-host.yaml' &&")
        assert sub.returncode == 0, sub.stderr
        assert "raysubmit_" in sub.stdout
        jobs = JobSubmissionClient(address)

        def newest_status():
            mine = [j for j in jobs.list_jobs() if (j.metadata or {}).get("edgesearch_command") == "submit"
                    and j.metadata.get("edgesearch_search") == "svc"]
            newest = max(mine, key=lambda j: j.start_time)
            assert newest.status.value != "FAILED", jobs.get_job_logs(newest.submission_id)[-3000:]
            return str(newest.status.value)

        storage = f"sqlite:///{hidden}/runs/optuna.db"
        _wait_for(lambda: newest_status() and (hidden / "runs" / "optuna.db").is_file()
                  and len(complete_trials(storage, "svc")) >= 1, 300, "the job's first trial")
        twice = client("submit", "--name", "svc", "--address", address, "--detach")
        assert twice.returncode == 2 and "already running" in twice.stderr
        listed = client("list", "--address", address)
        assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[:2] == ["svc", "RUNNING"]
        status = client("status", "svc")  # the cluster this client submitted to is remembered
        assert status.returncode == 0, status.stderr
        assert "Ray job raysubmit_" in status.stdout and "of 8 trials of training budget spent" in status.stdout
        stop = client("stop", "svc", "--address", address)
        assert stop.returncode == 0 and "--resume --detach" in stop.stdout
        _wait_for(lambda: newest_status() == "STOPPED", 120, "the job to stop")
        logs = client("logs", "svc", "--address", address)
        assert logs.returncode == 0 and "trial" in logs.stdout
        before = {t.number: t.values for t in complete_trials(storage, "svc")}
        resumed = client("submit", "--name", "svc", "--resume", "--detach")  # to the cluster it was submitted to
        assert resumed.returncode == 0, resumed.stderr
        _wait_for(lambda: newest_status() == "SUCCEEDED", 600, "the resumed job to finish")
        study = load_study("svc", storage)
        assert spent_budget(study) >= 8 and finished_count(study) >= 8  # the resume ran the rest of the search
        assert all(study.trials[n].values == v for n, v in before.items())  # and kept what was done
        # the cluster keeps its copies of the inputs, which the stored spec names
        kept = stored_spec(study).dataset
        assert kept.startswith(str(hidden / "runs")) and np.load(kept)["y_test"].tolist() == digits.y_test.tolist()

        out = tmp_path / "exported"
        exported = client("export", "--search", "svc", "--out", str(out), "--address", address)
        assert exported.returncode == 0, exported.stderr
        card = json.loads((out / "model_card.json").read_text())
        # the compressed copies came back through MLflow with the rest, and the output names them
        assert "to send to a device: model.onnx.gz, model.so.gz" in exported.stdout
        assert gzip.decompress((out / "model.onnx.gz").read_bytes()) == (out / "model.onnx").read_bytes()
        dataset = load_dataset(str(data))
        got = accuracy(predict_onnx(ort_session(out / "model.onnx"), dataset.x_test, card["input"]["dtype"]),
                       dataset.y_test)
        assert got == card["verification"]["recorded_onnxruntime_test_accuracy"]
        version = MlflowClient(tracking).get_model_version("edgesearch-svc", card["registered_version"])
        assert version.source.startswith(f"runs:/{card['mlflow_run_id']}/")
    # this client wrote only its note of where the search went: no store, no trial files
    assert sorted(p.relative_to(tmp_path / "client").as_posix() for p in (tmp_path / "client").rglob("*")
                  if p.is_file()) == ["searches/svc/job.json"]

def test_a_search_of_imbalanced_classes_trains_them_balanced_and_ranks_by_balanced_accuracy(tmp_path, capsys,
                                                                                             monkeypatch):
    from search.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rng = np.random.default_rng(1)
    y = np.array([0] * 180 + [1] * 20)  # 9:1, as wake-word windows against background
    x = rng.normal(size=(200, 1, 32)).astype(np.float32)
    x[y == 1, 0, :8] += 1.5
    np.savez(tmp_path / "skewed.npz", x=x, y=y)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "skewed", "dataset": str(tmp_path / "skewed.npz"), "trials": 3, "workers": 1,
        "latency_budget_ms": 1.0, "class_weight": "balanced", "metric": "balanced_accuracy",
        "space": {"precision": ["fp32"], "sparsity": [0.0, 0.0], "alpha": [1.0, 1.0], "width": [0.25, 0.5]},
        # 10 epochs: in 2, every candidate still predicted the larger class (balanced 0.5), which is infeasible
        "budget": dataclasses.asdict(dataclasses.replace(TINY, epochs=10))}))
    assert main(["--runs-dir", str(tmp_path), "submit", "--spec", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "2 classes, imbalanced (training samples per class" in out.splitlines()[0]
    assert "the training loss weighs each class by its rarity" in out.splitlines()[0]
    assert "; the front ranks by balanced accuracy (mean recall per class)" in out
    assert "hypervolume of the feasible front: " in out and "0-1 scale (balanced accuracy; latency" in out
    trials = [line for line in out.splitlines() if "] trial " in line and "acc " in line]
    assert trials and all("(balanced " in line for line in trials)
    study = load_study("skewed", default_storage(tmp_path))
    assert study.metric_names[0] == "balanced_accuracy"
    best = min((r for r in rows(study) if r.feasible), key=lambda r: (-r.value("balanced_accuracy"),
                                                                      r.value("latency_ms_p90")))
    assert all(t.values[0] == t.user_attrs["metric:balanced_accuracy"][0] for t in study.trials if t.values)
    assert f"best within budget: trial {best.number}," in out and "(balanced " in out.split("best within")[1]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = [r for r in client.search_runs([client.get_experiment_by_name("skewed").experiment_id])
              if "mlflow.parentRunId" not in r.data.tags][0]
    assert parent.data.metrics["best_balanced_accuracy"] == best.value("balanced_accuracy")
    # a resume cannot change what the finished trials were ranked by
    assert main(["--runs-dir", str(tmp_path), "submit", "--name", "skewed", "--resume", "--metric", "accuracy"]) == 2
    assert "--metric" in capsys.readouterr().err
    # the dataset regenerated in place: the stored figures hold for the data as it was, so neither a resume nor an
    # export goes on (the export failed its accuracy check with figures only)
    np.savez(tmp_path / "skewed.npz", x=x * 2, y=y)
    changed = f"Dataset {tmp_path / 'skewed.npz'} has changed since search 'skewed' started (content "
    assert main(["--runs-dir", str(tmp_path), "submit", "--name", "skewed", "--resume", "--trials", "4"]) == 2
    assert changed in capsys.readouterr().err
    assert main(["--runs-dir", str(tmp_path), "export", "--search", "skewed", "--out", str(tmp_path / "out")]) == 2
    assert changed in capsys.readouterr().err and not (tmp_path / "out").exists()
    np.savez(tmp_path / "skewed.npz", x=x, y=y)  # restored: the export reproduces the recorded figures
    assert main(["--runs-dir", str(tmp_path), "export", "--search", "skewed", "--out", str(tmp_path / "out")]) == 0
