"""Whole searches, budget first: recipes lead, screening, halving, the floor, and each candidate once on the front."""

import dataclasses
import json
import re
from types import SimpleNamespace

import optuna
import pytest

from objectives.latency import noise_ms
from objectives.pareto import normalised_hypervolume
from search.candidate import Candidate
from search.cli import main
from search.errors import ConfigError
from search.spec import SearchSpace, SearchSpec
from search.study import (
    BOUNDS_ATTR, FLOOR_ATTR, RECIPES, SHIPPING_ATTR, load_study, rows, spent_budget, stored_spec,
)
from search.tracking import default_tracking_uri
from search.workers import _halving_position, _shapes_ruled_out, run_search
from tests.search.conftest import SHIP, TINY

NO_FP16 = SearchSpace(precision=("fp32", "int8-ptq", "int8-qat"))
ORDER = ("accuracy", "latency_ms_p90", "size_bytes", "energy_mj")


def _weakly_dominates(a, b) -> bool:
    """Written out here, not taken from the code under test: a is at least as good as b in every objective."""
    return (a.value("accuracy") >= b.value("accuracy") and all(a.value(n) <= b.value(n) for n in ORDER[1:]))


def test_recipes_come_first_and_the_front_covers_every_feasible_recipe(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # status would look there first
    spec = SearchSpec(name="recipes", trials=6, workers=2, latency_budget_ms=0.1, budget=TINY, space=NO_FP16)
    outcome = run_search(spec, tmp_path, storage_url=f"sqlite:///{tmp_path}/o.db", report=lambda line: None)
    trials = sorted(load_study("recipes", f"sqlite:///{tmp_path}/o.db").trials, key=lambda t: t.number)
    # the host's kernels do not skip zeros, so the guide's pruning recipes remove channels there
    expected = [label + (" (structured)" if "sparsity" in change else "") for label, change in RECIPES.items()
                if change.get("precision", "fp32") != "fp16" and change.get("sparsity", 0) <= 0.75]
    assert [t.user_attrs.get("recipe") for t in trials[:len(expected)]] == expected
    assert trials[0].user_attrs["candidate"]["precision"] == "int8-ptq"
    assert trials[2].user_attrs["candidate"]["pruning"] == "structured"
    assert trials[2].user_attrs["candidate"]["sparsity"] == 0.5
    assert trials[3].user_attrs["candidate"] == {"precision": "fp32", "sparsity": 0.0, "pruning": "structured",
                                                 "temperature": 4.0, "alpha": 0.5, "width": 0.5}
    assert all(t.params.get("pruning", "structured") == "structured" for t in trials)
    # after them only the sampler's trials, and any recipe the budget ruled out, one width step narrower
    assert all(", width " in t.user_attrs.get("recipe", ", width ") for t in trials[len(expected):])
    recipes = [r for r in outcome.rows if r.recipe and r.feasible]
    assert recipes, "digits recipes fit 0.1 ms on any of the project's CPUs"
    for recipe in recipes:
        assert any(_weakly_dominates(f, recipe) for f in outcome.front), recipe.recipe
    assert 0 < outcome.hypervolume <= 1
    bounds = load_study("recipes", f"sqlite:///{tmp_path}/o.db").user_attrs[BOUNDS_ATTR]
    assert bounds["values"][0] == 0.1 and "widest model" in bounds["source"]
    # the widest model lies inside the box: at perfect accuracy it adds volume (on the bound itself it added none)
    widest = float(re.search(r"size: 1.1x the widest model's (\d+) B", bounds["source"]).group(1))
    assert bounds["values"][1] == pytest.approx(1.1 * widest)
    assert normalised_hypervolume([[1.0, 0.05, widest, 0.5 * bounds["values"][2]]], bounds["values"]) > 0
    # run without MLflow, the search is read by `status` without being logged to it (no outage to catch up on)
    assert main(["--runs-dir", str(tmp_path), "status", "recipes", "--storage", f"sqlite:///{tmp_path}/o.db"]) == 0
    printed = capsys.readouterr().out
    assert "feasible Pareto front" in printed and "MLflow was missing" not in printed
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    # the shipping stage was off; resumed with it on, only the stage runs (no trial trains again), and status
    # reads the budget the resume stored
    def trained(rows_):
        return {r.number: (r.state, r.knobs, r.metrics.get("accuracy")) for r in rows_}

    lines, before = [], trained(outcome.rows)
    shipped = run_search(dataclasses.replace(spec, budget=SHIP), tmp_path, storage_url=f"sqlite:///{tmp_path}/o.db",
                         resume=True, report=lines.append)
    assert any(line.startswith("shipping stage: not finished before; it goes on") for line in lines)
    assert trained(shipped.rows) == before  # nothing trained again
    study = load_study("recipes", f"sqlite:///{tmp_path}/o.db")
    assert study.user_attrs[SHIPPING_ATTR] == "done" and any(r.shipped for r in shipped.rows)
    assert stored_spec(study).budget == SHIP
    assert main(["--runs-dir", str(tmp_path), "status", "recipes", "--storage", f"sqlite:///{tmp_path}/o.db"]) == 0
    assert "; done\n" in capsys.readouterr().out


@pytest.mark.slow  # reuse runs by default in test_export_errors' repeated trial
def test_repeats_wait_reuse_and_never_appear_twice_on_the_front_even_after_a_resume(tmp_path):
    one = SearchSpace(precision=("fp32",), pruning=("unstructured",), sparsity=(0.0, 0.0), temperature=(1.0, 1.0),
                      alpha=(1.0, 1.0), width=(0.25, 0.25))
    spec = SearchSpec(name="dupes", trials=3, workers=2, budget=TINY, space=one, recipes=False)
    storage, uri = f"sqlite:///{tmp_path}/o.db", default_tracking_uri(tmp_path)
    lines = []
    run_search(spec, tmp_path, storage_url=storage, report=lines.append, tracking_uri=uri)
    trials = load_study("dupes", storage).trials
    # trials 1 and 2 were asked while trial 0 ran on the other worker: they waited for it instead of running twice
    assert [t.user_attrs.get("reused_from_trial") for t in trials] == [None, 0, 0]
    assert [t.user_attrs["stage_seconds"] == {} for t in trials] == [False, True, True]
    resumed = run_search(spec.__class__(**{**spec.__dict__, "trials": 5}), tmp_path, storage_url=storage,
                         resume=True, report=lines.append, tracking_uri=uri)
    trials = load_study("dupes", storage).trials
    assert [t.user_attrs.get("reused_from_trial") for t in trials] == [None, 0, 0, 0, 0]  # looked up in storage
    assert [r.number for r in resumed.front] == [0] and len(resumed.rows) == 5
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("dupes")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "edgesearch.trial" in r.data.tags]
    assert len(children) == 5
    assert [r.data.tags["edgesearch.trial"] for r in children if r.data.tags["on_pareto_front"] == "true"] == ["0"]
    assert sorted(r.data.tags.get("reused_from_trial", "-") for r in children) == ["-", "0", "0", "0", "0"]
    parent = next(r for r in runs if r.data.tags.get("edgesearch.role") == "search")
    front = json.loads((tmp_path / "mlartifacts" / "dupes" / parent.info.run_id / "artifacts" /
                        "pareto_front.json").read_text())
    assert [row["trial"] for row in front] == [0]


@pytest.mark.slow  # 1-2 minutes loaded; the halving rule runs by default in the test below, screening in test_screen
def test_screening_and_halving_in_a_search(tmp_path):
    trials_of_budget = 4  # a first-rung stop counts a third, so a dozen candidates train for the pool to rank
    spec = SearchSpec(name="halving", trials=trials_of_budget, workers=2, latency_budget_ms=0.006, budget=TINY,
                      recipes=False, halving=True, space=SearchSpace(precision=("fp32", "int8-ptq"), width=(0.25, 2.0)))
    storage = f"sqlite:///{tmp_path}/o.db"
    lines = []
    outcome = run_search(spec, tmp_path, storage_url=storage, report=lines.append)
    trials = {t.number: t for t in load_study("halving", storage).trials}
    screened = [t for t in trials.values() if t.user_attrs.get("stopped") == "screened"]
    assert screened, "width-2 candidates are several times over a 6 us budget on any of the project's CPUs"
    for t in screened:
        assert t.state == optuna.trial.TrialState.PRUNED and t.constraints["latency_budget"] > 0
        assert not {"train", "distill", "prune"} & set(t.user_attrs["stage_seconds"])
    stopped = [t for t in trials.values() if str(t.user_attrs.get("stopped", "")).startswith("the first rung")]
    full = [t for t in trials.values() if t.state.name == "COMPLETE"]
    assert all(t.user_attrs["rung"] == "full budget" for t in full)
    assert all(t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["rung"] == "first rung" for t in stopped)
    assert len(screened) + len(stopped) + len(full) == len(trials)
    # the budget counts training: screening is free, a first-rung stop a third, a promoted candidate 4/3
    assert sum(t.user_attrs["rung"] == "full budget" for t in full) == len(full)
    spent = spent_budget(load_study("halving", storage))
    # a repeat of earlier knobs reuses their result and counts as one, whatever rung the original stopped at
    reused = [t for t in trials.values() if "reused_from_trial" in t.user_attrs]
    assert spent == pytest.approx(len(reused) + sum(1 / 3 for t in stopped if t not in reused)
                                  + sum(4 / 3 for t in full if t not in reused))
    capped = len(trials) >= 5 * trials_of_budget  # at most 5 candidates asked per trial of budget, most screened out
    # the last ask comes while spent + running < the budget; the (at most two) running ones may each end up costing 4/3
    assert (trials_of_budget - 1e-9 <= spent or capped) and spent < trials_of_budget + 5 / 3 + 1e-9
    assert capped == any(line.startswith(f"stopped after {5 * trials_of_budget} candidates") for line in lines)
    assert any(line.startswith("screened out before training:") for line in lines)
    assert all(r.number in {t.number for t in full} for r in outcome.front)


def test_halving_keeps_the_best_third_by_rank_then_accuracy():
    pool = [(0.9, 0.01), (0.8, 0.005), (0.7, 0.02), (0.95, 0.03), (0.6, 0.04)]
    # ranks on (accuracy up, latency down): (0.9, .01), (0.8, .005), (0.95, .03) are non-dominated;
    # (0.7, .02) is dominated by (0.9, .01) only; (0.6, .04) by everything
    assert _halving_position(pool, (0.95, 0.03)) == 0
    assert _halving_position(pool, (0.9, 0.01)) == 1
    assert _halving_position(pool, (0.8, 0.005)) == 2
    assert _halving_position(pool, (0.7, 0.02)) == 3
    assert _halving_position(pool, (0.6, 0.04)) == 4


@pytest.mark.slow  # ~45 s loaded; constraints in a search run by default (latency, in every search test)
def test_accuracy_floor_is_a_constraint(tmp_path):
    space = SearchSpace(precision=("fp32",), width=(0.25, 0.5), sparsity=(0.0, 0.9))
    storage = f"sqlite:///{tmp_path}/o.db"
    spec = SearchSpec(name="floor", trials=4, workers=2, budget=TINY, space=space, max_accuracy_drop=0.2)
    lines = []
    outcome = run_search(spec, tmp_path, storage_url=storage, report=lines.append)
    study = load_study("floor", storage)
    floor = study.user_attrs[FLOOR_ATTR]
    baseline = json.loads(next((tmp_path / "baselines").glob("digits-*.json")).read_text())
    assert floor["baseline"] == baseline["accuracy"] and floor["value"] == pytest.approx(0.8 * baseline["accuracy"])
    for r in rows(study):
        if r.state == "COMPLETE":
            assert (r.value("accuracy") >= floor["value"]) == (study.trials[r.number].constraints["accuracy_floor"] <= 0)
            assert not r.feasible or r.value("accuracy") >= floor["value"]
    assert any("accuracy floor" in line for line in lines)
    from search.plots import pareto_figures

    paths = pareto_figures(outcome.rows, outcome.front, spec, tmp_path, [0.05, 1e5, 1.0], floor["value"])
    html = next(p for p in paths if p.name == "interactive.html").read_text()
    assert f"accuracy floor {floor['value']:.3f}" in html


@pytest.mark.slow  # the p90 rule runs by default in tests/objectives
def test_a_candidate_timed_near_the_budget_is_timed_again_alone(tmp_path):
    one = SearchSpace(precision=("fp32",), pruning=("unstructured",), sparsity=(0.0, 0.0), temperature=(1.0, 1.0),
                      alpha=(1.0, 1.0), width=(0.5, 0.5))
    storage = f"sqlite:///{tmp_path}/o.db"
    first = run_search(SearchSpec(name="probe", trials=1, workers=1, budget=TINY, space=one, recipes=False),
                       tmp_path, storage_url=storage, report=lambda line: None)
    p90 = first.rows[0].value("latency_ms_p90")
    lines = []
    run_search(SearchSpec(name="at-budget", trials=1, workers=1, budget=TINY, space=one, recipes=False,
                          latency_budget_ms=p90), tmp_path, storage_url=storage, report=lines.append)
    trial = load_study("at-budget", storage).trials[0]
    metrics = {k[7:]: v for k, v in trial.user_attrs.items() if k.startswith("metric:")}
    if trial.user_attrs.get("retimed"):  # the figure timed first lay within its noise of the budget
        median, p90_loaded = metrics["latency_ms_median_loaded"][0], metrics["latency_ms_p90_loaded"][0]
        assert abs(p90_loaded - p90) <= noise_ms(median, p90_loaded, p90, "measured")
        assert trial.constraints["latency_budget"] == pytest.approx(metrics["latency_ms_p90"][0] / p90 - 1)
        assert "re-timed alone near the budget: 1" in " ".join(lines)
    else:  # the first timing was clear of the noise band: it was trusted
        median, p90_now = metrics["latency_ms_median"][0], metrics["latency_ms_p90"][0]
        assert abs(p90_now - p90) > noise_ms(median, p90_now, p90, "measured")
        assert "latency_ms_p90_loaded" not in metrics


def test_the_trial_budget_counts_training_not_candidates():
    from search.study import trial_cost

    study = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"])
    cases = [({"stopped": "screened"}, "PRUNED", 0.0),  # ruled out before training
             ({"stopped": "the first rung (1 of 3 epochs)", "rung": "first rung"}, "PRUNED", 1 / 3),
             ({"rung": "full budget"}, "COMPLETE", 4 / 3),  # promoted: trained at both rungs
             ({"recipe": "width 0.5 only"}, "COMPLETE", 1.0),  # a recipe trains fully once, even with halving on
             ({"stopped": "screened", "reused_from_trial": 0}, "PRUNED", 1.0),  # a repeat counts, so searches end
             ({}, "FAIL", 1.0)]
    for attrs, state, cost in cases:
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if state == "COMPLETE":
            study.tell(trial, [0.9, 0.01, 1000.0, 0.1])
        else:
            study.tell(trial, state=getattr(optuna.trial.TrialState, state))
        assert trial_cost(study.trials[-1]) == pytest.approx(cost), attrs


def test_constraints_are_relative_so_samplers_can_weigh_one_violation_against_another():
    """TPE and NSGA-II rank infeasible trials by the sum of their violations: half over the budget and half over the
    RAM must weigh the same, and both more than a 0.1 accuracy shortfall."""
    from hardware_targets.metric import Metric
    from search.candidate import CandidateResult
    from search.study import record_result

    study = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"])
    study.set_user_attr(FLOOR_ATTR, {"value": 0.9, "baseline": None, "max_drop": None})
    spec = SearchSpec(name="relative", budget=TINY, latency_budget_ms=0.01)
    figures = {"accuracy": 0.8, "accuracy_test": 0.8, "latency_ms_median": 0.014, "latency_ms_p90": 0.015,
               "size_bytes": 4000.0, "energy_mj": 0.001, "ram_bytes": 300_000.0, "flash_bytes": 50_000.0}
    result = CandidateResult(
        candidate=Candidate(precision="fp32", width=0.5, budget=TINY), dataset="digits", target="host",
        metrics={n: Metric(v, "", "measured") for n, v in figures.items()}, artifacts={}, stage_seconds={},
        versions={}, info={"limits": {"ram_bytes": 200_000, "flash_bytes": 100_000}})
    record_result(study, study.ask(), spec, result)
    assert study.trials[0].constraints == pytest.approx({"latency_budget": 0.5, "fits_ram": 0.5, "fits_flash": -0.5,
                                                         "accuracy_floor": 0.1})


def test_a_search_without_a_feasible_candidate_says_what_its_candidates_missed():
    from hardware_targets.metric import Metric
    from search.candidate import CandidateResult
    from search.cli import _why_none
    from search.study import record_failure, record_result

    study = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"])
    study.set_user_attr(FLOOR_ATTR, {"value": 0.99, "baseline": None, "max_drop": None})
    spec = SearchSpec(name="none-fits", budget=TINY, latency_budget_ms=1.0)
    for accuracy, p90, ram in ((0.93, 0.3, 1000.0), (0.95, 2.0, 1000.0), (0.91, 0.5, 300_000.0)):
        figures = {"accuracy": accuracy, "accuracy_test": accuracy, "latency_ms_median": p90, "latency_ms_p90": p90,
                   "size_bytes": 4000.0, "energy_mj": 0.001, "ram_bytes": ram}
        result = CandidateResult(
            candidate=Candidate(precision="fp32", width=0.5, budget=TINY), dataset="digits", target="host",
            metrics={n: Metric(v, "", "measured") for n, v in figures.items()}, artifacts={}, stage_seconds={},
            versions={}, info={"limits": {"ram_bytes": 200_000}})
        record_result(study, study.ask(), spec, result)
    trained = rows(study)
    assert [r.infeasible_because() for r in trained] == [
        "below the accuracy floor", "over the latency budget, below the accuracy floor",
        "over the RAM, below the accuracy floor"]
    assert _why_none(trained).startswith(": of 3 trained, 3 below the accuracy floor, 1 over the latency budget, 1 "
                                         "over the RAM (the most accurate 0.9500, the fastest 0.3 ms p90)")
    from search.errors import ConfigError
    from search.export import Pick, choose

    with pytest.raises(ConfigError, match=r"The closest, trial 0, takes 0.3 ms \(p90\) against the 1 ms budget, but "
                                          "is below the accuracy floor") as refused:
        choose(trained, Pick(), spec.latency_budget_ms)
    # and how to ship one anyway: the most accurate within the budget (trial 2, within it but over the RAM, is less)
    assert str(refused.value).endswith(" To export one anyway: --trial 0 --force (the most accurate within the "
                                       "budget: accuracy 0.9300, 0.3 ms p90).")
    assert choose(trained, Pick(trial=0, force=True), spec.latency_budget_ms) == (
        trained[0], "candidate picked by hand with --trial and --force, below the accuracy floor (not on the "
                    "feasible front)")
    with pytest.raises(ConfigError, match=r"Trial 1 is not on the feasible Pareto front \(over the latency budget, "
                                          r"below the accuracy floor; front: \[\]\); pass --force"):
        choose(trained, Pick(trial=1), spec.latency_budget_ms)
    record_failure(study, study.ask(), "compile: out of memory")
    with pytest.raises(ConfigError, match=r"Trial 3 is not a finished trial of this search: it failed \(compile: out "
                                          r"of memory\)\.$"):
        choose(rows(study), Pick(trial=3, force=True), spec.latency_budget_ms)


def test_a_candidate_no_better_than_chance_is_infeasible_however_fast_or_small():
    """int8 with heavy channel pruning of 81 signal windows scored 1/3 of 3 classes, and, the smallest, stood on the
    front and was tuned by the shipping stage: a model that predicts one class does not do the task."""
    from hardware_targets.metric import Metric
    from search.candidate import CandidateResult
    from search.cli import _why_none
    from search.study import CLASSES_ATTR, feasible_front, record_result

    def search(classes):
        study = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"])
        if classes:
            study.set_user_attr(CLASSES_ATTR, classes)
        spec = SearchSpec(name="chance", budget=TINY, latency_budget_ms=1.0)
        for balanced, p90, size in ((1 / 3, 0.1, 1000.0), (0.8, 0.3, 4000.0)):  # at chance: the fastest, smallest
            figures = {"accuracy": balanced, "accuracy_test": balanced, "balanced_accuracy": balanced,
                       "latency_ms_median": p90, "latency_ms_p90": p90, "size_bytes": size, "energy_mj": 0.001}
            record_result(study, study.ask(), spec, CandidateResult(
                candidate=Candidate(precision="fp32", width=0.5, budget=TINY), dataset="har", target="host",
                metrics={n: Metric(v, "", "measured") for n, v in figures.items()}, artifacts={}, stage_seconds={},
                versions={}, info={}))
        return study, rows(study)

    study, three = search(3)
    assert study.trials[0].constraints["above_chance"] > 0 >= study.trials[1].constraints["above_chance"]
    assert [r.infeasible_because() for r in three] == ["no better than chance", ""]
    assert [r.number for r in feasible_front(three)] == [1]
    assert _why_none(three[:1]).startswith(": of 1 trained, 1 no better than chance (")
    _, unknown = search(None)  # a search stored before its number of classes was: judged as it was
    assert [r.number for r in feasible_front(unknown)] == [0, 1]


def test_a_trained_candidate_over_the_budget_rules_out_its_shapes(digits, host, tiny_budget, shared_runs):
    """Latency and memories follow the shapes: the trained figure is the better measurement of them, so a later
    candidate of the same shapes is recorded from it, free, with the figures that ruled it out."""
    from search.candidate import Candidate
    from search.pipeline import Paths, evaluate_candidate
    from search.study import record_screened, trial_cost

    c = Candidate(precision="fp32", sparsity=0.0, temperature=1.0, alpha=1.0, width=0.25, budget=tiny_budget)
    result = evaluate_candidate(c, digits, host, Paths(shared_runs), threads=1)
    p90, tight_budget = result.value("latency_ms_p90"), result.value("latency_ms_median") / 10  # clear of its noise
    assert _shapes_ruled_out(result, budget_ms=4 * p90) is None
    ruled = _shapes_ruled_out(result, budget_ms=tight_budget)
    assert ruled["fits"] is False and f"{p90:.4g} ms p90 (measured" in ruled["reason"]
    assert not any(n.startswith("accuracy") for n in ruled["metrics"])  # the next candidate's accuracy is unknown
    ram = result.value("ram_bytes")
    tight = dataclasses.replace(result, info={**result.info, "limits": {"ram_bytes": ram - 1, "flash_bytes": 0}})
    assert _shapes_ruled_out(tight, budget_ms=4 * p90)["reason"].startswith("ram ")

    study = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"])
    spec = SearchSpec(name="ruled", budget=tiny_budget, latency_budget_ms=tight_budget)
    later = dataclasses.replace(c, temperature=4.0)  # other knobs, same shapes
    record_screened(study, study.ask(), spec, later, ruled, note=" (same shapes as trial 0: not screened again)")
    t = study.trials[-1]
    assert t.state.name == "PRUNED" and trial_cost(t) == 0.0 and t.user_attrs["stage_seconds"] == {}
    assert t.constraints["latency_budget"] == pytest.approx(p90 / tight_budget - 1)  # relative to the budget


@pytest.mark.slow  # ruling shapes out runs by default (test_a_trained_candidate_over_the_budget_rules_out_its_shapes)
def test_no_two_trained_candidates_of_shapes_already_over_the_budget(tmp_path):
    """With the budget a little under a shape's own latency, screening lets it through (within its margin); once
    one candidate of those shapes has trained and ended over the budget, no candidate asked later trains, and one
    asked while the first was still running on the other worker waits for the first one's verdict. When a loaded
    timing of the first one fitted, the later candidates train, and one of them ending over the budget against that
    fit is timed again alone before its verdict stands."""
    from hardware_targets import load_profile
    from search.stages.screen import shape_knobs

    same_shapes = SearchSpace(precision=("fp32",), pruning=("unstructured",), sparsity=(0.0, 0.0),
                              temperature=(1.0, 8.0), alpha=(0.2, 1.0), width=(0.5, 0.5))
    storage = f"sqlite:///{tmp_path}/o.db"
    probe = run_search(SearchSpec(name="probe", trials=1, workers=1, budget=TINY, space=same_shapes, recipes=False),
                       tmp_path, storage_url=storage, report=lambda line: None)
    # under the shapes' own median, within screening's margin over it
    budget = probe.rows[0].value("latency_ms_median") / 1.05
    lines = []
    run_search(SearchSpec(name="tight", trials=4, workers=2, budget=TINY, space=same_shapes, recipes=False,
                          latency_budget_ms=budget), tmp_path, storage_url=storage, report=lines.append)
    host = load_profile("host")
    trials = sorted(load_study("tight", storage).trials, key=lambda t: t.number)
    shapes = {shape_knobs(SimpleNamespace(**t.user_attrs["candidate"]), host) for t in trials}
    assert len(shapes) == 1
    trained = [t for t in trials if {"train", "distill"} & set(t.user_attrs["stage_seconds"])]
    assert not trained or trained[0].number == 0  # the first candidate probes its shapes
    over = [t for t in trained if t.constraints["latency_budget"] > 0]
    if over and over[0] is trained[0]:  # the probe ruled its shapes out: nobody else trained
        assert trained == [trials[0]]
    for t in trained:  # asked after a verdict over the budget, a candidate of those shapes is recorded, not trained
        assert not over or t.datetime_start <= over[0].datetime_complete, t.number
    for t in over:
        if any(f.datetime_complete < t.datetime_complete and f not in over for f in trained):
            assert t.user_attrs.get("retimed"), t.number  # it contradicted a fit of the same graph
    assert all(t.user_attrs.get("stopped") == "screened" for t in trials if t not in trained)
    # every candidate has the same shapes: while the first one ran, the other worker's candidates waited for it
    assert "waited for the first candidate of the same shapes: 0" not in " ".join(lines)


def test_unstructured_pruning_is_searched_only_where_kernels_skip_zeros():
    from hardware_targets import load_profile
    from search.study import recipes_for
    from search.workers import _supported_space

    host, lines = load_profile("host"), []
    spec = SearchSpec(name="space", space=NO_FP16)
    dense = _supported_space(spec, host, lines.append)
    # the weights' range narrowed for channels: no fewer than the narrowest width's share of them is left
    assert dense.space.pruning == ("structured",) and dense.space.sparsity == (0.0, 0.75)
    assert any(ln.startswith("unstructured pruning left out") and "do not skip zero" in ln for ln in lines)
    assert "narrowed to [0, 0.75]" in lines[-1]
    assert dict(recipes_for(dense))["50% pruning (structured)"]["pruning"] == "structured"
    assert "90% pruning (structured)" not in dict(recipes_for(dense))
    chosen = dataclasses.replace(spec, space=dataclasses.replace(NO_FP16, pruning=("structured",)))
    assert _supported_space(chosen, host, lines.append) == chosen  # a user's own channel range stays

    skipping = dataclasses.replace(host, unstructured_sparsity_speedup=True)
    kept = _supported_space(spec, skipping, lines.append)
    assert kept.space.pruning == ("unstructured", "structured")
    assert dict(recipes_for(kept))["90% pruning"] == {**dict(recipes_for(kept))["width 0.5 only"], "width": 1.0,
                                                      "sparsity": 0.9}

    only_zeros = dataclasses.replace(spec, space=dataclasses.replace(NO_FP16, pruning=("unstructured",)))
    lines.clear()
    fixed = _supported_space(only_zeros, host, lines.append)
    assert fixed.space.sparsity == (0.0, 0.0) and "sparsity fixed at 0" in lines[-1]
    assert not any(label.startswith(("50%", "90%")) for label, _ in recipes_for(fixed))
    unpruned = dataclasses.replace(only_zeros, space=dataclasses.replace(only_zeros.space, sparsity=(0.0, 0.0)))
    assert _supported_space(unpruned, host, lines.append) == unpruned  # nothing to leave out, nothing said


def test_the_host_space_says_int8_is_not_a_speed_up_in_tvm():
    from hardware_targets import load_profile
    from search.workers import _supported_space

    lines = []
    _supported_space(SearchSpec(name="int8-said", space=NO_FP16), load_profile("host"), lines.append)
    assert any(ln.startswith("int8 on this CPU: TVM computes int8 (QDQ) graphs in float") for ln in lines)
    lines.clear()
    _supported_space(SearchSpec(name="int8-said", space=NO_FP16), load_profile("rpi4"), lines.append)
    assert not any(ln.startswith("int8 on this CPU") for ln in lines)  # emulated: its int8 rate is its profile's


def test_fp16_and_int8_leave_the_default_host_space_where_their_graphs_are_slower_than_fp32(tmp_path):
    from hardware_targets import load_profile
    from search.data import load_dataset
    from search.stages.screen import against_fp32
    from search.workers import INT8_ON_HOST, _narrower_where_faster, _precisions_measured, _supported_space

    host, lines = load_profile("host"), []
    spec = SearchSpec(name="narrower-measured", budget=TINY, latency_budget_ms=0.05)
    assert _precisions_measured(spec) and not _precisions_measured(SearchSpec(name="listed", space=NO_FP16))
    supported = _supported_space(spec, host, lines.append)
    assert ("fp16" in supported.space.precision) == host.supports("fp16")  # the CPU's flags decide first
    decided = _narrower_where_faster(supported, host, tmp_path, lines.append, True)
    # the figures it judged by (fp32 and the narrower graph timed in turns) are cached with the screenings: a
    # resumed search reads the same figures back and decides the same, timing nothing
    digits, medians = load_dataset("digits"), {}
    probes = {"fp16": "fp16", "int8": "int8-ptq"}
    kinds = [k for k in probes if any(p.startswith(k) for p in supported.space.precision)]
    for kind in kinds:
        figures = against_fp32(probes[kind], supported.space, digits, host, tmp_path, budget=TINY, seed=0)
        assert figures == against_fp32(probes[kind], supported.space, digits, host, tmp_path, budget=TINY, seed=0)
        assert [w for w, *_ in figures] == [0.25, 2.0]
        for width, fp32, narrower, *runtimes in figures:  # each kind's own fp32 timing: the one timed in turns with it
            medians[kind, "fp32", width], medians[kind, width] = fp32, narrower
            assert set(runtimes) <= {"tvm", "onnxruntime"}  # the faster of the two, as a candidate is judged
    for kind in kinds:
        slower = all(medians[kind, w] >= medians[kind, "fp32", w] for w in (0.25, 2.0))
        assert any(p.startswith(kind) for p in decided.space.precision) != slower
        said = next(ln for ln in lines if ln.startswith(f"{kind} ") and "search space:" in ln)
        assert said.startswith(f"{kind} left out of the search space" if slower else f"{kind} kept in the search space")
        assert f"{medians[kind, 2.0] / medians[kind, 'fp32', 2.0]:.2f}x fp32's at width 2" in said
        assert "the faster of TVM and onnxruntime for each" in said
    assert "fp32" in decided.space.precision
    assert INT8_ON_HOST not in lines  # the measured line replaces the general one
    for forced in ("tvm", "onnxruntime"):  # --runtime forces the runtime both graphs are timed on
        figures = against_fp32("int8-ptq", supported.space, digits, host, tmp_path, budget=TINY, seed=0, runtime=forced)
        assert {on for *_, f32_on, on in figures} == {f32_on for *_, f32_on, on in figures} == {forced}
    lines.clear()
    listed = SearchSpec(name="listed", budget=TINY, space=NO_FP16)  # precisions a spec lists stay, unmeasured
    assert _narrower_where_faster(_supported_space(listed, host, lines.append), host, tmp_path, lines.append,
                                  False).space.precision == NO_FP16.precision
    assert INT8_ON_HOST in lines
    board = load_profile("rpi4")  # emulated: its int8 rate is its profile's, nothing is timed
    assert _narrower_where_faster(spec, board, tmp_path / "b", lines.append, True) == spec
    assert not (tmp_path / "b").exists()


# on an emulated board, whose figures do not vary: only the space's channel pruning brings a model under the budget
PRUNED_ONLY = SearchSpace(precision=("int8-ptq",), pruning=("structured",), sparsity=(0.0, 0.5),
                          temperature=(1.0, 1.0), alpha=(1.0, 1.0), width=(0.25, 1.0))
BOARD = "rpi4"


def _only_pruning_fits(runs) -> float:
    """A latency budget on ``BOARD`` between the narrowest unpruned int8 model and the same with half its channels
    pruned, the space's smallest: every recipe of ``PRUNED_ONLY``, at any width, is over it, and the space is not."""
    from hardware_targets import load_profile
    from search.data import load_dataset
    from search.stages.screen import screen_candidate

    digits, board = load_dataset("digits"), load_profile(BOARD)
    narrowest, smallest = (screen_candidate(Candidate(precision="int8-ptq", pruning="structured", sparsity=s,
                                                      width=0.25, budget=TINY), digits, board, runs,
                                            latency_budget_ms=1.0)["metrics"]["latency_ms_median"][0]
                           for s in (0.0, 0.5))
    assert smallest < narrowest, (smallest, narrowest)
    return (smallest * narrowest) ** 0.5


def test_a_recipe_that_cannot_fit_comes_back_narrower_then_the_search_stops_asking_and_says_why(tmp_path):
    """A recipe screened out comes back one width narrower, down to the narrowest. At most 5 candidates are asked per
    trial of budget; a search that stopped there is not one interrupted: status and an export say why it ended
    short of its budget, and an export how far the closest candidate is from it."""
    from search.export import Pick, export_search, unfinished
    from search.study import narrower_recipe, search_state, stored_spec

    # random draws: a model-guided sampler goes for the pruned corner of the space that fits, as it should
    spec = SearchSpec(name="narrower", trials=1, workers=1, budget=TINY, space=PRUNED_ONLY, target=BOARD,
                      sampler="random", latency_budget_ms=_only_pruning_fits(tmp_path))
    lines, storage = [], f"sqlite:///{tmp_path}/o.db"
    run_search(spec, tmp_path, storage_url=storage, report=lines.append)
    study = load_study("narrower", storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    recipes = [(t.user_attrs.get("recipe"), t.user_attrs["candidate"]["width"]) for t in trials[:4]]
    # the one recipe of this space (unpruned) is screened at every width of the grid, widest first
    assert recipes == [("int8 post-training only", 1.0), ("int8 post-training only, width 0.75", 0.75),
                       ("int8 post-training only, width 0.5", 0.5), ("int8 post-training only, width 0.25", 0.25)]
    assert not any(", width 0" in t.user_attrs.get("recipe", "") for t in trials[4:])  # none under 0.25
    # each "next" line follows the line of the trial that did not fit
    nexts = [k for k, ln in enumerate(lines) if "does not fit the target; next: " in ln]
    assert lines[nexts[0]] == "recipe 'int8 post-training only' does not fit the target; next: " \
                              "'int8 post-training only, width 0.75'", lines
    assert all(re.match(rf"\[0/1\] trial {n}: .* -> screened out, not trained", lines[k - 1])
               for n, k in enumerate(nexts[:3])), lines
    knobs = dict(trials[3].user_attrs["candidate"])
    assert narrower_recipe("int8 post-training only, width 0.25", knobs, spec) is None
    assert narrower_recipe("x", {**knobs, "width": 1.0}, dataclasses.replace(spec, recipes=False)) is None

    assert [t.user_attrs["stopped"] for t in trials] == ["screened"] * 5  # nothing trained
    assert any(line.startswith("stopped after 5 candidates, 5 per trial of budget") for line in lines)
    state, detail = search_state(study, stored_spec(study))
    assert state == "stopped" and detail.startswith("before its trial budget (0 of 1): its driver stopped after 5 "
                                                    "candidates, 5 per trial of budget, as most were screened out")
    assert unfinished(study, stored_spec(study)) == f"the search had stopped {detail}"
    with pytest.raises(ConfigError, match=r"No candidate is feasible. The closest, trial \d+ \(screened out before "
                                          r"training\), takes .* ms \(p90\) .*over by"):
        export_search("narrower", tmp_path / "out", storage_url=storage, runs_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"Trial 0 was screened out before training \(.* ms .*budget.*\): it has "
                                          "no model to export"):
        export_search("narrower", tmp_path / "out", storage_url=storage, runs_dir=tmp_path,
                      pick=Pick(trial=0, force=True))


def test_a_budget_no_model_of_the_space_can_meet_is_refused_before_any_training(tmp_path, capsys):
    """A budget under the space's smallest models screened out every candidate it asked, for minutes, and ended
    with nothing trained; those models screened first (seconds) refuse it, naming the fastest, and leave the name
    free."""
    space = SearchSpace(precision=("fp32",), pruning=("structured",), sparsity=(0.0, 0.5), width=(0.25, 1.0))
    spec = SearchSpec(name="out-of-reach", trials=2, workers=1, budget=TINY, space=space, latency_budget_ms=1e-6)
    storage, uri = f"sqlite:///{tmp_path}/o.db", default_tracking_uri(tmp_path)
    lines = []
    with pytest.raises(ConfigError, match=r"^No candidate of the search space fits host: its fastest, fp32 at width "
                                          r"0.25, 50% of its channels pruned, screened untrained: [\d.e-]+ ms "
                                          r"\(measured, .*\) is over the 1e-06 ms budget. Raise --latency-budget-ms "
                                          r"\(latency_budget_ms in a spec\) above [\d.e-]+ ms or choose a faster "
                                          r"target; nothing was trained.$"):
        run_search(spec, tmp_path, storage_url=storage, tracking_uri=uri, report=lines.append)
    assert not [line for line in lines if " -> " in line or "could not" in line], lines  # no trial, no other error
    assert "out-of-reach" not in optuna.get_all_study_names(storage)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("out-of-reach")
    assert experiment is None or not client.search_runs([experiment.experiment_id])  # no run left to refuse a retry


def test_the_eta_is_unknown_until_a_candidate_has_trained_then_follows_the_pace():
    import time

    from search.workers import _eta

    assert _eta(0, 6, time.perf_counter()) == "unknown until a candidate has trained"  # screenings cost nothing
    assert _eta(2, 6, time.perf_counter() - 60) == "2m00s"  # 30 s per trained candidate, 4 to go
    assert _eta(6, 6, time.perf_counter() - 60) == "0m00s"


def test_a_resume_s_eta_starts_from_the_stored_trials_pace():
    """A resumed search said "ETA unknown until a candidate has trained" over stored trials that had taken minutes."""
    import datetime
    import time

    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from search.workers import _eta, stored_pace

    study = optuna.create_study(directions=["maximize"])
    start = datetime.datetime(2026, 12, 6, 6, 0)

    def trial(seconds: float, **attrs) -> None:
        made = create_trial(state=TrialState.COMPLETE, values=[0.9], params={"width": 1.0},
                            distributions={"width": FloatDistribution(0.25, 2.0)}, user_attrs=attrs)
        made.datetime_start, made.datetime_complete = start, start + datetime.timedelta(seconds=seconds)
        study.add_trial(made)

    assert stored_pace(study, 2) is None
    for seconds in (80, 120, 100):  # trained in full, two at a time
        trial(seconds)
    trial(1, stopped="screened")  # costs no budget, and says nothing of the pace
    trial(2, reused_from_trial=0)  # a repeat, reused at once
    assert stored_pace(study, 2) == 50.0  # the middle trained trial, 100 s, over 2 workers
    assert _eta(0, 6, time.perf_counter(), stored_pace(study, 2)) == "5m00s at the stored trials' pace"
    assert _eta(1, 6, time.perf_counter() - 60, stored_pace(study, 2)) == "5m00s"  # then its own pace


def test_on_imbalanced_classes_lines_and_tables_show_balanced_accuracy_and_call_a_model_at_chance_so(capsys):
    from hardware_targets.metric import Metric
    from search.candidate import CandidateResult
    from search.cli import _print_outcome
    from search.study import best_within_budget, feasible_front, record_result
    from search.workers import _outcome

    study = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"])
    spec = SearchSpec(name="skewed", budget=TINY, latency_budget_ms=1.0)
    # 9:1 classes: the first always predicts the largest class, the second learned something
    for accuracy, balanced, width in ((0.917, 0.5, 0.25), (0.904, 0.675, 0.5)):
        figures = {"accuracy": accuracy, "accuracy_test": accuracy, "balanced_accuracy": balanced,
                   "balanced_accuracy_test": balanced, "latency_ms_median": width, "latency_ms_p90": width,
                   "size_bytes": 4000.0 * width, "energy_mj": 0.001}
        result = CandidateResult(
            candidate=Candidate(precision="fp32", width=width, budget=TINY), dataset="skewed", target="host",
            metrics={n: Metric(v, "fraction", "measured") for n, v in figures.items()}, artifacts={},
            stage_seconds={}, versions={}, info={})
        record_result(study, study.ask(), spec, result)
    trained = rows(study)
    assert _outcome(trained[0], 0.5).startswith("acc 0.917 (balanced 0.500, no better than chance), p90 0.25 ms")
    assert _outcome(trained[1], 0.5).startswith("acc 0.904 (balanced 0.675), p90 0.5 ms")
    assert _outcome(trained[0]).startswith("acc 0.917, p90")  # even classes: accuracy alone
    # where the classes are even, a model at 1/K balanced accuracy is called so too (int8 candidates of signals
    # int8 could not read scored 0.31 of 3 classes, shown as any other figure)
    assert _outcome(trained[0], classes=2).startswith("acc 0.917 (no better than chance, 1/2), p90")
    assert _outcome(trained[1], classes=2).startswith("acc 0.904, p90")
    front = feasible_front(trained)
    _print_outcome(trained, front, best_within_budget(trained), 0.5, spec, "sqlite:///skewed.db", chance=0.5)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.lstrip().startswith("trial"))
    assert header.split()[7:9] == ["accuracy", "balanced"]
    assert ("validation accuracy 0.9170, test accuracy 0.9170 (balanced 0.5000 validation, 0.5000 test; no better "
            "than always predicting the largest class") in out
    _print_outcome(trained, front, best_within_budget(trained), 0.5, spec, "sqlite:///skewed.db")
    assert "balanced" not in capsys.readouterr().out


def test_a_teacher_below_the_candidates_trained_without_it_is_called_weak_at_the_end(capsys):
    """On signals with a large offset the teacher reached 0.71 and students trained alone 1.00; nothing said so."""
    from hardware_targets.metric import Metric
    from search.candidate import CandidateResult
    from search.cli import _print_outcome
    from search.study import best_within_budget, feasible_front, record_result

    study = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"])
    spec = SearchSpec(name="offset", budget=TINY, latency_budget_ms=1.0)
    for accuracy, alpha in ((1.0, 1.0), (0.99, 1.0), (0.97, 1.0), (0.63, 0.5)):
        figures = {"accuracy": accuracy, "accuracy_test": accuracy, "latency_ms_median": 0.5, "latency_ms_p90": 0.5,
                   "size_bytes": 4000.0, "energy_mj": 0.001}
        result = CandidateResult(
            candidate=Candidate(precision="fp32", width=1.0, alpha=alpha, temperature=4.0 if alpha < 1 else 1.0,
                                budget=TINY),
            dataset="offset", target="host", metrics={n: Metric(v, "fraction", "measured") for n, v in figures.items()},
            artifacts={}, stage_seconds={}, versions={}, info={})
        record_result(study, study.ask(), spec, result)
    trained = rows(study)
    front = feasible_front(trained)

    def said(teacher):
        _print_outcome(trained, front, best_within_budget(trained), 0.5, spec, "sqlite:///offset.db", teacher=teacher)
        return [line for line in capsys.readouterr().out.splitlines() if "teacher" in line]

    weak = {"accuracy": 0.71, "balanced_accuracy": 0.71, "metric": "accuracy", "epochs": 30}
    assert said(weak) == [
        "note: the distillation teacher (width 2, 30 epochs) reached validation accuracy 0.7100, below 3 of the 3 "
        "candidates trained without it (best 1.0000): distilling from it pulls a student toward a weaker model. "
        "Train it longer (--teacher-epochs), or leave distillation out of the space (space.alpha: [1, 1] in a spec "
        "file)."]
    # within the margin of the median student trained alone (0.99), or no teacher stored: nothing to say
    assert said({**weak, "accuracy": 0.975}) == [] and said(None) == []
    assert said({**weak, "accuracy": 0.965})[0].startswith("note: the distillation teacher")


def test_a_teacher_at_chance_is_called_useless_when_it_is_trained():
    from search.workers import teacher_line

    at_chance = {"accuracy": 0.3333, "balanced_accuracy": 1 / 3}
    assert teacher_line(at_chance, "accuracy", 3) == (
        "distillation teacher: validation accuracy 0.3333 (measured on its fp32 torch model: the teacher is not "
        "shipped); no better than chance, 1/3: distilling from it teaches a student nothing. Train it longer "
        "(--teacher-epochs), or leave distillation out of the space (space.alpha: [1, 1] in a spec file)")
    learned = {"accuracy": 0.9, "balanced_accuracy": 0.6}
    assert teacher_line(learned, "balanced_accuracy", 3).endswith("validation balanced accuracy 0.6000 (measured on "
                                                                  "its fp32 torch model: the teacher is not shipped)")
    assert "chance" not in teacher_line(at_chance, "accuracy", None)  # a search stored before K was


def test_a_search_ranked_by_balanced_accuracy_builds_its_front_floor_and_pick_on_it():
    from hardware_targets.metric import Metric
    from search.candidate import CandidateResult
    from search.export import Pick, choose
    from search.study import SPEC_ATTR, best_within_budget, feasible_front, record_result

    # a: more accurate and faster, but mostly the largest class; b: slower, finds the rare class
    figures = {"a": dict(accuracy=0.93, balanced_accuracy=0.55, latency_ms_p90=0.2),
               "b": dict(accuracy=0.90, balanced_accuracy=0.75, latency_ms_p90=0.3)}

    def search(metric, floor=None):
        study = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"])
        spec = SearchSpec(name="ranked", budget=TINY, latency_budget_ms=1.0, metric=metric)
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
        if floor is not None:
            study.set_user_attr(FLOOR_ATTR, {"value": floor, "baseline": None, "max_drop": None})
        for width, f in zip((0.25, 0.5), figures.values()):
            metrics = {**f, "accuracy_test": f["accuracy"], "balanced_accuracy_test": f["balanced_accuracy"],
                       "latency_ms_median": f["latency_ms_p90"], "size_bytes": 1000.0, "energy_mj": 0.001}
            record_result(study, study.ask(), spec, CandidateResult(
                candidate=Candidate(width=width, budget=TINY), dataset="skewed", target="host",
                metrics={n: Metric(v, "fraction", "measured") for n, v in metrics.items()}, artifacts={},
                stage_seconds={}, versions={}, info={}))
        return study, rows(study)

    study, plain = search("accuracy")
    assert [r.number for r in feasible_front(plain)] == [0] and best_within_budget(plain).number == 0
    study, ranked = search("balanced_accuracy")
    assert [t.values[0] for t in study.trials] == [0.55, 0.75]  # what Optuna's sampler learns from
    assert [r.number for r in feasible_front(ranked)] == [0, 1] and best_within_budget(ranked).number == 1
    assert choose(ranked, Pick(), 1.0)[1] == "feasible candidate of the highest balanced accuracy within the latency " \
                                             "budget"
    with pytest.raises(Exception, match=r"No feasible candidate reaches balanced accuracy 0.8; the best is trial 1 at "
                                        r"0.7500 \(short by 0.0500\)"):
        choose(ranked, Pick(min_accuracy=0.8), 1.0)
    _, floored = search("balanced_accuracy", floor=0.7)  # the floor bounds the metric the search ranks by
    assert [r.violated for r in floored] == [("accuracy_floor",), ()]


def test_the_teacher_waits_where_the_queued_recipes_fill_the_budget_and_none_distils(tmp_path):
    """A 4-trial search of a distilling space on 20,000 images trained its teacher for 4 minutes, and then its 4
    trials were the 4 recipes, none distilling. Counted on a real study's queue."""
    from search.study import create_study, queued_without_distillation

    storage = f"sqlite:///{tmp_path}/o.db"

    def filled(name: str, trials: int, remaining: float | None = None, **change) -> int:
        spec = SearchSpec(name=name, trials=trials, budget=TINY, space=NO_FP16, **change)
        study = create_study(spec, storage, resume=False)
        return queued_without_distillation(study, spec, trials if remaining is None else remaining)

    # NO_FP16's recipes: int8 PTQ, int8 QAT, 50% and 90% pruning, then distillation into width 0.5, width 0.5
    assert filled("four", 4) == 4
    assert filled("four-two-spent", 4, remaining=2) == 4  # a resume: the queue still holds what it had
    assert filled("five", 5, remaining=5.5) == 0  # budget the queue leaves to the sampler, which may distil
    assert filled("six", 6) == 0  # the distillation recipe itself is queued
    assert filled("no-recipes", 4, recipes=False) == 0
    assert filled("halving", 4, halving=True) == 0  # a candidate halved costs a third: budget left for the sampler
