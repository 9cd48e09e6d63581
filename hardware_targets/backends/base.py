"""The measurement backend interface: one per way of getting figures for a target."""

from __future__ import annotations

import abc
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np

from hardware_targets.compile import CompiledArtifact
from hardware_targets.emulator import energy_joules
from hardware_targets.graph import op_costs
from hardware_targets.errors import ProfileError
from hardware_targets.metric import Metric
from hardware_targets.profile import TargetProfile


class Backend(abc.ABC):
    """Gives the latency (and energy, where it can) of a compiled candidate on a target; says how it knows."""

    provenance: ClassVar[str]
    profile: TargetProfile

    def check(self, undone: str = "nothing was trained") -> None:
        """Raise before anything is trained for the target (``undone`` says so): ``ProfileError`` when the cross
        compiler that links its builds is not on this machine (every candidate failed at its compile stage, after its
        training); ``TargetUnreachableError`` when a remote target cannot be reached."""
        cc = self.profile.cross_compiler
        if cc and shutil.which(cc) is None:
            triple = cc.removesuffix("-gcc") if cc.endswith("-gcc") and "/" not in cc else None
            raise ProfileError(
                f"Target {self.profile.name} links its builds with cross_compiler {cc!r}, which is not on this "
                "machine's PATH. Install it" + (f" (Debian and Ubuntu: apt install gcc-{triple})" if triple else "")
                + f", give its full path, or remove the field from {self.profile.source} (a build is then a .tar of "
                f"object files, which the board's RPC server links); {undone}.")

    @abc.abstractmethod
    def measure(self, artifact: CompiledArtifact, onnx_path: Path, precision: str, sample: np.ndarray,
                repeats: int) -> dict[str, Metric]:
        """At least ``latency_ms_median`` and ``latency_ms_p90``; ``energy_mj`` where the target allows."""


def latency_metrics(seconds_per_call: list[float], provenance: str, prefix: str = "latency") -> dict[str, Metric]:
    ms = np.asarray(seconds_per_call) * 1e3
    return {
        f"{prefix}_ms_median": Metric(float(np.median(ms)), "ms", provenance),
        f"{prefix}_ms_p90": Metric(float(np.percentile(ms, 90)), "ms", provenance),
    }


def calls_per_repeat(seconds_per_call: float, target_seconds: float = 2e-3) -> int:
    """How many calls make one timing repeat long enough to rise above timer noise."""
    return int(min(1000, max(1, target_seconds / max(seconds_per_call, 1e-7))))


def add_work_and_energy(metrics: dict[str, Metric], onnx_path: Path, precision: str, profile,
                        measured_mj: float | None = None) -> dict[str, Metric]:
    """Add the graph's MAC count and the energy per inference: measured when a counter gave it, else estimated
    from per-operation energies over the measured latency."""
    ops = op_costs(onnx_path)
    metrics["macs"] = Metric(float(sum(op.macs for op in ops)), "count", "measured")
    if measured_mj is not None:
        metrics["energy_mj"] = Metric(measured_mj, "mJ", "measured")
    else:
        joules = energy_joules(ops, precision, profile, metrics["latency_ms_median"].value * 1e-3)
        metrics["energy_mj"] = Metric(joules * 1e3, "mJ", "estimated")
    return metrics
