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
from hardware_targets.errors import CandidateError, TargetUnreachableError
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

    def check(self, undone: str = "nothing was trained", timeout_s: float = 10.0) -> None:
        """Reach the board (or its tracker, and a board registered there under the profile's key) once: a board
        that is down failed every candidate of a search at its measure stage, each after its full training."""
        import socket

        from tvm import rpc as tvm_rpc

        super().check(undone)
        rpc = self.profile.rpc or {}
        tracker = bool(rpc.get("tracker_host"))
        host, port = (rpc["tracker_host"], int(rpc["tracker_port"])) if tracker else (rpc.get("host", "127.0.0.1"),
                                                                                      int(rpc["port"]))
        start = (f"python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {port}" if tracker else
                 f"python -m tvm.exec.rpc_server --host 0.0.0.0 --port {port}")
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            if tracker:
                servers = tvm_rpc.connect_tracker(host, port).summary()["server_info"]
            else:
                tvm_rpc.connect(host, port, session_timeout=int(timeout_s))
        except Exception as exc:
            raise TargetUnreachableError(
                f"Target {self.profile.name}: cannot reach {'the RPC tracker' if tracker else 'its RPC server'} at "
                f"{host}:{port} ({getattr(exc, 'strerror', None) or str(exc).strip().splitlines()[-1]}). Start "
                f"'{start}' on {'the tracker host' if tracker else 'the board'}, or correct 'rpc' in "
                f"{self.profile.source}; {undone}.") from None
        if tracker:
            keys = sorted({str(item.get("key", "")).split(":", 1)[-1] for item in servers})
            if rpc["key"] not in keys:
                raise TargetUnreachableError(
                    f"Target {self.profile.name}: the RPC tracker at {host}:{port} has no board under key "
                    f"{rpc['key']!r} (its boards: {', '.join(keys) or 'none'}). On the board, run "
                    f"'python -m tvm.exec.rpc_server --tracker {host}:{port} --key {rpc['key']}'; {undone}.")

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
