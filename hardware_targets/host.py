"""What the machine we run on is: CPU model and instruction-set flags, read, never assumed.

The project's machines change from session to session (AVX2-only EPYC, AVX-512 EPYC
with VNNI, AVX-512 Xeon), so anything that depends on the host reads it here.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class HostCPU:
    model: str
    flags: frozenset[str]
    cores: int

    def has_any(self, flags) -> bool:
        return any(f in self.flags for f in flags)

    @property
    def key(self) -> str:
        """Short and stable per CPU kind: keys caches of figures measured on this host."""
        text = self.model + " " + " ".join(sorted(self.flags))
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def parse_cpuinfo(text: str, cores: int = 1) -> HostCPU:
    """The first processor's model and flags from ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``)."""
    model, flags = platform.machine() or "unknown", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model == (platform.machine() or "unknown"):
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return HostCPU(model, flags, cores)


@functools.lru_cache(maxsize=1)
def host_cpu() -> HostCPU:
    import os

    try:
        text = CPUINFO.read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text, os.cpu_count() or 1)
