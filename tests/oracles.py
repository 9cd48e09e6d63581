"""Independent checks for the tests: written out here, not taken from the code under test."""

OBJECTIVES = (("accuracy", "max"), ("latency_ms_p90", "min"), ("size_bytes", "min"), ("energy_mj", "min"))


def dominates(a: dict, b: dict) -> bool:
    """``a`` and ``b`` map objective names to values: a is no worse anywhere and better somewhere."""
    no_worse = all(a[n] >= b[n] if d == "max" else a[n] <= b[n] for n, d in OBJECTIVES)
    better = any(a[n] > b[n] if d == "max" else a[n] < b[n] for n, d in OBJECTIVES)
    return no_worse and better


def pareto_front(points: dict) -> set:
    """Keys of the points (key -> objective dict) that no other point dominates, by pairwise comparison."""
    return {k for k, p in points.items() if not any(dominates(q, p) for j, q in points.items() if j != k)}
