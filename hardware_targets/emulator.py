"""The analytic device model: latency and energy of a graph on a profile, per operator.

For each fused operator: time = max(MACs / (peak MACs per cycle x efficiency x clock x cores),
bytes moved / memory bandwidth) + per-operator overhead; the graph adds a per-call
overhead. Unstructured zeros only save MACs where the profile says its kernels skip
them; structured pruning already shows up as smaller layers. Energy is active power
x latency where the profile gives a system power (MCU-class figures), else the sum of
per-MAC and per-byte energies.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware_targets.graph import OpCost
from hardware_targets.profile import TargetProfile, arithmetic

BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
# Horowitz, ISSCC 2014, 45 nm (../shared/hardware-facts.md): multiply + add per MAC, DRAM read per byte.
# Used when a profile gives neither a system power nor its own per-operation energies.
HOROWITZ_PJ_PER_MAC = {"fp32": 4.6, "fp16": 1.5, "int8": 0.23}
HOROWITZ_PJ_PER_BYTE = 160.0


@dataclass(frozen=True)
class EmulatorParams:
    """The fitted (or profile-given) factors of the model."""

    efficiency: dict[str, float]
    op_overhead_us: float
    call_overhead_us: float
    power_active_mw: float | None = None  # fitted to a board's measured energy; None: the profile's power model

    @classmethod
    def from_profile(cls, profile: TargetProfile) -> "EmulatorParams":
        return cls(dict(profile.efficiency or {"fp32": 1.0, "fp16": 1.0, "int8": 1.0}),
                   float(profile.op_overhead_us or 0.0), float(profile.call_overhead_us or 0.0))


def compute_seconds(op: OpCost, kind: str, profile: TargetProfile) -> float:
    """Seconds of arithmetic at the precision's peak (efficiency 1)."""
    peak = (profile.peak_macs_per_cycle or {}).get(kind, 0)
    if peak <= 0:
        return float("inf")
    macs = op.macs
    if profile.unstructured_sparsity_speedup and op.weights:
        macs = macs * op.nonzero_weights / op.weights
    return macs / (peak * profile.clock_mhz * 1e6 * (profile.cores or 1))


def bytes_moved(op: OpCost, kind: str) -> int:
    return (op.weights + op.activation_elems) * BYTES[kind]


def latency_seconds(ops: list[OpCost], precision: str, profile: TargetProfile, params: EmulatorParams) -> float:
    kind = arithmetic(precision)
    eff = params.efficiency.get(kind, 0)
    total = params.call_overhead_us * 1e-6
    for op in ops:
        compute = compute_seconds(op, kind, profile) / eff if eff > 0 else float("inf")
        memory = bytes_moved(op, kind) / (profile.memory_bandwidth_gbps * 1e9) if profile.memory_bandwidth_gbps else 0
        total += max(compute, memory) + params.op_overhead_us * 1e-6
    return total


def energy_joules(ops: list[OpCost], precision: str, profile: TargetProfile, latency_s: float,
                  power_mw: float | None = None) -> float:
    """Energy per inference: system power (``power_mw`` where fitted, else the profile's) x latency where known, else
    per-operation energies."""
    if power_mw or profile.power_active_mw:
        return (power_mw or profile.power_active_mw) * 1e-3 * latency_s
    kind = arithmetic(precision)
    per_mac = (profile.energy_pj_per_mac or HOROWITZ_PJ_PER_MAC).get(kind, 0)
    per_byte = profile.energy_pj_per_byte if profile.energy_pj_per_byte is not None else HOROWITZ_PJ_PER_BYTE
    pj = sum(op.macs * per_mac + bytes_moved(op, kind) * per_byte for op in ops)
    return pj * 1e-12
