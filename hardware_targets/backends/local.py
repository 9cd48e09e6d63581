"""Local backend: the artifact runs on this machine and is timed by TVM's time evaluator."""

from __future__ import annotations

import time

import numpy as np

from hardware_targets.backends.base import Backend, calls_per_repeat, latency_metrics
from search.candidate import Metric
from search.stages.compile import CompiledArtifact, load_vm


class LocalBackend(Backend):
    provenance = "measured"

    def measure_latency(self, artifact: CompiledArtifact, sample: np.ndarray, repeats: int) -> dict[str, Metric]:
        import tvm

        device = tvm.cpu()
        vm = load_vm(artifact.library, device)
        data = tvm.runtime.tensor(np.ascontiguousarray(sample, dtype=artifact.input_dtype))
        for _ in range(10):  # warm-up: first calls page in code and fill caches
            vm["main"](data)
        started = time.perf_counter()
        vm["main"](data)
        number = calls_per_repeat(time.perf_counter() - started)
        result = vm.time_evaluator("main", device, number=number, repeat=repeats)(data)
        return latency_metrics(list(result.results), self.provenance)


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
