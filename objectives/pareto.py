"""Pareto utilities over objective vectors, on top of Optuna's own hypervolume."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# (metric name, direction) of the search objectives, in study order
OBJECTIVES: tuple[tuple[str, str], ...] = (
    ("accuracy", "maximize"),
    ("latency_ms_p90", "minimize"),  # the budget is a promise about the deployed model: its p90
    ("size_bytes", "minimize"),
    ("energy_mj", "minimize"),
)
# what the first objective (and an accuracy floor) may be, and how a reader says it: plain accuracy, or mean recall
# per class for classes whose imbalance lets plain accuracy reward always predicting the largest one
ACCURACY_METRICS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy"}


def objectives(metric: str = "accuracy") -> tuple[tuple[str, str], ...]:
    """The search objectives with ``metric`` (one of ``ACCURACY_METRICS``) as the first."""
    return ((metric, "maximize"), *OBJECTIVES[1:])


def _as_losses(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return np.asarray(points, dtype=float) * signs


def non_dominated(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (duplicates all kept)."""
    losses = _as_losses(np.asarray(points, dtype=float).reshape(len(points), -1), directions)
    keep = []
    for i, p in enumerate(losses):
        dominated = np.any(np.all(losses <= p, axis=1) & np.any(losses < p, axis=1))
        if not dominated:
            keep.append(i)
    return keep


def normalised_hypervolume(points: Sequence[Sequence[float]], bounds: Sequence[float]) -> float:
    """Hypervolume of (accuracy, latency, size, energy) points on a unit scale, so it lies in [0, 1].

    Accuracy is already a fraction (scaled as its loss, 1 - accuracy); each cost is divided by its
    bound (``bounds`` = latency budget, size bound, energy bound) and clipped to [0, 1]. The reference
    point is the worst corner (accuracy 0, every cost at its bound): a search whose front held a perfect,
    free model would score 1, and two searches over the same bounds compare directly.
    """
    if len(points) == 0:
        return 0.0
    p = np.asarray(points, dtype=float).reshape(len(points), 4)
    scale = np.asarray(bounds, dtype=float)
    if scale.shape != (3,) or not np.all(scale > 0):
        raise ValueError(f"`bounds` must be three positive numbers (latency, size, energy); got {list(bounds)}.")
    losses = np.column_stack([1.0 - p[:, 0], p[:, 1:] / scale])
    losses = np.clip(losses, 0.0, 1.0)
    return hypervolume(losses, [1.0] * 4, ["minimize"] * 4)


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float], directions: Sequence[str]) -> float:
    """Volume dominated by ``points`` and bounded by ``reference`` (points beyond it count for nothing)."""
    from optuna._hypervolume import compute_hypervolume

    if len(points) == 0:
        return 0.0
    losses = _as_losses(np.asarray(points, dtype=float), directions)
    ref = _as_losses(np.asarray([reference], dtype=float), directions)[0]
    inside = losses[np.all(losses < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(compute_hypervolume(inside, ref))
