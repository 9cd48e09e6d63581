"""Emulated backend: latency and energy from the analytic device model, never timed."""

from __future__ import annotations

from pathlib import Path

from hardware_targets.backends.base import Backend
from hardware_targets.emulator import EmulatorParams, energy_joules, latency_seconds
from hardware_targets.errors import CandidateError
from hardware_targets.graph import op_costs, tflite_op_costs
from hardware_targets.metric import Metric
from hardware_targets.profile import TargetProfile


class EmulatedBackend(Backend):
    provenance = "emulated"

    def __init__(self, profile: TargetProfile, params: EmulatorParams | None = None):
        self.profile = profile
        self.params = params or EmulatorParams.from_profile(profile)

    def measure(self, artifact, onnx_path: Path, precision: str, sample, repeats: int) -> dict[str, Metric]:
        if self.profile.arithmetic_reason(precision):
            raise CandidateError("measure", f"target {self.profile.name} has no {precision} arithmetic "
                                            "(peak_macs_per_cycle is 0 in its profile)")
        # the operators the device runs: a .tflite's own for TFLite Micro, else the ONNX graph's as a compiler fuses them
        ops = tflite_op_costs(onnx_path) if Path(onnx_path).suffix == ".tflite" else op_costs(onnx_path)
        seconds = latency_seconds(ops, precision, self.profile, self.params)
        ms = seconds * 1e3
        metrics = {
            "latency_ms_median": Metric(ms, "ms", "emulated"),
            "latency_ms_p90": Metric(ms, "ms", "emulated"),  # the model is deterministic
            "macs": Metric(float(sum(op.macs for op in ops)), "count", "measured"),
        }
        joules = energy_joules(ops, precision, self.profile, seconds, self.params.power_active_mw)
        metrics["energy_mj"] = Metric(joules * 1e3, "mJ", "emulated")
        return metrics
