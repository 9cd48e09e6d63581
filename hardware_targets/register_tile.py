"""What the innermost tiles of MetaSchedule's schedules on x86 CPUs decide: the prior for its first picks (the
register tile), and the schedules TVM cannot build (a vectorized loop around a tensorized product).

MetaSchedule's XGBoost cost model scores candidates at random until it has measured 100 samples, so at the few
trials per task a search affords (1-4) each task's measured schedules are random draws from the design space.
The draws that ruin a build keep one output vector in registers per innermost tile: every fused multiply-add
then waits for the one before it (18.8 against 190.8 us for the same pointwise convolution, NOTES.md). Until the
XGBoost model has its samples, candidates are ranked by how many output vectors their innermost tile keeps in
registers: enough independent sums to keep the FMA units busy (8), few enough to fit the register file. A
schedule that inlines a convolution's padding (its bounds check then runs in the innermost loop), or that
vectorizes its product over a number of lanes that is not a power of two, comes after one that does neither.
"""

from __future__ import annotations

import math

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.cost_model import PyCostModel, XGBModel
from tvm.s_tir.meta_schedule.postproc import PyPostproc
from tvm.tirx import ForKind

TILING = "meta_schedule.tiling_structure"
TENSORIZE = "meta_schedule.auto_tensorize"
ACCUMULATORS = 8  # independent sums to hide an FMA's latency (about 4 cycles) on its two units
INLINED = -2  # SampleComputeLocation's decision that inlines the block into its consumer
INLINED_PADDING_SCORE = 0.25
UNEVEN_VECTOR_SCORE = 0.25
TIE_BREAK = 0.01  # the most a tie-break adds to a prior score: less than the prior's steps between two scores
FAILED_RUN_S = 1e9  # MetaSchedule records a schedule that failed to build or run at 1e10 s


def _tiled_blocks(trace) -> list[tuple[bool, list[int]]]:
    """Per multi-level-tiled block of a schedule, in trace order: whether it is tensorized with an intrinsic, and
    the innermost factors of its spatial loops (tiled in four levels; the vector axis's lanes are split off by the
    wide-vector rule and sampled in three), outermost axis first."""
    blocks: list[tuple[bool, list[int]]] = []
    for inst in trace.insts:
        kind = inst.kind.name
        if kind == "Annotate" and str(inst.attrs[0]) == TILING:
            blocks.append((False, []))
        elif blocks and kind == "Annotate" and str(inst.attrs[0]) == TENSORIZE and str(inst.inputs[1]):
            blocks[-1] = (True, blocks[-1][1])
        elif blocks and kind == "SamplePerfectTile" and len(trace.decisions[inst]) == 4:
            blocks[-1][1].append(int(trace.decisions[inst][-1]))
    return blocks


def register_tiles(trace) -> list[int]:
    """Per multi-level-tiled block of a schedule, the output vectors its innermost tile computes: the product of
    the innermost factors of its spatial loops."""
    return [math.prod(innermost) for _, innermost in _tiled_blocks(trace)]


def inlines_a_padding(trace) -> bool:
    """Whether a schedule inlines a block whose place MetaSchedule samples, in these networks a convolution's
    padding, into the convolution: every input read then checks the image's bounds in the innermost loop. Over 576
    measured schedules of MobileNetV1-0.25 the two largest padded convolutions took 5-6x their best time when their
    padding was inlined (median), against 1.6-1.9x when it was not (NOTES.md)."""
    return any(inst.kind.name == "SampleComputeLocation" and int(trace.decisions[inst]) == INLINED
               for inst in trace.insts)


def vector_lanes(sch) -> list[int]:
    """Per multi-level-tiled block of a post-processed schedule (as MetaSchedule's cost model receives it), the
    extent of its innermost loop if that loop is vectorized. The vectorizing postprocessor fuses the innermost
    spatial loops, so with fewer channels than a vector holds (8 against AVX-512's 16) the image's innermost tile
    joins them: 3 columns of 8 channels make a loop of 24."""
    lanes: list[int] = []
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    while blocks:
        block = blocks.pop()
        blocks.extend(sch.get_child_blocks(block))
        loops = sch.get_loops(block)
        if loops and TILING in sch.get(block).annotations:
            innermost = sch.get(loops[-1])
            if int(innermost.kind) == ForKind.VECTORIZED:
                lanes.append(int(innermost.extent))
    return lanes


def uneven_vectors(sch) -> bool:
    """Whether a tiled block's vectorized loop is not a power of two. The 48x48x8 depthwise convolution of
    MobileNetV1-0.25 took 128-217 us in four schedules over 24 or 48 lanes and 9.5-31 us with only their column tile
    changed to give 8-64 lanes (Emerald Rapids; NOTES.md). At 1 trial per task such a draw made one build of four
    the slowest."""
    return any(n & (n - 1) for n in vector_lanes(sch))


def first_pick_score(sch, registers: int) -> float:
    """The prior's score of a post-processed schedule: its worst block's register tile, a quarter of it if it
    inlines a padding, and a quarter again if it vectorizes over uneven lanes."""
    trace = sch.trace
    score = min((tile_score(t, registers) for t in register_tiles(trace)), default=1.0)
    if inlines_a_padding(trace):
        score *= INLINED_PADDING_SCORE
    if uneven_vectors(sch):
        score *= UNEVEN_VECTOR_SCORE
    return score


def vectorizes_a_tensorized_product(trace) -> bool:
    """Whether a schedule vectorizes a loop around a tensorized product, which TVM cannot lower ("Cannot broadcast
    lanes=32 ... to 128" when building). The vectorizing postprocessor takes a block's innermost loop, that of
    its last spatial axis; in a block tensorized with an intrinsic (VNNI's 16x4 dot product) that loop runs over
    whole intrinsic calls, and only a tile of 1 leaves nothing to vectorize. In two builds of MobileNetV1-0.25 int8,
    all 45 such samples failed to build and the 21 other tensorized ones built (NOTES.md)."""
    return any(tensorized and innermost and innermost[-1] > 1 for tensorized, innermost in _tiled_blocks(trace))


@derived_object
class BuildableTensorization(PyPostproc):
    """Drops the schedules ``vectorizes_a_tensorized_product`` finds from a design space, so that no measured trial
    is spent on a build that fails: at 1 trial per task, such a task was left on TVM's naive loops."""

    def _initialize_with_tune_context(self, context) -> None:
        pass

    def apply(self, sch) -> bool:
        return not vectorizes_a_tensorized_product(sch.trace)

    def clone(self):
        return BuildableTensorization()


def tile_score(tile: int, registers: int) -> float:
    """1 for a tile of ``ACCUMULATORS`` up to the register file less a few for operands, less on either side."""
    return min(tile / ACCUMULATORS, 1.0) * min((registers - 4) / tile, 1.0)


def warm_up(model: XGBModel, target, records) -> int:
    """Trains ``model`` on tuning records of other workloads measured for ``target`` (the target's record cache);
    returns how many it took. MetaSchedule's features describe loops and memory traffic, not layer shapes, so what
    was fast for one convolution ranks the schedules of another: over MobileNetV1-0.25's 23 tasks on a Zen 3 EPYC,
    a model trained on the other 22 tasks' 440 records picked, among schedules the prior ranks alike, ones summing to
    1.39x the best measured, against 1.67x for a random pick (NOTES.md)."""
    import tvm_ffi
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    groups: dict[int, tuple[object, list]] = {}
    for record in records:
        secs = [float(s) for s in record.run_secs or ()]
        if secs and max(secs) < FAILED_RUN_S:
            mod = record.workload.mod
            groups.setdefault(tvm_ffi.structural_hash(mod), (mod, []))[1].append((record, secs))
    taken = 0
    for mod, measured in groups.values():
        candidates, results = [], []
        for record, secs in measured:
            try:
                sch = Schedule(mod)
                record.trace.apply_to_schedule(sch, remove_postproc=False)
            except Exception:  # a record this TVM cannot replay teaches nothing
                continue
            candidates.append(ms.MeasureCandidate(sch, record.args_info))
            results.append(ms.runner.RunnerResult(secs, None))
        if candidates:
            model.update(ms.TuneContext(mod=mod, target=target, task_name="records"), candidates, results)
            taken += len(candidates)
    return taken


@derived_object
class RegisterTileFirst(PyCostModel):
    """MetaSchedule's XGBoost cost model, with ``first_pick_score`` standing in for its random warm-up. Among the
    schedules the prior ranks first, the model warmed with ``records`` of other workloads (``warm_up``) picks where
    at least ``warmup_samples`` of them were given; otherwise a random draw does."""

    def __init__(self, registers: int, seed: int = 0, target=None, records=(), warmup_samples: int = 100):
        self.xgb = XGBModel(num_warmup_samples=warmup_samples)
        self.registers = registers
        self.rng = np.random.default_rng(seed)
        self.warm = warm_up(self.xgb, target, records) if records else 0

    def load(self, path: str) -> None:
        self.xgb.load(path)

    def save(self, path: str) -> None:
        self.xgb.save(path)

    def update(self, context, candidates, results) -> None:
        self.xgb.update(context, candidates, results)

    def _trained_on(self, samples: int) -> bool:
        return samples >= self.xgb.num_warmup_samples and self.xgb.booster is not None

    def predict(self, context, candidates) -> np.ndarray:
        if self._trained_on(self.xgb.data_size - self.warm):  # enough of this tuning's own samples
            return self.xgb.predict(context, candidates)
        scores = np.asarray([first_pick_score(c.sch, self.registers) for c in candidates], dtype="float64")
        if not self._trained_on(self.warm) or not len(scores):  # ties fall at random: the picks stay diverse
            return scores + TIE_BREAK * self.rng.random(len(candidates))
        # the warmed model breaks the ties at the top only: its features cost a few ms a schedule, and the
        # evolutionary search ranks hundreds of schedules per task
        top = np.flatnonzero(scores >= scores.max())
        ties = np.zeros(len(candidates))
        ties[top] = np.clip(self.xgb.predict(context, [candidates[i] for i in top]), 0.0, 1.0)
        return scores + TIE_BREAK * ties
