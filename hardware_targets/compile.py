"""The TVM build for a target, the pipeline's compile stage: ONNX -> Relax (TVM's ONNX frontend) -> MetaSchedule
tuning -> shared library. It lives with the targets because the backends load what it builds (``CompiledArtifact``,
``load_vm``) and because what it needs is the target's: its TVM target, its CPU's tensor intrinsics, its tuning
records.

For an x86 CPU, float convolutions are built channels-last and tuned in a design space whose tiling vectorizes
them at the CPU's full vector width (``channels_last``, ``design_space``), and the first schedules measured are
those that keep enough sums in registers (``first_picks``).

Tuning records live in one JSON database per target under the tuning cache.
Before tuning, tasks whose workload already has a record are dropped, so a
second candidate with the same layer shapes reuses the schedules instead of
re-tuning them. A file lock serialises tuning per target: two workers never
write the same database at once, and the second one sees the first one's records.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardware_targets.errors import CandidateError, first_line
from hardware_targets.integer import (
    TENSOR_INTRIN,
    import_x86_intrinsics,
    integer_kernels,
    integer_kernels_apply,
    register_vnni_intrinsic,
    tensor_intrin_stand_in,
    x86_cpu,
)

TRIALS_PER_ROUND = 32  # MetaSchedule pays a fixed builder cost per round; keep rounds full
# MetaSchedule's default evolves 512 schedules per round, several seconds on 2 cores for rounds of a few
# dozen trials on these small kernels; 128 keeps the cost model's pick without most of that time.
POPULATION = 128
RETRY_ROUNDS = 2  # per-task tuning: more rounds for a task whose every sample failed to build
# ... each building this many samples at least: at 1 trial per task, a retry of one sample was as likely to fail
# again (TVM cannot lower some VNNI-tensorized schedules; about half of those first picked, NOTES.md)
RETRY_SAMPLES = 4
WARM_RECORDS = 400  # records of other workloads that warm the cost model: about 30 ms each to replay and learn


@dataclass(frozen=True)
class CompiledArtifact:
    """A TVM-compiled model for one target, and what tuning did for it."""

    library: str  # path of the exported shared library
    target: dict[str, Any]
    input_shape: tuple[int, ...]
    input_dtype: str
    tasks_total: int = 0
    tasks_tuned: int = 0
    tasks_reused: int = 0
    tuning_seconds: float = 0.0
    tasks_left: int = 0  # not started: the wall-time cap came first
    integer_products: int = 0  # int8 pointwise convolutions computed as uint8 x int8 products (VNNI targets)

    def tuning(self) -> dict:
        """What tuning did, as a result records it and ``tuning_summary`` words it."""
        return {"tasks": self.tasks_total, "tuned": self.tasks_tuned, "reused": self.tasks_reused,
                "left_at_cap": self.tasks_left, "seconds": round(self.tuning_seconds, 3),
                "integer_products": self.integer_products}


def tuning_summary(tuning: dict) -> str:
    """A tuned build's ``tuning`` record in words: tasks with a schedule, tuned now or reused from the target's records
    (a task another candidate already tuned is reused, not left out), and any left on TVM's default loops."""
    scheduled = tuning["tuned"] + tuning["reused"]
    text = (f"{scheduled} of {tuning['tasks']} tasks scheduled: {tuning['tuned']} tuned now, "
            f"{tuning['reused']} from records")
    capped = tuning.get("left_at_cap", 0)
    if scheduled + capped < tuning["tasks"]:
        text += f", {tuning['tasks'] - scheduled - capped} without a schedule"
    if capped:
        text += f", {capped} left untuned at the wall-time cap"
    return f"{text}; {tuning['seconds']:.0f} s"


def target_key(target: dict[str, Any]) -> str:
    """A stable folder name for a target's tuning records."""
    digest = hashlib.sha256(json.dumps(target, sort_keys=True).encode()).hexdigest()[:10]
    return f"{target.get('kind', 'target')}-{digest}"


def tuning_dir(cache_dir: Path, target: dict[str, Any]) -> Path:
    """Records per target; a target for this machine (no triple) per CPU kind too, since the schedules tuned on one
    CPU are what that CPU ran fastest."""
    if "mtriple" in target:
        return Path(cache_dir) / target_key(target)
    from hardware_targets.host import host_cpu

    return Path(cache_dir) / f"{target_key(target)}-{host_cpu().key}"


def import_onnx(onnx_path: Path, input_shape: tuple[int, ...], input_dtype: str):
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(onnx_path))
    name = model.graph.input[0].name
    return from_onnx(
        model, shape_dict={name: list(input_shape)}, dtype_dict={name: input_dtype}, keep_params_in_input=False
    )


def channels_last(mod, tvm_target):
    """A float graph's 2-D convolutions in NHWC for an x86 CPU target, so that the vectorized innermost axis of
    each is its channels (8-256 here) rather than its image width (down to 3).

    With the wide-vector tiling of ``design_space``, MobileNetV1-0.25 tuned 1.2-1.5x faster than in NCHW at 1 and 4
    trials per task; untuned, the layouts time alike (NOTES.md). Graphs with quantize steps keep NCHW: the integer
    products are written for it, and layout changes around float QDQ were not measured. Other targets keep the
    graph's layout."""
    from tvm import relax

    if not x86_cpu(tvm_target) or _quantizes(mod):
        return mod
    return relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)


def _quantizes(mod) -> bool:
    """True when a Relax function of ``mod`` quantizes or dequantizes (an int8 QDQ graph)."""
    from tvm import relax

    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") in ("relax.quantize", "relax.dequantize"):
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


def open_database(work_dir: Path, target=None):
    """The target's JSON tuning database (``target``, a ``tvm.target.Target``, says which tensor intrinsics its
    records may name); a corrupted one is moved aside (with a warning) and started afresh."""
    import warnings

    from tvm.s_tir import meta_schedule as ms

    try:
        return ms.database.JSONDatabase(work_dir=str(work_dir))
    except Exception as exc:
        if "TensorIntrin" in str(exc):  # a tensorized record, read in a process that has not registered them yet
            register_tensor_intrinsics(target)
            try:
                return ms.database.JSONDatabase(work_dir=str(work_dir))
            except Exception as again:
                exc = again
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for name in ("database_workload.json", "database_tuning_record.json"):
            path = Path(work_dir) / name
            if path.exists():
                path.rename(path.with_name(f"{name}.corrupt-{stamp}"))
        warnings.warn(f"tuning records in {work_dir} could not be read ({type(exc).__name__}); moved aside as "
                      f"*.corrupt-{stamp}, tuning starts afresh", RuntimeWarning, stacklevel=2)
        return ms.database.JSONDatabase(work_dir=str(work_dir))


def merge_databases(src_dir: Path, dst_dir: Path) -> int:
    """Commit the records of the database in ``src_dir`` that the one in ``dst_dir`` lacks; returns how many.

    Record by record, under the target's lock: a record names its workload by its line in its own database's
    workload file, so the files cannot simply be concatenated."""
    from filelock import FileLock
    from tvm.s_tir import meta_schedule as ms

    def key(record) -> tuple:  # the workload's structural hash and the schedule's trace
        return str(record.workload.as_json()[0]), str(record.trace.as_json())

    Path(dst_dir).mkdir(parents=True, exist_ok=True)
    with FileLock(str(Path(dst_dir) / ".lock")):
        src, dst = open_database(src_dir), open_database(dst_dir)
        have = {key(r) for r in dst.get_all_tuning_records()}
        added = 0
        for record in src.get_all_tuning_records():
            if key(record) in have:
                continue
            workload = dst.commit_workload(record.workload.mod)
            dst.commit_tuning_record(ms.database.TuningRecord(record.trace, workload, record.run_secs, record.target,
                                                              record.args_info))
            have.add(key(record))
            added += 1
    return added


def _has_record(database, task) -> bool:
    mod = task.dispatched[0]
    if not database.has_workload(mod):
        return False
    return bool(database.get_top_k(database.commit_workload(mod), 1))


def build_kernel(mod, target, _params):
    """MetaSchedule's default build, minus its import of every tensor intrinsic.

    That import parses hundreds of TVMScript functions (about 20 s on our 2-core
    machines) in each builder process, which dominated tuning time when
    MetaSchedule's builder started fresh processes every round. On CPU (LLVM)
    targets a tensorized schedule already carries its LLVM intrinsics when it
    reaches the builder; other targets still get the registrations.
    """
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    if target.kind.name != "llvm":
        import tvm.s_tir.tensor_intrin  # noqa: F401  (registers intrinsics for tensorized schedules)
    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _build_and_export(mod, target) -> str:
    """One builder sample: ``build_kernel``, then MetaSchedule's own export (a library file for the runner)."""
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export

    return default_export(build_kernel(mod, target, None))


@functools.lru_cache(maxsize=1)
def _pooled_builder_class():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(PyBuilder):
        """MetaSchedule's local build with one process pool for a whole tuning run. ``LocalBuilder`` starts a fresh
        pool every round (TVM's guard against a leak in long-lived workers), each worker importing TVM and torch:
        3-4 s per round on 2 cores, a third of tuning a 10-task model at 4 trials per task. One run's rounds are
        too few for a leak to matter; the pool is shut down after."""

        def __init__(self, max_workers: int, timeout_sec: float = 30.0):
            super().__init__()
            self.timeout_sec = timeout_sec
            self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec)

        def build(self, build_inputs):
            results = []
            for done in self.pool.map_with_error_catching(lambda args: _build_and_export(*args),
                                                          [(b.mod, b.target) for b in build_inputs]):
                if done.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(done.value, None))
                elif done.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"build timed out after {self.timeout_sec} s"))
                else:
                    results.append(BuilderResult(None, f"build failed: {done.value}"))
            return results

    return PooledBuilder


def register_tensor_intrinsics(target=None) -> None:
    """TVM's tensor intrinsics, with VNNI's mended: a record whose schedule tensorizes names its intrinsic, and a
    database holding one cannot be read, nor its schedule applied correctly, without them. For an x86 ``target``
    (a ``tvm.target.Target``) only x86's are registered; else every target's."""
    import importlib

    if target is None or not x86_cpu(target):
        if getattr(sys.modules.get(TENSOR_INTRIN), "edgesearch_stand_in", False):
            del sys.modules[TENSOR_INTRIN]
        importlib.import_module(TENSOR_INTRIN)
    register_vnni_intrinsic()


def generic_cpu(target: dict[str, Any]) -> bool:
    """An LLVM target for no particular CPU: MetaSchedule gives it its plain LLVM rules, which tensorize nothing."""
    return target.get("kind") == "llvm" and not any(target.get(k) for k in ("mcpu", "mattr", "mtriple"))


@contextlib.contextmanager
def _only_the_targets_intrinsics(target: dict[str, Any], tvm_target):
    """Let MetaSchedule tune a CPU target with its own tensor intrinsics only.

    Each ``TuneContext`` imports ``tvm.s_tir.tensor_intrin`` so that schedule rules can name intrinsics; its
    ``__init__`` parses every target's (CUDA, ROCm, Arm, Hexagon, x86), 40 s to 2 minutes on our 2-core machines,
    once per process (each Ray worker's first tuned candidate). A generic CPU target's rules name none, an x86
    CPU's name x86's only: those are registered, and a stand-in for the package answers the import while it tunes.
    It is removed after, so that other targets still import the real one.
    """
    if TENSOR_INTRIN in sys.modules or not (generic_cpu(target) or x86_cpu(tvm_target)):
        yield
        return
    stand_in = sys.modules[TENSOR_INTRIN] = tensor_intrin_stand_in()
    try:
        if not generic_cpu(target):
            import_x86_intrinsics()
        yield
    finally:
        if sys.modules.get(TENSOR_INTRIN) is stand_in:
            del sys.modules[TENSOR_INTRIN]


def vector_bits(tvm_target) -> int:
    """The width of an x86 target's vector registers: 512 with AVX-512, 256 with AVX2, else SSE's 128."""
    from tvm.target import codegen

    for bits, feature in ((512, "avx512f"), (256, "avx2")):
        if codegen.target_has_features(feature, tvm_target):
            return bits
    return 128


def vector_registers(tvm_target) -> int:
    """How many vector registers an x86 target's code can use: 32 with AVX-512, 16 with AVX2 or SSE."""
    return 32 if vector_bits(tvm_target) == 512 else 16


def design_space(tvm_target, mod):
    """MetaSchedule's design space for a task (``mod``) on this target: its own rules, except that on an x86 CPU
    the multi-level tiling of convolutions and products vectorizes the output's innermost axis at the CPU's full
    vector width (MetaSchedule's wide-vector rule, written for Hexagon), and schedules that vectorize around a
    tensorized product, which TVM cannot build, are left out (``register_tile.BuildableTensorization``).

    The plain rule samples the innermost tile freely, and at the few trials per task a search can afford most
    samples vectorize a few lanes or none: on MobileNetV1-0.25 (Emerald Rapids, 1 and 4 trials per task) it gave
    3.6 and 1.5 ms, the wide vector 1.6 and 0.71 ms in NCHW, 1.0 and 0.60 ms in NHWC (NOTES.md)."""
    from tvm.s_tir import meta_schedule as ms

    if not x86_cpu(tvm_target):
        return "post-order-apply"
    from hardware_targets.register_tile import BuildableTensorization

    default = ms.TuneContext(mod=mod, target=tvm_target, space_generator="post-order-apply",
                             task_name="rules").space_generator
    wide = ms.schedule_rule.MultiLevelTilingWideVector(
        "SSRSRS", vector_bits(tvm_target), 64, None, ms.schedule_rule.ReuseType("may", [1, 2], "global"))
    rules = [wide if type(rule) is ms.schedule_rule.MultiLevelTiling else rule for rule in default.sch_rules]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=[*default.postprocs, BuildableTensorization()],
                                             mutator_probs="from-target")


def first_picks(tvm_target, seed: int, database=None):
    """The cost model that ranks the candidates MetaSchedule measures: on an x86 CPU, its XGBoost model with the
    register-tile prior for its first 100 samples, warmed with the latest ``WARM_RECORDS`` of the target's records
    in ``database`` (``hardware_targets.register_tile``); elsewhere its own."""
    if not x86_cpu(tvm_target):
        return "xgb"
    from hardware_targets.register_tile import RegisterTileFirst

    records = list(database.get_all_tuning_records()) if database is not None else []
    records = records[max(0, len(records) - WARM_RECORDS):]
    return RegisterTileFirst(registers=vector_registers(tvm_target), seed=seed, target=tvm_target, records=records)


def _drop_unnamed_handlers(logger: logging.Logger) -> None:
    """MetaSchedule rebuilds its loggers with ``logging.config.dictConfig``, naming the handlers it finds on its
    logger; one without a name (left by another logging set-up in the same process) makes that call fail."""
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)


def _batches(tasks: list, per_task: bool, one_at_a_time: bool) -> list[list]:
    """The calls to MetaSchedule's task scheduler that tune ``tasks``: all in one with a global budget; with a
    per-task budget, whose share is uniform within a call, one per task weight (or one per task, under a cap)."""
    if not per_task:
        return [tasks]
    if one_at_a_time:
        return [[t] for t in tasks]
    weights = sorted({t.weight for t in tasks})
    return [[t for t in tasks if t.weight == w] for w in weights]


def _tune(mod, target, database, work_dir: Path, trials: int, seed: int,
          trials_per_task: int = 0, stop_at: float | None = None) -> tuple[int, int, int, int]:
    """Tune the tasks that have no record yet; returns (total, tuned, reused, left), tuned counting the tasks that
    now have a schedule and left those never started because ``stop_at`` (a ``time.perf_counter`` value) passed.

    ``trials_per_task`` gives every new task that many trials for each layer it stands for (its weight: MobileNet's
    five 128-channel blocks are one task, about a third of its time, where one unlucky draw cost 5x; MetaSchedule's
    task scheduler otherwise hands whole rounds to the first tasks, and a small global budget never reaches the
    rest); else ``trials`` are spread over the new tasks. With a per-task budget, a task whose every sample failed
    to build (some tensorized samples do, see NOTES.md) gets up to ``RETRY_ROUNDS`` more rounds of at least
    ``RETRY_SAMPLES``: left without a record it would run TVM's naive loops. With ``stop_at`` the tasks are tuned
    one at a time, the most FLOPs first, so that a wall-time cap holds within one task's tuning (MetaSchedule has no
    time limit of its own; tuned together or one at a time, 11 tasks took the same 94 s here)."""
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(mod, target)
    fresh = [t for t in tasks if not _has_record(database, t)]
    if not fresh or (trials <= 0 and trials_per_task <= 0):
        return len(tasks), 0, len(tasks) - len(fresh), 0
    if stop_at is not None and time.perf_counter() >= stop_at:
        return len(tasks), 0, len(tasks) - len(fresh), len(fresh)
    _drop_unnamed_handlers(logging.getLogger("tvm.s_tir.meta_schedule"))
    per_task = trials_per_task or max(1, min(TRIALS_PER_ROUND, trials // len(fresh)))
    todo, started = fresh, set()
    if stop_at is not None:  # under a cap, the tasks that compute most first: where tuning saves the most time
        from tvm.s_tir.analysis import estimate_tir_flops

        todo = sorted(fresh, key=lambda t: -estimate_tir_flops(t.dispatched[0]) * t.weight)
    space = design_space(target, fresh[0].dispatched[0])
    builder = _pooled_builder_class()(max_workers=ms.utils.cpu_count(logical=True))
    runner = ms.runner.LocalRunner()
    try:
        for attempt in range(1 + (RETRY_ROUNDS if trials_per_task else 0)):
            if attempt:
                per_task = max(per_task, RETRY_SAMPLES)
            # one model for the attempt: a task tuned alone under a cap learns from those tuned before it
            cost_model = first_picks(target, seed + attempt, database)
            for batch in _batches(todo, trials_per_task > 0, stop_at is not None):
                if stop_at is not None and time.perf_counter() >= stop_at:
                    break
                started.update(id(t) for t in batch)
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    batch, work_dir=str(work_dir), seed=seed + attempt, space=space,
                    strategy=ms.search_strategy.EvolutionarySearch(population_size=POPULATION),
                )
                share = per_task * batch[0].weight if trials_per_task else per_task
                ms.tune.tune_tasks(
                    tasks=contexts, task_weights=weights, work_dir=str(work_dir),
                    max_trials_global=share * len(batch) if trials_per_task else trials,
                    max_trials_per_task=share, num_trials_per_iter=min(share, TRIALS_PER_ROUND),
                    database=database, builder=builder, runner=runner, cost_model=cost_model,
                )
            todo = [t for t in todo if not _has_record(database, t)]
            if not todo or (stop_at is not None and time.perf_counter() >= stop_at):
                break
    finally:
        builder.pool.shutdown()
        runner.pool.shutdown()
    left = sum(id(t) not in started for t in todo)
    return len(tasks), len(fresh) - len(todo), len(tasks) - len(fresh), left


def compile_tvm(
    onnx_path: Path,
    target: dict[str, Any],
    out_path: Path,
    input_shape: tuple[int, ...],
    input_dtype: str,
    *,
    tuning_trials: int = 0,
    trials_per_task: int = 0,
    stop_tuning_at: float | None = None,
    cache_dir: Path | None = None,
    seed: int = 0,
    cc: str | None = None,
    integer: bool | None = None,
) -> CompiledArtifact:
    """Compile ``onnx_path`` for ``target`` (a TVM target dict) and export the library to ``out_path``.

    With a ``cache_dir``, records already tuned for this target are applied
    even when ``tuning_trials`` is 0. ``stop_tuning_at`` (a ``time.perf_counter`` value) caps per-task tuning: tasks
    not started by then keep TVM's default loops (``tasks_left``). ``integer`` computes an int8 graph's pointwise
    convolutions in integers (``hardware_targets.integer``); by default where the target's CPU has VNNI.
    """
    import tvm
    from filelock import FileLock
    from tvm import relax

    try:
        tvm_target = tvm.target.Target(target)
    except Exception as exc:
        raise CandidateError("compile", f"invalid TVM target {target}: {exc}") from exc
    try:
        mod = import_onnx(onnx_path, input_shape, input_dtype)
        total = tuned = reused = left = 0
        tuning_seconds = 0.0
        products = 0
        with tvm_target:
            mod = tvm.transform.Sequential(
                [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
            )(mod)
            vnni = integer_kernels_apply(tvm_target)
            if integer if integer is not None else vnni:
                mod, products = integer_kernels(mod)
                if products and vnni:  # MetaSchedule tensorizes the products with it
                    register_tensor_intrinsics(tvm_target)
            mod = relax.get_pipeline("zero")(channels_last(mod, tvm_target))
            if cache_dir is not None:
                work_dir = tuning_dir(cache_dir, target)
                work_dir.mkdir(parents=True, exist_ok=True)
                with FileLock(str(work_dir / ".lock")):
                    started = time.perf_counter()  # after the lock: waiting for another worker is not tuning
                    with _only_the_targets_intrinsics(target, tvm_target):
                        database = open_database(work_dir, tvm_target)
                        total, tuned, reused, left = _tune(mod, tvm_target, database, work_dir, tuning_trials,
                                                           seed, trials_per_task, stop_tuning_at)
                    tuning_seconds = time.perf_counter() - started
                    with database:  # the records just read and tuned, not the files read again
                        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        executable = tvm.compile(mod, tvm_target)
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        executable.export_library(str(out_path), **({"cc": cc} if cc else {}))
    except CandidateError:
        raise
    except Exception as exc:
        raise CandidateError("compile", first_line(exc, named=True)) from exc
    return CompiledArtifact(
        library=str(out_path), target=dict(target), input_shape=tuple(input_shape), input_dtype=input_dtype,
        tasks_total=total, tasks_tuned=tuned, tasks_reused=reused, tasks_left=left, tuning_seconds=tuning_seconds,
        integer_products=products,
    )


def load_vm(library: str, device=None):
    """A Relax VM over an exported library, on the host CPU unless told otherwise."""
    import tvm
    from tvm import relax

    lib = tvm.runtime.load_module(library)
    return relax.VirtualMachine(lib, device or tvm.cpu())
