"""Pareto utilities over objective vectors, on top of Optuna's own hypervolume."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# (metric name, direction) of the search objectives, in study order
OBJECTIVES: tuple[tuple[str, str], ...] = (
    ("accuracy", "maximize"),
    ("latency_ms_median", "minimize"),
    ("size_bytes", "minimize"),
    ("energy_mj", "minimize"),
)


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
