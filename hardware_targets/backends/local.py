"""Local backend: the artifact runs on this machine and is timed by TVM's time evaluator (onnxruntime through its
Python API); several runtimes compared on one graph are timed in turns.

Energy comes from the CPU's RAPL counters when they are readable (measured, less the package's baseline power
just before); most VMs expose none, and then it is estimated as the profile's active power per core times the
measured latency.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hardware_targets.backends.base import Backend, add_work_and_energy, calls_per_repeat, latency_metrics
from hardware_targets.compile import CompiledArtifact, load_vm
from hardware_targets.metric import Metric
from hardware_targets.profile import TargetProfile

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


Timer = Callable[[int], tuple[float, int]]
"""Times a block of ``n`` calls of one inference: the seconds per call, and how many calls it made in all (the
energy read around the block is shared by those)."""

WARMUP_CALLS = 10  # first calls page in code and fill caches
BLOCK_WARMUP_CALLS = 2  # untimed calls before each block timed in turns with other runtimes


@dataclass
class Timed:
    seconds_per_call: list[float]  # one figure per block (a timing repeat)
    energy_mj: float | None  # per call, from RAPL; None where no counter is readable (or none was asked for)

    @property
    def median_ms(self) -> float:
        """Milliseconds per call, the median over the blocks: the figure runtimes are compared by."""
        return float(np.median(self.seconds_per_call)) * 1e3


def vm_timer(vm, device, data) -> Timer:
    """A loaded TVM VM's blocks, timed by TVM's time evaluator on ``device`` (in C++ there, no Python call per
    inference; on a board over RPC, one round trip per block)."""
    evaluators: dict[int, Callable] = {}

    def block(n: int) -> tuple[float, int]:
        if n not in evaluators:
            evaluators[n] = vm.time_evaluator("main", device, number=n, repeat=1)
        return float(evaluators[n](data).results[0]), n + 1  # the evaluator's first call is run, not timed

    return block


def tvm_timer(library: str, sample: np.ndarray, input_dtype: str) -> Timer:
    """A TVM library built for this machine, loaded here and timed by ``vm_timer``."""
    import tvm

    device = tvm.cpu()
    data = tvm.runtime.tensor(np.ascontiguousarray(sample, dtype=input_dtype))
    return vm_timer(load_vm(library, device), device, data)


def onnxruntime_timer(session, sample: np.ndarray) -> Timer:
    """An onnxruntime session's blocks, each call through its Python API as a user's program makes it."""
    feed = {session.get_inputs()[0].name: sample}

    def block(n: int) -> tuple[float, int]:
        started = time.perf_counter()
        for _ in range(n):
            session.run(None, feed)
        return (time.perf_counter() - started) / n, n

    return block


def time_in_turns(timers: dict[str, Timer], repeats: int, rapl: Path | None = RAPL) -> dict[str, Timed]:
    """Time each runtime ``repeats`` times, in turns: every repeat runs each timer for a block of about 2 ms, in an
    order rotated from repeat to repeat, so that a change in the machine's speed (another process, frequency, a
    noisy neighbour on a VM) falls on all of them alike and a choice between them is fair. Each block starts with
    untimed calls, as the runtime before it evicted this one's weights from the caches: a model of a few hundred
    microseconds would otherwise be timed partly cold (NOTES.md). With one timer this is plain repeated timing.
    Energy comes from the RAPL counters under ``rapl`` when readable: each timer's timed blocks summed, less the
    package's power measured just before."""
    keys = list(timers)
    number = {}
    for key, timer in timers.items():
        timer(WARMUP_CALLS)
        number[key] = calls_per_repeat(timer(1)[0])
    idle = read_rapl(rapl) if rapl is not None else None
    if idle is not None:  # the package's power just before, with whatever else runs, is subtracted
        started = time.perf_counter()
        time.sleep(RAPL_BASELINE_S)
        baseline = (rapl_delta_uj(idle, read_rapl(rapl)), time.perf_counter() - started)
    seconds = {key: [] for key in keys}
    energy = {key: [0, 0.0, 0] for key in keys}  # µJ, seconds and calls over the key's blocks
    for r in range(repeats):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            if len(keys) > 1:  # the timer before evicted this one's weights: a block times warm calls, as alone
                timers[key](BLOCK_WARMUP_CALLS)
            before, started = (read_rapl(rapl) if idle is not None else None), time.perf_counter()
            per_call, calls = timers[key](number[key])
            seconds[key].append(per_call)
            if idle is not None:
                energy[key][1] += time.perf_counter() - started
                energy[key][0] += rapl_delta_uj(before, read_rapl(rapl))
                energy[key][2] += calls
    return {key: Timed(seconds[key], inference_energy_mj(*baseline, *energy[key]) if idle is not None else None)
            for key in keys}


def time_libraries(libraries: dict[str, tuple[str, np.ndarray]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each TVM library (path, input sample) built for this machine, every block of each timed
    in turns with all the others: figures taken at different moments, compared on the same footing."""
    timers = {key: tvm_timer(library, sample, sample.dtype.name) for key, (library, sample) in libraries.items()}
    return {key: timed.seconds_per_call for key, timed in time_in_turns(timers, repeats, rapl=None).items()}


class LocalBackend(Backend):
    provenance = "measured"

    def __init__(self, profile: TargetProfile):
        self.profile = profile

    def measure(self, artifact: CompiledArtifact, onnx_path: Path, precision: str, sample: np.ndarray,
                repeats: int) -> dict[str, Metric]:
        return self.measure_runtimes(artifact, onnx_path, precision, sample, repeats)["tvm"]

    def measure_runtimes(self, artifact: CompiledArtifact, onnx_path: Path, precision: str, sample: np.ndarray,
                         repeats: int, session=None) -> dict[str, dict[str, Metric]]:
        """The TVM library and, given a ``session`` of the same graph, onnxruntime, timed in turns: the runtimes a
        candidate can ship on without tuning. Untuned TVM took 5-39x onnxruntime's time on inputs of 32x32 and more
        at widths 1-2 (NOTES.md), so a search timing TVM alone would rule out what onnxruntime runs in budget."""
        timers = {"tvm": tvm_timer(artifact.library, sample, artifact.input_dtype)}
        if session is not None:
            timers["onnxruntime"] = onnxruntime_timer(session, sample)
        return {key: add_work_and_energy(latency_metrics(timed.seconds_per_call, self.provenance), onnx_path,
                                         precision, self.profile, timed.energy_mj)
                for key, timed in time_in_turns(timers, repeats).items()}


def time_onnxruntime(session, sample: np.ndarray, repeats: int) -> dict[str, Metric]:
    """The same graph in onnxruntime, timed the same way: a figure tracked beside TVM's."""
    timed = time_in_turns({"onnxruntime": onnxruntime_timer(session, sample)}, repeats, rapl=None)
    return latency_metrics(timed["onnxruntime"].seconds_per_call, "measured", prefix="ort_latency")
