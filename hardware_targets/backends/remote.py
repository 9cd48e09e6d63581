"""Remote backend: cross-compile for the profile's target, upload over TVM RPC, time on the device.

The device runs ``python -m tvm.exec.rpc_server``; the profile's ``rpc`` field gives
``host`` and ``port`` (direct), or ``tracker_host``, ``tracker_port`` and ``key``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from hardware_targets.backends.base import Backend, add_work_and_energy, calls_per_repeat, latency_metrics
from hardware_targets.compile import CompiledArtifact, compile_tvm
from hardware_targets.errors import CandidateError
from hardware_targets.metric import Metric
from hardware_targets.profile import TargetProfile


def connect(rpc: dict):
    from tvm import rpc as tvm_rpc

    if rpc.get("tracker_host"):
        tracker = tvm_rpc.connect_tracker(rpc["tracker_host"], int(rpc["tracker_port"]))
        return tracker.request(rpc["key"], priority=1, session_timeout=int(rpc.get("timeout", 120)))
    return tvm_rpc.connect(rpc.get("host", "127.0.0.1"), int(rpc["port"]), session_timeout=int(rpc.get("timeout", 120)))


class RemoteBackend(Backend):
    provenance = "measured"

    def __init__(self, profile: TargetProfile, tuning_cache: Path | None = None):
        self.profile = profile
        self.tuning_cache = tuning_cache

    def measure(self, artifact: CompiledArtifact, onnx_path: Path, precision: str, sample: np.ndarray,
                repeats: int) -> dict[str, Metric]:
        from tvm import relax

        with tempfile.TemporaryDirectory() as tmp:
            lib = compile_tvm(onnx_path, self.profile.tvm_target, Path(tmp) / "remote_model.so",
                              artifact.input_shape, artifact.input_dtype, cache_dir=self.tuning_cache,
                              cc=self.profile.cross_compiler)
            try:
                remote = connect(self.profile.rpc or {})
                remote.upload(lib.library)
                module = remote.load_module(Path(lib.library).name)
            except Exception as exc:
                raise CandidateError("measure", f"RPC to {self.profile.name} at {self.profile.rpc} failed: {exc}") \
                    from exc
            device = remote.cpu()
            vm = relax.VirtualMachine(module, device)
            import tvm

            data = tvm.runtime.tensor(np.ascontiguousarray(sample, dtype=artifact.input_dtype), device)
            for _ in range(10):
                vm["main"](data)
            started = time.perf_counter()
            vm["main"](data)
            number = calls_per_repeat(time.perf_counter() - started)  # includes the network round trip: fewer calls
            result = vm.time_evaluator("main", device, number=number, repeat=repeats)(data)
        return add_work_and_energy(latency_metrics(list(result.results), self.provenance), onnx_path, precision,
                                   self.profile)
