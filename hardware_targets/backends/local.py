"""Local backend: the artifact runs on this machine and is timed by TVM's time evaluator.

Energy comes from the CPU's RAPL counters when they are readable (measured, less the package's baseline power
just before); most VMs expose none, and then it is estimated as the profile's active power per core times the
measured latency.
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
RAPL_BASELINE_S = 0.2


def read_rapl(root: Path = RAPL) -> list[tuple[int, int]] | None:
    """Each CPU package's energy counter and its wrap-around range, in µJ; None when none is readable."""
    counters = []
    for counter in sorted(Path(root).glob("intel-rapl:*/energy_uj")):
        if counter.parent.name.count(":") != 1:  # packages only, not their sub-domains
            continue
        try:
            wrap = counter.with_name("max_energy_range_uj")
            counters.append((int(counter.read_text()), int(wrap.read_text()) if wrap.exists() else 0))
        except (OSError, ValueError):
            return None
    return counters or None


def rapl_delta_uj(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> int:
    """Energy between two readings, across a counter's wrap-around (it restarts at 0 past its range)."""
    total = 0
    for (b, wrap), (a, _) in zip(before, after):
        total += a - b if a >= b else a + wrap - b
    return total


def inference_energy_mj(baseline_uj: int, baseline_s: float, timed_uj: int, timed_s: float, calls: int) -> float:
    """Energy one call adds: the timed energy less what the package drew at the baseline's power over the same time
    (idle, and any other work running beside it, such as another worker's training), per call."""
    extra = timed_uj - baseline_uj / baseline_s * timed_s
    return max(extra, 0.0) * 1e-3 / calls


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
        measured_mj = None
        idle = read_rapl()
        if idle is not None:  # the package's power just before, with whatever else runs, is subtracted
            started = time.perf_counter()
            time.sleep(RAPL_BASELINE_S)
            before = read_rapl()
            baseline = (rapl_delta_uj(idle, before), time.perf_counter() - started)
        started = time.perf_counter()
        result = vm.time_evaluator("main", device, number=number, repeat=repeats)(data)
        if idle is not None:
            after, elapsed = read_rapl(), time.perf_counter() - started
            measured_mj = inference_energy_mj(*baseline, rapl_delta_uj(before, after), elapsed,
                                              number * repeats + 1)
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
