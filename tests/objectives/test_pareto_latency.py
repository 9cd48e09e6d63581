"""Normalised hypervolume against hand-computed volumes; the p90 budget rule on synthetic noisy timings."""

import numpy as np
import pytest

from objectives.latency import FEASIBLE, INFEASIBLE, RETIME, budget_verdict, clearly_over_budget, least_disturbed
from objectives.pareto import normalised_hypervolume

BOUNDS = [0.1, 1000.0, 2.0]  # latency budget ms, size bytes, energy mJ


def test_hypervolume_of_a_known_front_matches_the_hand_computed_union():
    a = [0.9, 0.05, 500.0, 1.0]  # unit losses (0.1, 0.5, 0.5, 0.5): box 0.9 * 0.5 * 0.5 * 0.5 = 0.1125
    b = [0.8, 0.02, 800.0, 0.5]  # unit losses (0.2, 0.2, 0.8, 0.25): box 0.8 * 0.8 * 0.2 * 0.75 = 0.096
    # the boxes overlap from the worse corner (0.2, 0.5, 0.8, 0.5): 0.8 * 0.5 * 0.2 * 0.5 = 0.04
    assert normalised_hypervolume([a], BOUNDS) == pytest.approx(0.1125)
    assert normalised_hypervolume([b], BOUNDS) == pytest.approx(0.096)
    assert normalised_hypervolume([a, b], BOUNDS) == pytest.approx(0.1125 + 0.096 - 0.04)


def test_hypervolume_lies_in_the_unit_interval():
    assert normalised_hypervolume([[1.0, 0.0, 0.0, 0.0]], BOUNDS) == pytest.approx(1.0)  # perfect and free
    assert normalised_hypervolume([], BOUNDS) == 0.0
    over = [0.99, 0.2, 10.0, 0.01]  # twice the latency budget: clipped to the bound, adds no volume
    assert normalised_hypervolume([over], BOUNDS) == 0.0
    a = [0.9, 0.05, 500.0, 1.0]
    assert normalised_hypervolume([a, over], BOUNDS) == pytest.approx(0.1125)
    with pytest.raises(ValueError, match="three positive"):
        normalised_hypervolume([a], [0.1, 0.0, 2.0])


def _timings(true_ms: float, spread: float, seed: int, n: int = 30) -> tuple[float, float]:
    """Median and p90 of ``n`` synthetic timings: a true latency with multiplicative lognormal noise."""
    ms = true_ms * np.random.default_rng(seed).lognormal(0.0, spread, n)
    return float(np.median(ms)), float(np.percentile(ms, 90))


def test_p90_rule_on_synthetic_noisy_latencies():
    budget = 0.05
    for seed in range(5):
        assert budget_verdict(*_timings(0.02, 0.1, seed), budget, "measured") == FEASIBLE
        assert budget_verdict(*_timings(0.12, 0.1, seed), budget, "measured") == INFEASIBLE
        assert budget_verdict(*_timings(0.049, 0.05, seed), budget, "measured") == RETIME  # too close to tell
    # a median under the budget does not make a candidate feasible: the promise is about the p90
    median, p90 = 0.03, 0.058
    assert budget_verdict(median, p90, budget, "measured") == RETIME
    assert budget_verdict(median, p90, budget, "measured", retimed=True) == INFEASIBLE
    assert budget_verdict(0.03, 0.045, budget, "measured", retimed=True) == FEASIBLE


def test_emulated_figures_are_deterministic_no_noise_band():
    assert budget_verdict(0.0501, 0.0501, 0.05, "emulated") == INFEASIBLE
    assert budget_verdict(0.0499, 0.0499, 0.05, "emulated") == FEASIBLE
    assert clearly_over_budget(0.0501, 0.05, "emulated")


def test_screening_rules_out_only_what_is_clearly_over():
    assert not clearly_over_budget(0.054, 0.05, "measured")  # 8% over under load: may fit alone
    assert clearly_over_budget(0.056, 0.05, "measured")  # 12% over: the quiet median cannot fit either
    assert clearly_over_budget(0.2, 0.05, "measured")


def test_a_disturbed_timing_is_taken_again_and_the_least_disturbed_kept():
    """Synthetic medians against a recorded 1.0 ms: over 1.3x reads as disturbed; at most two more timings."""
    for medians, kept, taken in (([1.2], 1.2, [1.2]),  # within what load explains: timed once
                                 ([3.0, 2.0, 1.1, 9.9], 1.1, [3.0, 2.0, 1.1]),  # until one is not disturbed
                                 ([2.0, 1.5, 1.8, 1.0], 1.5, [2.0, 1.5, 1.8])):  # never more than three
        timings = iter(medians)
        got, seen = least_disturbed(lambda: next(timings), lambda m: m, 1.0)
        assert (got, seen) == (kept, taken)

