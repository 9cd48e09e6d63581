"""Remote backend: upload the build for the profile's target over TVM RPC and time it on the device.

The device runs ``python -m tvm.exec.rpc_server``; the profile's ``rpc`` field gives
``host`` and ``port`` (direct), or ``tracker_host``, ``tracker_port`` and ``key``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hardware_targets.backends.base import Backend, add_work_and_energy, latency_metrics
from hardware_targets.backends.local import time_in_turns, vm_timer
from hardware_targets.compile import CompiledArtifact
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
    """Times the build the target loads (``artifact``: built for the profile's TVM target by the pipeline) on the
    board: uploaded over RPC, loaded there, timed by TVM's time evaluator on the device."""

    provenance = "measured"

    def __init__(self, profile: TargetProfile):
        self.profile = profile

    def measure(self, artifact: CompiledArtifact, onnx_path: Path, precision: str, sample: np.ndarray,
                repeats: int) -> dict[str, Metric]:
        import tvm
        from tvm import relax

        try:
            remote = connect(self.profile.rpc or {})
            remote.upload(artifact.library)
            module = remote.load_module(Path(artifact.library).name)
        except Exception as exc:
            raise CandidateError("measure", f"RPC to {self.profile.name} at {self.profile.rpc} failed: {exc}") from exc
        device = remote.cpu()
        data = tvm.runtime.tensor(np.ascontiguousarray(sample, dtype=artifact.input_dtype), device)
        timer = vm_timer(relax.VirtualMachine(module, device), device, data)
        timed = time_in_turns({"tvm": timer}, repeats, rapl=None)["tvm"]  # this machine's RAPL is not the board's
        return add_work_and_energy(latency_metrics(timed.seconds_per_call, self.provenance), onnx_path, precision,
                                   self.profile)
