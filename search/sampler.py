"""A sampler for small trial budgets, built on what screening already knows: a candidate's costs.

On a target a candidate's latency, size and energy follow its shapes, and screening measures them in seconds;
only its accuracy costs a training run. TPE and random sampling learn all four objectives alike. This sampler
models each measured figure with a Gaussian process over the knobs (screened-out trials teach it the costs, which
Optuna's other model-based samplers ignore) and, at each ask, scores a pool of random candidates by the normalised
hypervolume each would add to the feasible front, taking accuracy at an optimistic estimate (mean + ``beta`` sd:
what is not known yet may be good) and the costs at their means. Running trials count at their mean (a kriging
believer), so parallel workers do not propose the same region.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import FrozenTrial, TrialState

from objectives.pareto import OBJECTIVES, non_dominated, normalised_hypervolume

POOL_SIZE = 300  # random candidates scored per ask: enough to cover a 4-knob space's shapes, about 0.3 s here
BETA = 1.0  # optimism on accuracy, in standard deviations of the Gaussian process


def measured_figures(t: FrozenTrial) -> dict[str, float]:
    """The figures a trial measured (``metric:`` attributes): a screened-out trial has its costs, not accuracy."""
    out = {}
    for key, value in t.user_attrs.items():
        if key.startswith("metric:") and isinstance(value, (list, tuple)) and value:
            try:
                out[key[len("metric:"):]] = float(value[0])
            except (TypeError, ValueError):
                continue
    return out


class _Encoding:
    """Knobs to the unit cube: numbers scaled by their range (log where the distribution is), categories one-hot."""

    def __init__(self, space: dict[str, BaseDistribution]):
        self.space = dict(sorted(space.items()))

    def row(self, params: dict[str, Any]) -> list[float]:
        out: list[float] = []
        for name, d in self.space.items():
            v = params[name]
            if isinstance(d, CategoricalDistribution):
                out.extend(1.0 if v == c else 0.0 for c in d.choices)
            else:
                lo, hi, x = float(d.low), float(d.high), float(v)
                if d.log:
                    lo, hi, x = math.log(lo), math.log(hi), math.log(x)
                out.append((x - lo) / (hi - lo) if hi > lo else 0.0)
        return out

    def draw(self, rng: np.random.RandomState) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name, d in self.space.items():
            if isinstance(d, CategoricalDistribution):
                params[name] = d.choices[rng.randint(len(d.choices))]
            elif d.step is not None:
                n = int(round((d.high - d.low) / d.step))
                value = d.low + rng.randint(n + 1) * d.step
                params[name] = int(value) if isinstance(d, IntDistribution) else float(value)
            elif d.log:
                value = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
                params[name] = int(round(value)) if isinstance(d, IntDistribution) else value
            else:
                value = rng.uniform(d.low, d.high)
                params[name] = int(round(value)) if isinstance(d, IntDistribution) else value
        return params


def _fit(x: np.ndarray, y: np.ndarray, seed: int):
    """A Gaussian process on standardised targets: Matern 5/2 with a length scale per knob, plus noise."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    kernel = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(length_scale=[0.5] * x.shape[1], length_scale_bounds=(0.05, 20.0),
                                                        nu=2.5) + WhiteKernel(0.05, (1e-4, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianProcessRegressor(kernel, normalize_y=True, random_state=seed).fit(x, y)


class HypervolumeGainSampler(BaseSampler):
    """Proposes the candidate that would add the most normalised hypervolume, accuracy taken optimistically.

    ``bounds(study)`` gives the hypervolume's unit box (latency budget, size bound, energy bound), the one the
    search reports its hypervolume in. ``cost_knobs`` names the knobs the costs follow (all, if None): the cost
    models see only those, so training knobs cannot add noise to them; ``accuracy_constraints`` names the
    constraints that follow accuracy (all knobs, taken optimistically like accuracy). Until ``n_startup_trials`` trials have trained (enqueued recipes count),
    and for knobs outside the relative search space, it samples at random."""

    def __init__(self, bounds: Callable[[optuna.Study], Sequence[float]], *, seed: int | None = None,
                 n_startup_trials: int = 5, pool_size: int = POOL_SIZE, beta: float = BETA,
                 cost_knobs: Sequence[str] | None = None, accuracy_constraints: Sequence[str] = (),
                 costs: Callable[[dict[str, Any]], tuple[list[float], bool] | None] | None = None,
                 expected: bool = False):
        if n_startup_trials < 1 or pool_size < 1 or beta < 0:
            raise ValueError("`n_startup_trials` and `pool_size` must be positive and `beta` non-negative; got "
                             f"{n_startup_trials}, {pool_size}, {beta}.")
        self._bounds = bounds
        self._seed = seed
        self._rng = np.random.RandomState(seed)
        self._random = RandomSampler(seed=seed)
        self._space = IntersectionSearchSpace(include_pruned=True)
        self._startup = n_startup_trials
        self._pool = pool_size
        self._beta = beta
        self._cost_knobs = None if cost_knobs is None else set(cost_knobs)
        self._accuracy_constraints = set(accuracy_constraints)
        self._costs = costs
        self._expected = expected

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {n: d for n, d in self._space.calculate(study).items() if not d.single()}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        if not search_space:
            return {}
        trials = [t for t in study._get_trials(deepcopy=False, use_cache=True,
                                                states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
                  if t.number != trial.number and all(n in t.params for n in search_space)]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if len(complete) < self._startup:
            return {}
        enc = _Encoding(search_space)
        shape = [n for n in search_space if self._cost_knobs is None or n in self._cost_knobs]
        cost_enc = _Encoding({n: search_space[n] for n in shape}) if shape else enc
        names = [n for n, _ in OBJECTIVES]
        figures = {t.number: measured_figures(t) for t in trials}
        models = {}
        for name in names:
            # accuracy from trials trained to the full budget only (a halving rung's figure is for fewer epochs)
            states = (TrialState.COMPLETE,) if name == "accuracy" else (TrialState.COMPLETE, TrialState.PRUNED)
            seen = [t for t in trials if t.state in states and name in figures[t.number]]
            if len(seen) < 2:
                return {}
            y = np.array([figures[t.number][name] for t in seen])
            log = name != "accuracy" and bool(np.all(y > 0))  # costs vary over orders of magnitude
            e = enc if name == "accuracy" else cost_enc
            models[name] = (_fit(np.array([e.row(t.params) for t in seen]), np.log(y) if log else y,
                                 self._seed or 0), log, e, name == "accuracy")
        limits = []
        for key in sorted({k for t in trials for k in t.constraints}):
            seen = [t for t in trials if t.state != TrialState.RUNNING and key in t.constraints]
            e = enc if key in self._accuracy_constraints else cost_enc
            if len(seen) >= 2:
                limits.append((_fit(np.array([e.row(t.params) for t in seen]),
                                    np.array([t.constraints[key] for t in seen]), self._seed or 0), e,
                               key in self._accuracy_constraints))

        spread = np.zeros(0)

        def predict(params: list[dict[str, Any]], optimistic: bool) -> tuple[np.ndarray, np.ndarray]:
            """Each candidate's expected point (accuracy optimistic if asked) and whether it is expected to fit."""
            rows = {id(e): np.array([e.row(p) for p in params]) for e in (enc, cost_enc)}
            cols = []
            for name in names:
                gp, log, e, learned = models[name]
                mean, sd = gp.predict(rows[id(e)], return_std=True)
                if learned:
                    spread[:] = sd if len(spread) == len(sd) else spread
                if optimistic and learned and not self._expected:
                    mean = mean + self._beta * sd
                cols.append(np.exp(mean) if log else mean)
            feasible = np.ones(len(params), dtype=bool)
            for gp, e, learned in limits:
                mean, sd = gp.predict(rows[id(e)], return_std=True)
                feasible &= mean - (self._beta * sd if optimistic and learned else 0.0) <= 0
            return np.column_stack(cols), feasible

        bounds = list(self._bounds(study))
        front = [[figures[t.number][n] for n in names] for t in complete
                 if all(n in figures[t.number] for n in names) and all(v <= 0 for v in t.constraints.values())]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if running:  # a kriging believer: a running candidate counts at its expected point
            points, ok = predict([t.params for t in running], optimistic=False)
            front += [list(p) for p, f in zip(points, ok) if f]
        tried = {tuple(enc.row(t.params)) for t in trials}
        pool = [p for p in (enc.draw(self._rng) for _ in range(self._pool)) if tuple(enc.row(p)) not in tried]
        if not pool:
            return {}
        spread = np.zeros(len(pool))
        points, feasible = predict(pool, optimistic=True)
        if self._costs is not None:  # measured costs (a latency table) where known, in place of the models'
            for i, p in enumerate(pool):
                known = self._costs(p)
                if known is not None:
                    points[i, 1:] = known[0]
                    feasible[i] = known[1]
        points[:, 0] = np.clip(points[:, 0], 0.0, 1.0)
        gains = np.zeros(len(pool))
        base = normalised_hypervolume(front, bounds) if front else 0.0
        directions = [d for _, d in OBJECTIVES]
        if self._expected:  # expected gain over accuracy ~ N(mean, sd): Gauss-Hermite nodes
            nodes, weights = np.polynomial.hermite_e.hermegauss(7)
            weights = weights / weights.sum()
        else:
            nodes, weights = np.zeros(1), np.ones(1)
        for i in np.flatnonzero(feasible):
            for x, w in zip(nodes, weights):
                point = list(points[i])
                point[0] = float(np.clip(point[0] + x * spread[i], 0.0, 1.0))
                with_it = front + [point]
                if front and len(front) not in non_dominated(with_it, directions):
                    continue  # dominated by the front: adds nothing
                gains[i] += w * (normalised_hypervolume(with_it, bounds) - base)
        if gains.max() <= 0:
            if not feasible.any():
                return {}
            best = int(np.flatnonzero(feasible)[np.argmax(points[feasible, 0])])
        else:
            best = int(np.argmax(gains))
        return pool[best]
