"""The default sampler: TPE whose good trials are those that add most to the search's own hypervolume."""

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from search.sampler import HypervolumeTPESampler, _RankedStudy, good_count, hypervolume_order
from search.spec import SearchSpec
from search.study import BOUNDS_ATTR, make_sampler

BOUNDS = [0.01, 100.0, 1.0]  # latency budget (ms), size bound, energy bound
DIRECTIONS = ["maximize", "minimize", "minimize", "minimize"]


def test_hypervolume_order_picks_by_added_volume_then_by_volume_alone():
    # Losses on the unit scale (1 - accuracy, latency / 0.01, size / 100, energy / 1):
    #   p0 (0.10, 0.5, 0.5, 0.5)  alone 0.9 x 0.5 x 0.5 x 0.5 = 0.1125
    #   p1 (0.05, 0.8, 0.1, 0.8)  alone 0.95 x 0.2 x 0.9 x 0.2 = 0.0342
    #   p2 (0.20, 0.4, 0.5, 0.4)  alone 0.8 x 0.6 x 0.5 x 0.6 = 0.144, the largest: first
    #   p3 (0.30, 0.6, 0.6, 0.6)  dominated by p0: adds nothing, alone 0.7 x 0.4 x 0.4 x 0.4 = 0.0448
    # Beside p2, p0 adds 0.1125 - 0.8 x 0.5 x 0.5 x 0.5 = 0.0125 and p1 adds 0.0342 - 0.8 x 0.2 x 0.5 x 0.2 = 0.0182,
    # so p1 comes second although p0 dominates more alone; with two picks, p0 and p3 follow by volume alone.
    points = [[0.9, 0.005, 50, 0.5], [0.95, 0.008, 10, 0.8], [0.8, 0.004, 50, 0.4], [0.7, 0.006, 60, 0.6]]
    assert hypervolume_order(points, BOUNDS, picks=2) == [2, 1, 0, 3]
    assert hypervolume_order(points, BOUNDS, picks=0) == [2, 0, 3, 1]
    assert hypervolume_order([], BOUNDS, picks=3) == []


def test_good_count_is_a_quarter_of_the_finished_trials():
    assert [good_count(n) for n in (0, 1, 4, 5, 24, 28, 1000)] == [0, 1, 1, 2, 6, 7, 25]


def _study_with(trials, sampler=None):
    """A real in-memory study of the search's four objectives; ``trials`` are (params, values, constraint)."""
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    study.set_user_attr(BOUNDS_ATTR, {"values": BOUNDS, "source": "test"})
    dists = {"kind": CategoricalDistribution(["fast", "small"]), "x": FloatDistribution(0.0, 1.0)}
    for params, values, over in trials:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=values,
                                                  system_attrs={"constraints": [over]}))
    return study, dists


def test_the_ranked_view_scores_feasible_trials_by_the_search_hypervolume_and_keeps_constraints():
    study, _ = _study_with([
        ({"kind": "fast", "x": 0.1}, [0.9, 0.005, 50, 0.5], -1.0),
        ({"kind": "small", "x": 0.2}, [0.95, 0.008, 10, 0.8], -1.0),
        ({"kind": "fast", "x": 0.3}, [0.8, 0.004, 50, 0.4], -1.0),
        ({"kind": "fast", "x": 0.4}, [0.99, 0.001, 1, 0.1], 0.5),  # best of all, but over a limit
    ])
    view = _RankedStudy(study, BOUNDS)
    seen = view.get_trials(deepcopy=False)
    assert view.directions == [optuna.study.StudyDirection.MAXIMIZE] and not view._is_multi_objective()
    # four finished trials: one good pick (p2), then p0 by volume alone, then p1; the infeasible one scores nothing
    assert [t.values for t in seen] == [[2.0], [1.0], [3.0], [0.0]]
    assert seen[3].constraints == {"0": 0.5}
    assert [t.values for t in study.get_trials(deepcopy=False)][0] == [0.9, 0.005, 50, 0.5]  # the study is untouched


def test_tpe_proposes_where_the_search_hypervolume_grows():
    # "small" candidates are five times smaller but near the budget: on the search's scale they add little. "fast"
    # ones are as accurate at half the latency and energy. TPE should keep proposing "fast".
    trials = []
    for i in range(6):
        trials.append(({"kind": "fast", "x": 0.1 + 0.05 * i}, [0.90 + 0.01 * i, 0.0045, 40 + i, 0.45], -1.0))
        trials.append(({"kind": "small", "x": 0.6 + 0.05 * i}, [0.91 + 0.01 * i, 0.0088, 8 + i, 0.88], -1.0))
    sampler = HypervolumeTPESampler(lambda s: s.user_attrs[BOUNDS_ATTR]["values"], seed=0, n_startup_trials=4)
    study, dists = _study_with(trials, sampler)
    kinds = [study.ask(fixed_distributions=dists).params["kind"] for _ in range(40)]  # left running: not learnt
    assert kinds.count("fast") >= 32, kinds


def test_the_default_sampler_below_100_trials_is_the_hypervolume_tpe():
    assert isinstance(make_sampler(SearchSpec(name="s", trials=24)), HypervolumeTPESampler)
    assert isinstance(make_sampler(SearchSpec(name="s", trials=100)), optuna.samplers.NSGAIISampler)


def test_before_the_bounds_are_stored_optuna_ranks_on_its_own():
    sampler = HypervolumeTPESampler(lambda s: None, seed=0, n_startup_trials=2)
    study, dists = _study_with([({"kind": "fast", "x": 0.1 * i}, [0.9, 0.005, 50, 0.5], -1.0) for i in range(5)],
                               sampler)
    assert sampler._view(study) is study
    assert set(study.ask(fixed_distributions=dists).params) == {"kind", "x"}
