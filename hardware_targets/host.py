"""What the machine we run on is: CPU model and instruction-set flags, read, never assumed.

The project's machines change from session to session (AVX2-only EPYC, AVX-512 EPYC
with VNNI, AVX-512 Xeon), so anything that depends on the host reads it here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


# Instruction-set flags worth naming when a figure depends on them (x86 /proc/cpuinfo names, then Arm's).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_int8", "asimd", "asimdhp", "asimddp", "sve")


@dataclass(frozen=True)
class HostCPU:
    model: str
    flags: frozenset[str]
    cores: int
    mhz: float | None = None  # as /proc/cpuinfo reports it (a VM reports its nominal clock)
    family: str = ""  # vendor and family, e.g. "AuthenticAMD family 25": VMs often hide the model's name

    @property
    def isa(self) -> list[str]:
        return [f for f in ISA_FLAGS if f in self.flags]

    def summary(self) -> dict:
        """What a result or model card records of the CPU it was measured on."""
        return {"model": self.model, "isa": self.isa, "key": self.key}

    def peak_macs_per_cycle(self, fma_width: dict[str, float] | None = None) -> dict[str, float]:
        """Per core, from the vector width and FMA units the flags show: fp32 lanes x 2 FMA pipes (1 without FMA).
        int8 QDQ graphs run in float (TVM and onnxruntime's QDQ fallback), so int8 gets the fp32 rate; fp16 runs
        natively only with AVX512-FP16 or Arm FP16, else in software. Derived, not measured. The flags tell the
        instructions, not the units' width: ``fma_width`` caps the fp32 rate per CPU family where the units are
        narrower (Zen 4 runs AVX-512 on 256-bit units, half the rate its flags suggest)."""
        lanes = 16 if "avx512f" in self.flags else 8 if self.has_any(("avx2", "avx")) else 4
        fma = 2 if self.has_any(("fma", "asimd")) else 1
        fp32 = float(lanes * fma)
        if fma_width and self.family in fma_width:
            fp32 = min(fp32, float(fma_width[self.family]))
        native_fp16 = self.has_any(("avx512_fp16", "asimdhp"))
        return {"fp32": fp32, "fp16": 2 * fp32 if native_fp16 else 0.0, "int8": fp32}

    def has_any(self, flags) -> bool:
        return any(f in self.flags for f in flags)

    @property
    def key(self) -> str:
        """Short and stable per CPU kind: keys caches of figures measured on this host."""
        text = self.model + " " + " ".join(sorted(self.flags))
        return hashlib.sha256(text.encode()).hexdigest()[:10]


CPU_KIND_PREFIX = "edgesearch-cpu-"


def cpu_kind_resource(key: str) -> str:
    """The Ray custom resource a node of one CPU kind advertises (``ray start --resources``), so that a host
    target's candidates are timed on the kind of CPU the search was submitted from."""
    return f"{CPU_KIND_PREFIX}{key}"


def parse_cpuinfo(text: str, cores: int = 1) -> HostCPU:
    """The first processor's model, flags and clock from ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``)."""
    unknown = platform.machine() or "unknown"
    model, flags, mhz, vendor, family = unknown, frozenset(), None, "", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model == unknown:
            model = value.strip()
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "cpu family" and not family:
            family = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        elif key == "cpu mhz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                pass
    return HostCPU(model, flags, cores, mhz, f"{vendor} family {family}" if vendor and family else "")


def describe_host(data: dict, cpu: HostCPU) -> dict:
    """A local profile's fields filled in from the detected CPU: cores, clock, peak MAC rates and active power.

    ``power_mw_per_core`` maps substrings of CPU model names to one core's active power (the profile's data, with
    sources); the first that the model contains applies, else its ``default``. A worker times on one thread, so a
    candidate's energy is that power times its measured latency."""
    out = dict(data)
    out["cores"] = cpu.cores
    if cpu.mhz:
        out["clock_mhz"] = cpu.mhz
    peak = dict(data.get("peak_macs_per_cycle") or {})
    derived = cpu.peak_macs_per_cycle(data.get("fp32_macs_per_cycle_by_family"))
    out["peak_macs_per_cycle"] = {k: (derived[k] or peak.get(k, 0.0)) for k in derived}
    classes = data.get("power_mw_per_core") or {}
    match = next((v for k, v in classes.items() if k != "default" and k.lower() in cpu.model.lower()),
                 classes.get("default"))
    if match:
        out["power_active_mw"] = float(match)
    out["description"] = f"{data.get('description', 'this machine')}: {cpu.model}, {cpu.cores} cores" + (
        f" at {cpu.mhz:.0f} MHz" if cpu.mhz else "") + f"; {' '.join(cpu.isa) or 'no vector ISA flags read'}"
    return out


@functools.lru_cache(maxsize=1)
def host_cpu() -> HostCPU:
    import os

    try:
        text = CPUINFO.read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text, os.cpu_count() or 1)


BUSY_PERCENT = 25.0  # of one core over the sample: a process this busy takes time slices from a timing


def competing_processes(interval_s: float = 0.5) -> list[tuple[str, int, float]]:
    """Other processes (not this one nor its children) that kept the CPU busy over ``interval_s``, busiest first,
    as (command, pid, percent of one core): a latency timed on this machine meanwhile is timed under their load
    (a second search started beside a first timed the same candidate 1.6x slower)."""
    import time

    import psutil

    me = psutil.Process()
    own = {me.pid, *(child.pid for child in me.children(recursive=True))}
    procs = [p for p in psutil.process_iter() if p.pid not in own]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)  # the first call starts the sample
    time.sleep(interval_s)
    busy = []
    for p in procs:
        try:
            percent = p.cpu_percent(None)
            if percent >= BUSY_PERCENT:
                argv = p.cmdline()
                command = " ".join([Path(argv[0]).name, *argv[1:]]) if argv else p.name()
                busy.append((command if len(command) <= 60 else command[:57] + "...", p.pid, percent))
        except psutil.Error:  # ended, or not ours to read
            continue
    return sorted(busy, key=lambda b: -b[2])
