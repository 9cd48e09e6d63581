"""Local backend: the artifact runs on this machine and is timed by TVM's time evaluator.

Energy comes from the CPU's RAPL counters when they are readable (measured);
most VMs expose none, and then it is estimated from per-operation energies.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hardware_targets.backends.base import Backend, add_work_and_energy, calls_per_repeat, latency_metrics
from hardware_targets.profile import TargetProfile
from search.candidate import Metric
from search.stages.compile import CompiledArtifact, load_vm

RAPL = Path("/sys/class/powercap")


def read_rapl_uj() -> int | None:
    """Sum of the package energy counters in µJ, or None when none is readable."""
    total, found = 0, False
    for counter in RAPL.glob("intel-rapl:*/energy_uj"):
        if counter.parent.name.count(":") != 1:  # packages only, not their sub-domains
            continue
        try:
            total += int(counter.read_text())
            found = True
        except (OSError, ValueError):
            return None
    return total if found else None


class LocalBackend(Backend):
    provenance = "measured"

    def __init__(self, profile: TargetProfile):
        self.profile = profile

    def measure(self, artifact: CompiledArtifact, onnx_path: Path, precision: str, sample: np.ndarray,
                repeats: int) -> dict[str, Metric]:
        import tvm

        device = tvm.cpu()
        vm = load_vm(artifact.library, device)
        data = tvm.runtime.tensor(np.ascontiguousarray(sample, dtype=artifact.input_dtype))
        for _ in range(10):  # warm-up: first calls page in code and fill caches
            vm["main"](data)
        started = time.perf_counter()
        vm["main"](data)
        number = calls_per_repeat(time.perf_counter() - started)
        before = read_rapl_uj()
        result = vm.time_evaluator("main", device, number=number, repeat=repeats)(data)
        after = read_rapl_uj()
        measured_mj = None
        if before is not None and after is not None and after > before:
            measured_mj = (after - before) * 1e-3 / (number * repeats + 1)
        return add_work_and_energy(latency_metrics(list(result.results), self.provenance), onnx_path, precision,
                                   self.profile, measured_mj)


def time_onnxruntime(session, sample: np.ndarray, repeats: int) -> dict[str, Metric]:
    """The same graph in onnxruntime, timed the same way: a figure tracked beside TVM's."""
    feed = {session.get_inputs()[0].name: sample}
    for _ in range(10):
        session.run(None, feed)
    started = time.perf_counter()
    session.run(None, feed)
    number = calls_per_repeat(time.perf_counter() - started)
    per_call = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(number):
            session.run(None, feed)
        per_call.append((time.perf_counter() - started) / number)
    return latency_metrics(per_call, "measured", prefix="ort_latency")
