"""Ray side of a search: candidates run as Ray tasks; the driver asks and tells Optuna.

What a search does, in order:
1. the classic single-technique recipes are its first trials (``study.recipes_for``);
2. every new candidate is screened first: its untrained graph at its final shapes is compiled and timed (or
   emulated), and one that cannot fit the latency budget or the target's memories is recorded as an infeasible
   trial in seconds, without training (``stages.screen``);
3. with successive halving, a candidate that fits trains on a third of the epochs first, and only the best third
   (by non-dominated rank on accuracy and latency) goes on to the full budget;
4. a measured candidate whose p90 latency lies within the measurement noise of the budget is timed again with
   no other work running before it is called feasible or not.

The driver keeps ``workers`` tasks in flight and handles whichever finishes first, so one slow candidate never
stalls the others. A task that raises, or whose worker process dies, becomes a failed trial with its reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hardware_targets import get_backend
from hardware_targets.calibration import emulator_for
from hardware_targets.profile import arithmetic
from objectives.accuracy import at_chance
from objectives.latency import INFEASIBLE, RETIME, budget_verdict
from objectives.memory import over_limits
from objectives.pareto import ACCURACY_METRICS, non_dominated
from search.candidate import Budget, Candidate, CandidateResult
from search.errors import CandidateError, ConfigError, first_line, ray_token_advice, stopped_by_signals, write_fault
from search.spec import SearchSpace, SearchSpec, check_inputs, check_resources
from search.tracking import TRACKED_ATTR
from search.transfer import (
    Bundle, mark_driver_disk, pack, receive, shares_disk, unmark_driver_disk,
)
from search.study import (
    ASKED_OUT_ATTR, ASKS_PER_TRIAL, CHANCE_ATTR, CLASSES_ATTR, DATA_ATTR, EMULATOR_ATTR, EMULATOR_FACTORS_ATTR,
    FLOOR_ATTR, BOUNDS_ATTR, HALVING_ETA, WIDEST_MARGIN,
    SHIPPED_PREFIX, RUNNING_STAGE_ATTR, SHIPPING_ATTR, STAGE_ATTR, TEACHER_ATTR, Row, best_within_budget,
    check_same_cpu, check_same_data, check_same_emulator, spent_text, clock as _clock, create_study, driving,
    feasible_front, load_study,
    refuse_existing, refuse_second_driver, shipping_left, shipping_order, stage_picks, stored_trial, found_under,
    trial_artifact,
    finished_count, front_hypervolume, narrower_recipe, spent_budget, trial_cost, queued_without_distillation,
    recipes_for, record_failure, record_result, record_reuse, record_screened, requeue_interrupted, settle_stopped,
    resolved_sampler, reusable_trials, rows, running_trials, search_bounds, set_bounds, shown_url,
    suggest_candidate,
)

THREADS_PER_WORKER = 1
PROGRESS_S = 30.0  # at most one progress line per this many seconds of a long stage before the trials
STAGE_POLL_S = 5.0  # how often the driver stores the stages running trials are in, at most
QUIET_S = 120.0  # a search that said nothing for this long says which candidates are running, and for how long


def cached_dataset(name: str, class_weight: str = "none"):
    """The dataset, loaded once per process while its file is unchanged (a file rewritten in place is read again)."""
    path = Path(name)
    stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else None
    return _load_dataset_as_of(name, class_weight, stamp)


@functools.lru_cache(maxsize=4)
def _load_dataset_as_of(name: str, class_weight: str, stamp: tuple | None):
    from search.data import load_dataset

    return load_dataset(name, class_weight)


@functools.lru_cache(maxsize=4)
def _checked_dataset(name: str, digest: str, class_weight: str = "none"):
    data = cached_dataset(name, class_weight)
    if data.content_digest() != digest:
        raise CandidateError("data", f"built-in dataset {name!r} came out different on this node than on the driver "
                                     f"(content {data.content_digest()} against {digest}): install the same "
                                     "requirements.lock on every node")
    return data


def _dataset(dataset):
    """A built-in dataset by name (each node makes its own: checked against the driver's by content), or a user's
    ``Dataset`` sent by value."""
    if isinstance(dataset, str):
        return cached_dataset(dataset)
    if isinstance(dataset, tuple):
        return _checked_dataset(*dataset)
    return dataset


def _profile(target):
    """A target profile sent by value (a user's YAML file need not exist on the node), or a shipped one by name."""
    from hardware_targets import load_profile

    return load_profile(target) if isinstance(target, (str, Path)) else target


def _arrive(runs_dir: str, inputs: dict | None) -> bool:
    """Whether this node shares the driver's runs folder; if not, write the files the task needs there first."""
    if inputs is None or shares_disk(Path(runs_dir), inputs["token"]):
        return True
    import ray

    for bundle in ray.get(inputs["bundles"]):
        receive(bundle, Path(runs_dir))
    return False


def _outputs(shared: bool, runs_dir: str, *paths) -> Bundle | None:
    """The files a task made, by value, for a driver that does not share this node's runs folder."""
    return None if shared else pack(Path(runs_dir), *paths)


def run_candidate(candidate_dict: dict, dataset, target, runs_dir: str, threads: int,
                  screen_budget_ms: float | None = None, inputs: dict | None = None, runtime: str = "auto", *,
                  search: str, board=None, trial: int | None = None) -> dict:
    """Body of the Ray task: screening (when a budget is given), then the pipeline, returned as plain dicts, with
    the candidate's files by value when this node does not share the driver's runs folder. ``runtime`` is the
    spec's: what a local target's candidates are timed on (auto: the faster of untuned TVM and onnxruntime);
    ``search`` names the search whose folders its files go to; each stage trial ``trial`` enters is posted to
    ``board`` (a ``StageBoard``) where one is given.

    ``{"screening": ...}`` alone means the candidate was ruled out before training."""
    from search.pipeline import Paths, evaluate_candidate
    from search.stages.screen import screen_candidate
    from search.stages.train import teacher_path

    posted = [None]

    def progress(stage: str, message: str = "") -> None:
        if board is not None and stage != posted[0]:
            posted[0] = stage
            board.post.remote(trial, stage)  # not waited for: the candidate does not wait on the driver

    candidate, data, profile = Candidate.from_dict(candidate_dict), _dataset(dataset), _profile(target)
    started = time.perf_counter()
    shared = _arrive(runs_dir, inputs)  # records first: screening applies them too
    moving = time.perf_counter() - started
    screening = None
    if screen_budget_ms is not None:
        progress("screen")
        screening = screen_candidate(candidate, data, profile, Path(runs_dir), latency_budget_ms=screen_budget_ms,
                                     threads=threads, runtime=runtime)
        if not screening["fits"]:
            return {"screening": screening, "transfer_s": moving}
    paths = Paths(Path(runs_dir), search)
    result = evaluate_candidate(candidate, data, profile, paths, threads=threads, runtime=runtime, progress=progress)
    if screening:
        result.stage_seconds["screen"] = screening["seconds"]
    made = [Path(result.artifacts["onnx"]).parent]
    if result.info.get("teacher") == "trained by this candidate":  # the teacher stage failed: it goes back too
        made.append(teacher_path(data, candidate.seed, paths.teachers, candidate.budget.teacher_epochs))
    if candidate.budget.tuning_trials:
        made.append(paths.tuning)
    started = time.perf_counter()
    files = _outputs(shared, runs_dir, *made)
    return {"screening": screening, "result": result.to_dict(), "files": files,
            "transfer_s": moving + time.perf_counter() - started}


def retime_results(result_dicts: list[dict], dataset, target, runs_dir: str, threads: int,
                   inputs: dict | None = None) -> list[dict]:
    """Body of the re-timing task, which holds every CPU of its node so nothing else runs beside it."""
    from search.pipeline import retime

    _arrive(runs_dir, inputs)
    profile = _profile(target)
    return [retime(CandidateResult.from_dict(d), _dataset(dataset), profile, Path(runs_dir), threads=threads).to_dict()
            for d in result_dicts]


def ship_result(result_dict: dict, dataset, target, runs_dir: str, threads: int, trials_per_task: int,
                runtime: str, inputs: dict | None = None, tuning_seconds: float | None = None) -> dict:
    """Body of the shipping task, which holds every CPU of its node: tuning and side-by-side timing alone."""
    from search.pipeline import Paths, ship_candidate

    shared = _arrive(runs_dir, inputs)
    paths = Paths(Path(runs_dir))
    result = CandidateResult.from_dict(result_dict)
    shipped = ship_candidate(result, _dataset(dataset), _profile(target), paths, trials_per_task=trials_per_task,
                             runtime=runtime, threads=threads, tuning_seconds=tuning_seconds)
    return {"shipped": shipped,
            "files": _outputs(shared, runs_dir, Path(result.artifacts["onnx"]).parent, paths.tuning)}


def _ship_stage(ray, study, spec: SearchSpec, profile, report: Reporter, placement: dict,
                transport: _Transport) -> None:
    """After the search: tune the front (and what is near it) for this CPU, time TVM and onnxruntime side by side,
    and record what ships; the front is then judged on those figures (``rows`` reads them)."""
    import json

    from hardware_targets.compile import tuning_summary

    if profile.backend != "local":
        report(f"shipping stage skipped: latency on {profile.name} is {profile.backend}, not timed here; the front "
               f"ships as searched ({'TVM' if profile.runtime == 'tvm' else profile.runtime})")
        return
    picks = stage_picks(study, spec.latency_budget_ms)
    budget = spec.budget
    if not picks:
        return
    if budget.front_tuning_minutes == 0:
        searched = ("untuned TVM or onnxruntime, each on the faster: the front table says which"
                    if spec.runtime == "auto" else f"{spec.runtime}, untuned")
        report(f"shipping stage off (front_tuning_minutes 0): the front ships as searched ({searched})")
        return
    report(f"shipping stage: {len(picks)} candidate(s) on or near the front; "
           + (f"tuning {budget.front_tuning_trials} trial(s) per task for this CPU for at most "
              f"{budget.front_tuning_minutes:g} min, " if budget.front_tuning_trials
              else "no tuning (front_tuning_trials 0), ")
           + f"then TVM and onnxruntime timed side by side ({spec.runtime})")
    study.set_user_attr(SHIPPING_ATTR, "running")  # an export meanwhile says its winner may still change
    task = ray.remote(num_cpus=_node_cpus(ray, placement), max_retries=0, **placement)(ship_result)
    started = time.perf_counter()
    deadline = started + 60 * budget.front_tuning_minutes
    trials, phase_start, phase_first = budget.front_tuning_trials, started, 0
    capped = False
    queue = list(picks)  # grows when the re-ranking brings another candidate on or near the front
    for i, row in enumerate(shipping_order(study, spec.latency_budget_ms, queue, report)):
        if trials and not capped and time.perf_counter() >= deadline:
            # tuning stops at the cap; the rest are still built with the records tuned so far (the recipes' width
            # 0.5, distillation into it and 50% channel pruning share their shapes) and their runtimes compared,
            # a few seconds each, so that none ships on a runtime nobody timed against the other
            capped, phase_start, phase_first = True, time.perf_counter(), i
            report(f"shipping stage: {budget.front_tuning_minutes:g} min of tuning reached; the other "
                   f"{len(queue) - i} candidate(s) are tuned no further: built with the records of the tasks tuned "
                   "so far, and timed against untuned TVM and onnxruntime")
        trial = stored_trial(study, row.number)
        result_path = trial_artifact(trial, "onnx", transport.root).with_name("result.json")
        try:
            searched = json.loads(result_path.read_text())
            searched["artifacts"] = {kind: str(found_under(path, transport.root))  # a runs folder moved since
                                     for kind, path in searched["artifacts"].items()}
            # the cap holds within a candidate too: its tuning stops at the deadline, task by task
            out = _get(ray, task.remote(searched, transport.dataset, profile,
                                      str(transport.root), THREADS_PER_WORKER, trials, spec.runtime,
                                      transport.inputs(result_path.parent),
                                      max(0.0, deadline - time.perf_counter()) if trials else None))
            transport.land(out["files"])
            shipped = out["shipped"]
        except Exception as exc:  # a candidate that cannot be shipped keeps its searched figures
            _stop_on_write_fault(exc)
            report(f"[ship {i + 1}/{len(queue)}] trial {row.number}: failed ({type(exc).__name__}); ships as searched")
            continue
        study.set_user_attr(f"{SHIPPED_PREFIX}{row.number}", shipped)
        f = shipped["figures"]
        now, left = time.perf_counter(), len(queue) - i - 1
        eta = (now - phase_start) / (i + 1 - phase_first) * left
        if trials and not capped:  # tuning stops at the cap; what is left after it takes little
            eta = min(eta, max(0.0, deadline - now))
        report(f"[ship {i + 1}/{len(queue)}] trial {row.number}: p90 TVM {f['tvm']['latency_ms_p90']:.4g} ms"
               + (f", tuned {f['tvm-tuned']['latency_ms_p90']:.4g} ms" if "tvm-tuned" in f else "")
               + f", onnxruntime {f['onnxruntime']['latency_ms_p90']:.4g} ms -> ships {shipped['option']}"
               + (f" ({tuning_summary(shipped['tuning'])})" if shipped.get("tuning") else "")
               + _retimed(shipped.get("timing"))
               + f"  ETA {int(eta // 60)}m{int(eta % 60):02d}s")
    study.set_user_attr(SHIPPING_ATTR, "done")


def _retimed(timing: dict | None) -> str:
    """A shipping line's note when its first timing was disturbed and the runtimes were timed again."""
    if not timing or timing["attempts"] == 1:
        return ""
    return (f"; timed {timing['attempts']} times: the runtime searched on first read "
            f"{timing['first_against_search']:.2f}x its median in the search, {timing['untuned_against_search']:.2f}x "
            "in the timing kept")


def widest_candidate(spec: SearchSpec) -> Candidate:
    """The largest model the space holds: the widest, least pruned, at its widest precision."""
    s = spec.space
    precision = next(p for p in ("fp32", "fp16", "int8-qat", "int8-ptq") if p in s.precision)
    return Candidate(precision=precision, pruning=s.pruning[0], sparsity=s.sparsity[0], width=s.width[1],
                     budget=spec.budget, seed=spec.seed)


OUT_OF_REACH = 2.0  # a measured figure this many times the budget refuses a search: more than load slows a timing


def fastest_candidates(spec: SearchSpec) -> list[Candidate]:
    """The smallest models the space holds, one per kind of arithmetic, the narrower kinds first: the narrowest width
    with the most pruned. Latency and memory only grow with width and with the channels or weights kept, so if none
    of these fits the target, no candidate of the space can."""
    s = spec.space
    pruning = "structured" if "structured" in s.pruning else s.pruning[0]
    kinds = {arithmetic(p): p for p in reversed(("int8-ptq", "int8-qat", "fp16", "fp32")) if p in s.precision}
    return [Candidate(precision=kinds[k], pruning=pruning, sparsity=s.sparsity[1], width=s.width[0],
                      budget=spec.budget, seed=spec.seed) for k in ("int8", "fp16", "fp32") if k in kinds]


def _smallest_words(c: Candidate) -> str:
    pruned = (f", {c.sparsity:.0%} of its channels pruned" if c.pruning == "structured" else
              f", {c.sparsity:.0%} of its weights zeroed") if c.sparsity else ""
    return f"{c.precision} at width {c.width:g}{pruned}"


def prepare_search(spec_dict: dict, runs_dir: str, threads: int, bounds: bool, baseline: bool, dataset,
                   target, reach: bool = False) -> dict:
    """Body of the task that fixes what a search is judged by before its first trial: whether the space holds any
    model that fits the target (``reach``: its fastest models screened, until one fits; none fitting, nothing more
    is done), the figures of the largest model of the space (bounds of the normalised hypervolume) and the fp32
    full-width baseline's accuracy."""
    from search.pipeline import Paths, baseline_accuracy
    from search.stages.screen import screen_candidate

    spec = SearchSpec.from_dict(spec_dict)
    data, out = _dataset(dataset), {}
    if reach:
        out["fastest"] = []
        for candidate in fastest_candidates(spec):
            screening = screen_candidate(candidate, data, _profile(target), Path(runs_dir),
                                         latency_budget_ms=spec.latency_budget_ms, threads=threads,
                                         runtime=spec.runtime)
            median, _, provenance = screening["metrics"]["latency_ms_median"]
            over_budget = screening["over_budget"]
            # a timing can be slowed by other work on the machine: only one far over the budget rules it out here
            ruled_out = screening["over_memory"] or (over_budget and (
                provenance != "measured" or median > OUT_OF_REACH * spec.latency_budget_ms))
            out["fastest"].append((_smallest_words(candidate), screening["reason"] if ruled_out else None, median,
                                   over_budget))
            if not ruled_out:
                break
        else:
            return out
    if bounds:
        screening = screen_candidate(widest_candidate(spec), data, _profile(target), Path(runs_dir),
                                     latency_budget_ms=spec.latency_budget_ms, threads=threads, runtime=spec.runtime)
        out["widest"] = {k: screening["metrics"][k][0] for k in ("size_bytes", "energy_mj")}
    if baseline:
        out["baseline"] = baseline_accuracy(data, Paths(Path(runs_dir)), spec.budget, spec.seed, threads=threads)
    return out


def teacher_task(dataset, seed: int, epochs: int, runs_dir: str, threads: int, inputs: dict | None = None):
    """Body of the teacher stage's task, a Ray generator: ``{"cached": bool}`` first, ``{"epoch": n}`` as each
    epoch ends, then ``{"files": ...}`` (the teacher by value, for a driver that does not share this node's disk)."""
    from search.models import TEACHER_WIDTH
    from search.pipeline import Paths, set_threads
    from search.stages.train import load_teacher, teacher_path, teacher_scores, train_teacher

    shared = _arrive(runs_dir, inputs)
    set_threads(threads)
    data, folder = _dataset(dataset), Paths(Path(runs_dir)).teachers
    path = teacher_path(data, seed, folder, epochs)
    yield {"cached": path.exists(), "width": TEACHER_WIDTH}
    for epoch in train_teacher(data, seed, folder, epochs):
        yield {"epoch": epoch}
    yield {"scores": teacher_scores(load_teacher(data, path), data)}
    yield {"files": _outputs(shared, runs_dir, path)}


def rung_budget(budget: Budget) -> Budget:
    """The first rung of successive halving: a third of the training, the same pruning steps (same shapes)."""
    return dataclasses.replace(budget, epochs=max(1, budget.epochs // HALVING_ETA),
                               finetune_epochs=min(budget.finetune_epochs,
                                                   max(1, budget.finetune_epochs // HALVING_ETA)))


@dataclass
class SearchOutcome:
    name: str
    storage: str
    rows: list[Row]
    front: list[Row]
    best: Row | None
    hypervolume: float
    # the driver's own time, by part: ray_start, optuna (ask, tell, storage), logging (MLflow), wall; and
    # dispatch: how long freed workers waited for their next candidate, over `dispatches` hand-overs; transfer and
    # transfer_workers: moving files to and from nodes that do not share the runs folder, here and on the workers
    # (seconds), of transfer_bundles results that brought transfer_bytes
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    # MLflow was unreachable at the end: some trials or the front are not logged (`edgesearch sync` logs them)
    tracking_incomplete: bool = False
    experiment: str | None = None  # the search's MLflow experiment, by the name it has now (renamed in the UI, say)


# os.environ is one dict for every thread, and its iteration reads each key of a snapshot: a key removed meanwhile
# raises KeyError in the reader. The MLflow thread reads it on every request (requests looks up proxies there) while
# start_ray restores the environment, which failed a CI run (NOTES.md); the thread does its MLflow work under this
# lock, and a key is removed only under it. Keys added or changed do not disturb a reader.
ENVIRON_LOCK = threading.Lock()


@contextlib.contextmanager
def _environment(variables: dict[str, str]):
    """``variables`` set in this process's environment while the block runs, then the environment as it was."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        with ENVIRON_LOCK:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# How the search's own Ray cluster treats its workers (NOTES.md); a cluster started with `ray start` takes the same
# from RAY_kill_idle_workers_interval_ms=0 and RAY_worker_niceness=0 (README).
# - Ray ends a worker left idle while fewer CPUs are free than workers are idle: a task that holds every CPU (the
#   re-timing and shipping tasks, timing alone) had the other worker end beside it, and its exit (Python's last
#   garbage collection over torch and TVM) took a core for 2-3 s during that task's timing; the next candidate then
#   waited for a new worker to import them again. Idle workers are kept.
# - Ray runs its workers at niceness 15, below anything else on the machine: the workers time the candidates, so
#   they run at the driver's priority, and the driver's MLflow thread below them.
LOCAL_RAY_CONFIG = {"kill_idle_workers_interval_ms": 0, "worker_niceness": 0}


def start_ray(address: str | None, workers: int):
    """Connect to a cluster at ``address``, or start a local one sized for ``workers``."""
    import ray

    if ray.is_initialized():
        connected = ray.get_runtime_context().gcs_address
        if address and not _same_cluster(address, connected):
            raise ConfigError(f"This process is already connected to the Ray cluster at {connected}, not the one at "
                              f"{address}: call ray.shutdown() first, or leave the address out to search on the one "
                              "it has.")
        return ray
    threads = {"TVM_NUM_THREADS": str(THREADS_PER_WORKER), "OMP_NUM_THREADS": str(THREADS_PER_WORKER)}
    try:
        if address:
            with _native_stderr_held():
                ray.init(address=address, runtime_env={"env_vars": threads}, logging_level="ERROR",
                         log_to_driver=False)
        else:
            from hardware_targets.host import cpu_kind_resource, host_cpu

            # a local cluster's workers inherit the environment its raylet starts with; with a runtime environment
            # instead, the first task started about 2 s later (NOTES.md)
            with _environment(threads):
                ray.init(address="local", num_cpus=workers * THREADS_PER_WORKER, include_dashboard=False,
                         logging_level="ERROR", log_to_driver=False, _node_ip_address="127.0.0.1",
                         resources={cpu_kind_resource(host_cpu().key): workers * THREADS_PER_WORKER},
                         _system_config=LOCAL_RAY_CONFIG)
    except Exception as exc:
        # a cluster that wants a token said so only in C++ retries
        if address and (advice := ray_token_advice(f"The Ray cluster at {address}", exc)):
            raise ConfigError(advice) from exc
        raise ConfigError(f"Cannot start or reach Ray{f' at {address}' if address else ''}: {exc}") from exc
    return ray


@contextlib.contextmanager
def _native_stderr_held():
    """Hold what is written to file descriptor 2 while the block runs: given back if it succeeds, dropped if it
    fails, whose one line says why: Ray's GCS client, in C++, wrote a warning per retry for 26 s before failing to
    reach a cluster that wanted a token."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        sys.stderr.write(held.read().decode(errors="replace"))


def _host_port(address: str) -> tuple[str, int] | None:
    """The host and port of a GCS address given as host:port; None for other forms ("auto")."""
    host, _, port = address.rpartition(":")
    return (host, int(port)) if host and port.isdigit() and "/" not in host else None


def check_cluster(address: str) -> None:
    """Refuse a dashboard's address and a Ray Client one, and try one TCP connection to a host:port one, before any
    work: Ray retried an address nothing answered at for about 4 minutes, printing its retries, and called a
    dashboard's malformed."""
    import socket

    if address.startswith(("http://", "https://")):
        raise ConfigError(f"{address} is the address of a Ray cluster's dashboard, which takes a search submitted "
                          "with --detach (it runs as a job on the cluster); to drive the search from here, pass the "
                          "cluster's own address instead (HOST:6379, as `ray start --head` printed it).")
    if address.startswith("ray://"):
        raise ConfigError(f"{address} is a Ray Client address, which edgesearch does not drive a search through (a "
                          "search driven that way stalled after its first lines): run `edgesearch submit` on a node "
                          "of the cluster with --address HOST:6379 as `ray start --head` printed it, or submit it from "
                          "here with --detach and the cluster's dashboard address (http://HOST:8265).")
    where = _host_port(address)
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=5):
            pass
    except OSError as exc:
        raise ConfigError(f"Nothing answers at the Ray cluster address {address} ({exc.strerror or exc}): start the "
                          "cluster's head there (`ray start --head`), or pass its address as `ray start` printed it "
                          "(host:port of its GCS, port 6379 by default).") from exc


def _same_cluster(address: str, connected: str) -> bool:
    """Whether GCS ``address`` names the cluster at ``connected`` (a machine's own names and addresses are one
    host). Forms other than host:port are taken as naming it."""
    import socket

    import psutil

    given, here = _host_port(address), _host_port(connected)
    if given is None or here is None:
        return True
    if given[1] != here[1]:
        return False

    def resolved(name: str) -> str:
        try:
            return socket.gethostbyname(name)
        except OSError:
            return name

    own = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    a, b = resolved(given[0]), resolved(here[0])
    return a == b or ((a.startswith("127.") or a in own) and (b.startswith("127.") or b in own))


def _node_kinds(ray) -> dict[str, str]:
    """Node id -> CPU kind of each alive node with CPUs: advertised as a resource, else read by a task on the node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from hardware_targets.host import CPU_KIND_PREFIX, host_cpu

    kinds, probes = {}, {}
    probe = ray.remote(num_cpus=0, max_retries=0)(lambda: host_cpu().key)
    for node in ray.nodes():
        if not node.get("Alive") or not node.get("Resources", {}).get("CPU"):
            continue
        advertised = [r[len(CPU_KIND_PREFIX):] for r in node["Resources"] if r.startswith(CPU_KIND_PREFIX)]
        if advertised:
            kinds[node["NodeID"]] = advertised[0]
        else:
            probes[node["NodeID"]] = probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote()
    kinds.update(zip(probes, _get(ray, list(probes.values()), timeout=120)))
    return kinds


def measurement_placement(ray, profile, report: Reporter) -> dict:
    """Ray options that keep a host target's candidates on nodes of the CPU kind the search was submitted from.

    Emulated targets run anywhere; a remote board is reached from any node. A cluster whose nodes of another kind
    do not say so (no ``edgesearch-cpu-*`` resource) would mix kinds in one profile's figures, so it is refused."""
    if profile.backend != "local":
        return {}
    from hardware_targets.host import cpu_kind_resource, host_cpu

    cpu = host_cpu()
    wanted = cpu_kind_resource(cpu.key)
    if ray.cluster_resources().get(wanted):
        if sum(1 for n in ray.nodes() if n.get("Alive")) > 1:
            report(f"{profile.name} candidates run on the nodes of CPU kind {cpu.key} ({cpu.model}), as submitted")
        return {"resources": {wanted: 0.001}}
    kinds = _node_kinds(ray)
    if kinds and set(kinds.values()) == {cpu.key}:
        return {}
    others = sorted(set(kinds.values()) - {cpu.key})
    raise ConfigError(
        f"Target {profile.name} is timed on CPUs of the kind this search was submitted from ({cpu.model}, CPU kind "
        f"{cpu.key}), but the Ray cluster has no node of that kind that says so"
        + (f" (kinds found: {', '.join(others)})" if others else "") + ". Start such nodes with "
        f"`ray start ... --resources '{{\"{wanted}\": <CPUs>}}'` ('edgesearch targets' prints a node's CPU kind), "
        "submit from a machine of the cluster's kind, or search an emulated profile.")


def _supported_space(spec: SearchSpec, profile, report: Reporter) -> SearchSpec:
    """Leave out what the target cannot run fast, and say why: precisions without native arithmetic (for the host:
    this machine's CPU), and pruning that its kernels and storage do not turn into fewer operations or bytes."""
    reasons = {p: profile.unsupported_reason(p) for p in spec.space.precision}
    kept = tuple(p for p in spec.space.precision if reasons[p] is None)
    if not kept:
        raise ConfigError(f"Target {profile.name} runs none of the precisions {list(spec.space.precision)} of the "
                          f"search space natively ({'; '.join(f'{p}: {r}' for p, r in reasons.items())}); "
                          "add one it supports.")
    for p in spec.space.precision:
        if reasons[p]:
            report(f"precision {p} left out of the search space: target {profile.name} has {reasons[p]}")
    space = dataclasses.replace(spec.space, precision=kept)
    if profile.backend == "local" and any(p.startswith("int8") for p in kept) and not _precisions_measured(spec):
        report(INT8_ON_HOST)
    if space.sparsity[1] > 0:
        pays = tuple(m for m in space.pruning if profile.pruning_reason(m) is None)
        for m in space.pruning:
            if m not in pays:
                report(f"{m} pruning left out of the search space: target {profile.name} has "
                       f"{profile.pruning_reason(m)}" + ("" if pays else "; sparsity fixed at 0 (add 'structured' "
                                                          "to space.pruning to search channel pruning)"))
        space = dataclasses.replace(space, pruning=pays) if pays else dataclasses.replace(space, sparsity=(0.0, 0.0))
        # the range was meant for zeroed weights too; removing more channels than 1 - the narrowest width from a
        # width-1 model makes it narrower than any width the space allows
        most = round(1.0 - space.width[0], 4)
        if pays == ("structured",) and len(spec.space.pruning) > 1 and space.sparsity[1] > most > space.sparsity[0]:
            report(f"sparsity range narrowed to [{space.sparsity[0]:g}, {most:g}] for channel pruning: more would "
                   f"leave a width-1 model narrower than the space's narrowest width ({space.width[0]:g})")
            space = dataclasses.replace(space, sparsity=(space.sparsity[0], most))
    return spec if space == spec.space else dataclasses.replace(spec, space=space)


INT8_ON_HOST = ("int8 on this CPU: TVM computes int8 (QDQ) graphs in float, so there int8 buys 4x smaller weights, "
                "not speed (onnxruntime has integer kernels; the shipping stage times both); an int8 model card gives "
                "int8 against fp32 of the same shapes, measured in the runtime that ships")


def _precisions_measured(spec: SearchSpec) -> bool:
    """Whether the space's narrower precisions are decided by measurement: the default space, which holds fp32 to
    compare with. A spec that lists its precisions keeps the ones it lists."""
    return spec.space.precision == SearchSpace().precision


# what each narrower precision buys when it is not faster than fp32, and why it can be slower on a CPU, in each runtime
_NARROWER = {"fp16": ("fp16", "2x smaller weights", {"tvm": "the fp16 code TVM builds for this CPU is no faster",
                                                       "onnxruntime": "onnxruntime's fp16 graphs are no faster"}),
             "int8": ("int8-ptq", "4x smaller weights", {"tvm": "TVM computes int8 (QDQ) graphs in float",
                                                           "onnxruntime": "onnxruntime's integer kernels are slower "
                                                                          "than its fp32 at these sizes"})}


def _narrower_where_faster(spec: SearchSpec, profile, runs_dir: Path, report: Reporter, measured: bool) -> SearchSpec:
    """On the host, leave fp16 or int8 out of the default space when its graph is slower than fp32's of the same
    shapes at both ends of the width range, each on the runtime the search would judge it on: there it only
    shrinks the weights, and each trial of it costs a slower, less accurate candidate (of 60 default searches, the
    four that trained 15 or more int8 candidates ended lowest). A CPU flag says what the CPU can do, not what the
    compiled code does: this is measured."""
    precisions = spec.space.precision
    kinds = [k for k in _NARROWER if any(arithmetic(p) == k for p in precisions)]
    if profile.backend != "local" or not measured or "fp32" not in precisions or not kinds:
        return spec
    from search.stages.native import quiet_native
    from search.stages.screen import against_fp32

    runtimes = ("tvm", "onnxruntime") if spec.runtime == "auto" else (spec.runtime,)
    on = "the faster of TVM and onnxruntime for each" if spec.runtime == "auto" else spec.runtime
    for kind in kinds:
        probe, smaller, why = _NARROWER[kind]
        try:
            with quiet_native():  # TVM logs each tuning database it opens
                timed = against_fp32(probe, spec.space, cached_dataset(spec.dataset, spec.class_weight), profile,
                                     Path(runs_dir), budget=spec.budget, seed=spec.seed, threads=THREADS_PER_WORKER,
                                     runtime=spec.runtime)
        except Exception as exc:
            _stop_on_write_fault(exc)
            report(f"could not time {kind} against fp32 ({_failure_reason(exc)}); {kind} stays in the search space")
            continue
        figures = ", ".join(f"{ms / f32:.2f}x fp32's at width {w:g} ({ms:.3g} ms on {ms_on} against {f32:.3g} on "
                            f"{f32_on})" for w, f32, ms, f32_on, ms_on in timed)
        if any(ms < f32 for _, f32, ms, *_ in timed):
            report(f"{kind} kept in the search space: its untrained graph timed {figures} (measured, median, "
                   f"in turns with fp32's, {on})")
            continue
        report(f"{kind} left out of the search space: its untrained graph timed {figures} (measured, median, in "
               f"turns with fp32's, {on}): slower than fp32 at both ends of the width range "
               f"({'; '.join(why[r] for r in runtimes)}), so {kind} would buy {smaller} only; list "
               "space.precision in the spec to search it anyway")
        precisions = tuple(p for p in precisions if arithmetic(p) != kind)
    if precisions == spec.space.precision:
        return spec
    return dataclasses.replace(spec, space=dataclasses.replace(spec.space, precision=precisions))


LOGGING_NICENESS = 10  # added to the MLflow thread's: below the workers' (LOCAL_RAY_CONFIG), ahead of idle tasks


def say_competing_load(report: Reporter, who: str) -> None:
    """Warn when other processes keep the CPU busy as ``who`` starts timing on this machine."""
    from hardware_targets.host import competing_processes

    busy = competing_processes()
    if busy:
        listed = ", ".join(f"{command} (pid {pid}, {percent:.0f}% of a core)" for command, pid, percent in busy[:3])
        report(f"warning: other processes keep this machine's CPU busy: {listed}. The latencies {who} times here are "
               "taken under their load and read slower than on an idle machine; for figures that hold, run it when "
               "they have finished.")


def _lower_priority() -> None:
    """Run this thread at a lower priority than the workers. The workers time candidates on the cores the driver
    shares: a third process busy at their priority tripled a timing's p90, while at niceness 10 it changed nothing
    (NOTES.md). Linux gives each thread its own niceness; where that fails, the thread runs as it is."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + LOGGING_NICENESS))


class _Tracking:
    """Keeps MLflow in step with the study from a thread of its own; a logging failure never stops the search.

    The driver only signals that trials were told; the thread logs them, so MLflow never delays the hand-over of a
    candidate to a freed worker. Whatever could not be logged is logged by the next successful sync (after the next
    trial, or at the end of the search). ``timings["logging"]`` counts only the time the driver waited for MLflow;
    ``timings["logging_background"]`` the thread's own.
    """

    def __init__(self, spec, study, uri, runs_dir, report, timings):
        self.spec, self.study, self.uri, self.runs_dir, self.report = spec, study, uri, runs_dir, report
        self.timings, self.pending, self.tracker, self.error = timings, False, None, None
        self._wake, self._done, self._abandoned = threading.Event(), False, False
        self._thread = threading.Thread(target=self._run, name="edgesearch-mlflow", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        _lower_priority()
        started = time.perf_counter()
        try:
            from search.tracking import SearchTracker, check_tracking

            with ENVIRON_LOCK:
                check_tracking(self.uri, runs_dir=self.runs_dir)
                self.tracker = SearchTracker(self.spec, self.study, self.uri, self.runs_dir)
        except BaseException as exc:  # handed to the driver by ready()
            self.error = exc
            return
        finally:
            self.timings["logging_background"] += time.perf_counter() - started
        self.report(f"MLflow: experiment {self.tracker.experiment_name!r} at {shown_url(self.uri)} "
                    f"(parent run {self.tracker.parent_id})")
        self._wake.set()  # a resumed search may have trials MLflow is missing
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._abandoned:
                return
            started, done = time.perf_counter(), self._done  # a finish asked for during a sync gets its own
            with ENVIRON_LOCK:
                self._sync(finished=done)
            self.timings["logging_background"] += time.perf_counter() - started
            if done:
                return

    def ready(self) -> None:
        """Wait until the store is reached and the search's runs exist; raise what stopped them."""
        with _timed(self.timings, "logging"):
            while self.tracker is None and self.error is None and self._thread.is_alive():
                self._thread.join(0.05)
        if self.error is not None:
            raise self.error

    def _sync(self, finished: bool = False) -> None:
        try:
            if self.pending:
                self.tracker.recover()
            self.tracker.sync(rows(self.study), finished=finished)
            self.pending = False
        except Exception as exc:
            self.pending = True
            self.report(f"MLflow logging failed ({first_line(exc, named=True)}); "
                        "will retry after the next trial")

    def on_trial(self) -> None:
        self._wake.set()

    def _stop_thread(self) -> None:
        self._abandoned = True
        self._wake.set()
        self._thread.join(timeout=30)

    def abandon(self, status: str) -> None:
        """Stop the thread without a final sync (the search failed or was interrupted; what it logged stays) and
        end the search's run with ``status`` (MLflow's FAILED or KILLED), not left RUNNING; a resume reopens it."""
        self._stop_thread()
        if self.tracker is not None:
            with contextlib.suppress(Exception):  # the store may be what failed
                self.tracker.client.set_terminated(self.tracker.parent_id, status)

    def withdraw(self) -> None:
        """Stop the thread and delete the run it opened, for a new search refused before any work: a search run of
        the name left active would refuse the same command, fixed."""
        self._stop_thread()
        if self.tracker is not None:
            with contextlib.suppress(Exception):  # the store may be what failed
                self.tracker.client.delete_run(self.tracker.parent_id)
            self.tracker = None

    def begin_finish(self) -> None:
        """Let the thread log what is left, the final front and its plots, while Ray shuts down."""
        self._done = True
        self._wake.set()

    def finish(self) -> None:
        """Wait for the final sync (begun here if ``begin_finish`` was not called)."""
        self.ready()
        self.begin_finish()
        with _timed(self.timings, "logging"):
            self._thread.join()
        if self.pending:
            self.report("MLflow is still unreachable: every trial is in the Optuna storage; "
                        f"'edgesearch sync {self.spec.name}' logs the missing ones once it is back")


def _cluster_cpus(ray) -> int:
    return int(ray.cluster_resources().get("CPU", 0))


def _node_cpus(ray, placement: dict) -> int:
    """The CPUs of the largest node a task with ``placement`` can run on: a task that must run alone holds them."""
    wanted = set(placement.get("resources", {}))
    sizes = [n["Resources"].get("CPU", 0) for n in ray.nodes()
             if n.get("Alive") and wanted <= set(n.get("Resources", {}))]
    return max(1, int(max(sizes, default=_cluster_cpus(ray))))


class _Transport:
    """What a search's tasks need from the driver's disk, and where the files they make land on it.

    A node that shares the driver's runs folder finds the driver's mark there and reads and writes in place; any
    other node gets the files by value through Ray's object store (``search.transfer``)."""

    def __init__(self, ray, spec: SearchSpec, profile, runs_dir: Path, timings: dict):
        from search.data import BUILTIN_DATASETS

        self.ray, self.spec, self.profile, self.timings = ray, spec, profile, timings
        self.root = Path(runs_dir).resolve()
        self.token = mark_driver_disk(self.root)
        # a built-in dataset is made on each node and checked against this one's content; a user's file goes by value
        self.data = cached_dataset(spec.dataset, spec.class_weight)
        self.dataset = ((spec.dataset, self.data.content_digest(), spec.class_weight)
                        if spec.dataset in BUILTIN_DATASETS
                        else ray.put(self.data))
        self._caches = None  # this search's tuning records and teacher, put once per change
        self.written = 0  # bytes written on the driver's disk from other nodes

    def cache_paths(self) -> list[Path]:
        """This CPU kind's tuning records (and the cross-compiled target's), and this dataset's teachers: found by
        their names, so the driver imports neither torch nor TVM."""
        from hardware_targets.compile import tuning_dir
        from hardware_targets.host import host_cpu

        tuning, teachers = self.root / "tuning", self.root / "teachers"
        found = sorted(tuning.glob(f"*-{host_cpu().key}")) if tuning.is_dir() else []
        if "mtriple" in self.profile.tvm_target:
            found.append(tuning_dir(tuning, dict(self.profile.tvm_target)))
        if teachers.is_dir():
            found += sorted(teachers.glob(f"{self.data.name}-{self.data.fingerprint}-seed{self.spec.seed}-*.pt"))
        return found

    def inputs(self, *folders: Path) -> dict:
        """A task's ``inputs``: the driver's mark, the search's caches and ``folders``, by reference."""
        with _timed(self.timings, "transfer"):
            if self._caches is None:
                self._caches = self.ray.put(pack(self.root, *self.cache_paths()))
            return {"token": self.token,
                    "bundles": [self._caches, *(self.ray.put(pack(self.root, f)) for f in folders)]}

    def land(self, files: Bundle | None) -> None:
        """Write a task's files at their places in the driver's runs folder; merge its tuning records."""
        if not files:
            return
        with _timed(self.timings, "transfer"):
            written, merged = receive(files, self.root)
        self.written += written
        self.timings["transfer_bundles"] = self.timings.get("transfer_bundles", 0) + 1
        self.timings["transfer_bytes"] = self.timings.get("transfer_bytes", 0) + files.size
        if merged or any(rel.startswith("teachers/") for rel in files.files):
            self._caches = None  # the next tasks get what this one added

    def close(self, report: Reporter) -> None:
        unmark_driver_disk(self.root, self.token)
        if self.written:
            report(f"files from nodes that do not share this runs folder: {self.written / 1e6:.2f} MB written here; "
                   f"moving files took {self.timings['transfer']:.1f} s here and "
                   f"{self.timings['transfer_workers']:.1f} s on the workers")


Reporter = Callable[[str], None]


def run_search(
    spec: SearchSpec,
    runs_dir: Path,
    *,
    storage_url: str,
    resume: bool = False,
    address: str | None = None,
    report: Reporter = print,
    tracking_uri: str | None = None,
) -> SearchOutcome:
    """Run (or resume) ``spec`` to ``spec.trials`` finished trials and return the front.

    With a ``tracking_uri`` every trial is logged to MLflow as it finishes; the
    store is checked before any work starts.
    """
    wall_started = time.perf_counter()
    timings = {"ray_start": 0.0, "optuna": 0.0, "logging": 0.0, "logging_background": 0.0, "dispatch": 0.0,
               "dispatches": 0, "transfer": 0.0,
               "transfer_workers": 0.0}
    profile = check_inputs(spec)
    if resume:  # before any work: a driver still running it would have its running trials re-queued under it
        refuse_second_driver(load_study(spec.name, storage_url))
    else:  # a name taken is refused before the space's precisions are timed
        refuse_existing(spec.name, storage_url)
    data = cached_dataset(spec.dataset, spec.class_weight)  # a malformed file stops here, before Ray starts
    fitted = emulator_for(profile, runs_dir) if profile.backend == "emulated" else None
    emulator = fitted.words if fitted else None
    factors = dataclasses.asdict(fitted.params) if fitted and fitted.params else None
    if resume:
        stored = load_study(spec.name, storage_url)
        check_same_data(stored, spec, data, "resume it")
        if profile.backend == "local":
            from hardware_targets.host import host_cpu

            check_same_cpu(stored, spec, host_cpu())
        elif emulator:
            check_same_emulator(stored, spec, emulator, factors)
    report(f"dataset {data.summary()}")
    if emulator:
        report(fitted.line(spec.target))
    get_backend(profile, runs_dir).check()  # a board that is down, before anything is trained for it
    if address:
        check_cluster(address)  # an address nothing answers at, before anything is stored
    elif profile.backend == "local":
        say_competing_load(report, "this search")
    if tracking_uri:
        from search.tracking import check_tracking, file_store_error

        if tracking_uri.startswith(("http://", "https://")) or file_store_error(tracking_uri):
            check_tracking(tracking_uri)  # one request: a server that is down is reported before anything is timed
    measured = _precisions_measured(spec)
    spec = _narrower_where_faster(_supported_space(spec, profile, report), profile, runs_dir, report, measured)
    if any(p.startswith("int8") for p in spec.space.precision) and (note := data.int8_input_note()):
        report(f"note: {note}")
    if not address:
        check_resources(spec)
    with _timed(timings, "optuna"):
        study = create_study(spec, storage_url, resume)
        study.set_user_attr(TRACKED_ATTR, bool(tracking_uri))
        if DATA_ATTR not in study.user_attrs:  # a search from before it was recorded resumes on what it finds
            study.set_user_attr(DATA_ATTR, data.content_digest())
        if data.imbalanced:
            study.set_user_attr(CHANCE_ATTR, 1 / data.num_classes)
        study.set_user_attr(CLASSES_ATTR, data.num_classes)
        if emulator:  # what the figures of the trials to come are emulated with, for their model cards and a resume
            study.set_user_attr(EMULATOR_ATTR, emulator)
            study.set_user_attr(EMULATOR_FACTORS_ATTR, factors)
    with driving(study, claim=resume):  # status tells a driver killed outright from a running one
        # reaching MLflow (and creating a new store) overlaps Ray's start; no candidate runs before it is reached
        tracker = _Tracking(spec, study, tracking_uri, runs_dir, report, timings) if tracking_uri else None
        withdrawn = False  # a refused new search leaves no study behind to settle
        try:
            requeued = requeue_interrupted(study) if resume else 0
            if requeued:
                report(f"re-queued {requeued} trial(s) interrupted by the previous driver")
            spent = spent_budget(study)
            remaining = spec.trials - spent
            recipes = recipes_for(spec)
            report(f"search {spec.name!r}: {spent_text(spent)} of {spec.trials} trials of training budget spent "
                   f"({finished_count(study)} finished), {max(0, remaining):g} to go ({spec.workers} worker(s), "
                   f"budget {spec.latency_budget_ms} ms on {spec.target_name} judged on p90 latency; a candidate "
                   "screened out costs nothing, one stopped by halving a third)")
            report("order: screen every candidate before training; "
                   + ((f"started from {len(recipes)} classic recipe(s)" if resume else
                       f"{len(recipes)} classic recipe(s) first") + f" ({', '.join(label for label, _ in recipes)}); "
                      if recipes else "no recipes; ")
                   + f"then sampler {resolved_sampler(spec)}"
                   + (f" (auto: {'NSGA-II from' if resolved_sampler(spec) == 'nsga2' else 'TPE below'} 100 trials)"
                      if spec.sampler == "auto" else "")
                   + ("; successive halving on epochs" if spec.uses_halving else "")
                   + "; near-budget latencies re-timed alone"
                   + ("; the front ranks by balanced accuracy (mean recall per class)"
                      if spec.metric == "balanced_accuracy" else ""))

            def refused() -> None:
                """A new search refused before any work leaves nothing under its name, in the study or in MLflow:
                the same command, fixed, starts afresh."""
                nonlocal withdrawn
                if resume:
                    return
                import optuna

                if tracker is not None:
                    tracker.withdraw()
                optuna.delete_study(study_name=spec.name, storage=study._storage)
                withdrawn = True

            def tracking_ready() -> None:
                """No candidate runs before MLflow is reached."""
                if tracker is None:
                    return
                try:
                    tracker.ready()
                except ConfigError:
                    refused()
                    raise

            ship_only = remaining <= 0 and shipping_left(study, spec, profile)
            if ship_only:
                report("shipping stage: not finished before; it goes on with the picks not yet timed for what "
                       "ships (those shipped and the tuning records are kept)")
            if remaining <= 0 and not ship_only:
                tracking_ready()
            else:
                import ray as ray_module

                owns_ray = not ray_module.is_initialized()
                try:
                    with _timed(timings, "ray_start"):
                        ray = start_ray(address, spec.workers)
                except ConfigError:
                    tracking_ready()  # an unreachable MLflow is the first thing to report
                    refused()
                    raise
                try:
                    with stopped_by_signals():  # a kill stops it as Ctrl-C does
                        tracking_ready()
                        try:
                            if address and spec.workers > _cluster_cpus(ray):
                                raise ConfigError(f"The 'workers' field of the search spec must be at most the "
                                                  f"{_cluster_cpus(ray)} CPU(s) of the cluster at {address}. Got "
                                                  f"{spec.workers} instead.")
                            placement = measurement_placement(ray, profile, report)
                        except ConfigError:
                            refused()
                            raise
                        transport = _Transport(ray, spec, profile, runs_dir, timings)
                        try:
                            try:
                                _prepare(ray, study, spec, profile, report, placement, transport)
                            except ConfigError:  # a budget out of the space's reach, a baseline that failed
                                refused()
                                raise
                            if remaining > 0:
                                with _stage(study, "training the distillation teacher, before the first trial"):
                                    _teacher_stage(ray, study, spec, remaining, report, placement, transport)
                                _Driver(ray, study, spec, profile, remaining, report,
                                        tracker.on_trial if tracker else None, timings, placement, transport).run()
                            _ship_stage(ray, study, spec, profile, report, placement, transport)
                        finally:
                            transport.close(report)
                        if tracker:
                            tracker.begin_finish()
                finally:
                    if owns_ray:
                        with _timed(timings, "ray_start"):
                            ray.shutdown()

            all_rows = rows(study)
            if tracker:
                tracker.finish()
        except BaseException as exc:
            # this driver stops (Ctrl-C, an error) and its Ray tasks with it: what it ran is queued again for a resume,
            # not left "running" (only a driver killed outright leaves that, for the resume to re-queue)
            try:
                if not withdrawn:
                    settle_stopped(study)
            except Exception as error:  # the stop is what is reported; this says what a resume will have to do
                cause = error.__cause__ or error
                report(f"could not queue the running trials again ({first_line(cause, named=True)}); "
                       "a resume queues them")
            if tracker:  # no thread left logging behind a failed search; its MLflow run says it stopped
                tracker.abandon("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
    front = feasible_front(all_rows)
    timings["wall"] = time.perf_counter() - wall_started
    return SearchOutcome(spec.name, storage_url, all_rows, front, best_within_budget(all_rows),
                         front_hypervolume(front, search_bounds(study, spec)), timings,
                         tracking_incomplete=bool(tracker and tracker.pending),
                         experiment=tracker.tracker.experiment_name if tracker and tracker.tracker else None)


def _prepare(ray, study, spec: SearchSpec, profile, report: Reporter, placement: dict,
             transport: _Transport) -> None:
    """Fix the hypervolume's bounds and the accuracy floor once per search, stored with it (a resume keeps them)."""
    size = profile.flash_bytes  # a feasible candidate can be no larger than the target's flash
    energy = profile.power_active_mw * spec.latency_budget_ms * 1e-3 if profile.power_active_mw else None
    need_bounds = BOUNDS_ATTR not in study.user_attrs
    need_baseline = spec.max_accuracy_drop is not None and FLOOR_ATTR not in study.user_attrs
    if spec.min_accuracy is not None and FLOOR_ATTR not in study.user_attrs:
        study.set_user_attr(FLOOR_ATTR, {"value": spec.min_accuracy, "baseline": None, "max_drop": None})
    if not need_bounds and not need_baseline:
        return
    screen_widest = need_bounds and (size is None or energy is None)
    reach = need_bounds and not finished_count(study)  # a new search: is its budget within reach?
    if screen_widest or need_baseline or reach:
        if need_baseline:
            report(f"the fp32 full-width baseline for the accuracy floor (width 1, {spec.budget.epochs} epochs, "
                   "compiled and measured like a candidate): cached, or trained once per dataset and budget")
        task = ray.remote(num_cpus=THREADS_PER_WORKER, max_retries=0, **placement)(prepare_search)
        what = ("the fp32 full-width baseline" if need_baseline else
                "screening the widest model" if screen_widest else "screening the smallest models")
        try:
            with _stage(study, f"training {what} for the accuracy floor" if need_baseline else what):
                out = _get_reporting(ray, task.remote(spec.to_dict(), str(transport.root), THREADS_PER_WORKER,
                                                      screen_widest, need_baseline, transport.dataset, profile,
                                                      reach),
                                     report, what)
        except Exception as exc:
            _stop_on_write_fault(exc)
            if need_baseline:
                raise ConfigError(f"The fp32 full-width baseline for --max-accuracy-drop failed: "
                                  f"{_failure_reason(exc)}") from exc
            out = {}
            report(f"could not screen {'the widest model' if screen_widest else 'the smallest models'} "
                   f"({_failure_reason(exc)})" + ("; hypervolume bounds come from the trials" if screen_widest else ""))
        _within_reach(out.get("fastest"), spec, profile)
    else:
        out = {}
    if need_bounds and (not screen_widest or "widest" in out):
        widest = out.get("widest", {})
        sources = ["latency: the budget",
                   "size: the target's flash" if size else
                   f"size: {WIDEST_MARGIN:g}x the widest model's {widest['size_bytes']:.0f} B",
                   "energy: active power x budget" if energy else
                   f"energy: {WIDEST_MARGIN:g}x the widest model's {widest['energy_mj']:.6g} mJ"]
        set_bounds(study, spec, size or WIDEST_MARGIN * widest["size_bytes"],
                   energy or WIDEST_MARGIN * widest["energy_mj"], "; ".join(sources))
    if need_baseline:
        base = out["baseline"]
        words = ACCURACY_METRICS[spec.metric]
        floor = base[spec.metric] * (1 - spec.max_accuracy_drop)
        study.set_user_attr(FLOOR_ATTR, {"value": floor, "baseline": base[spec.metric],
                                         "max_drop": spec.max_accuracy_drop})
        report(f"{words} floor {floor:.4f}: fp32 full-width baseline {base[spec.metric]:.4f} (measured, validation, "
               f"{'cached' if base['cached'] else 'trained now'}) less {100 * spec.max_accuracy_drop:g}%")
    elif spec.min_accuracy is not None and need_bounds:
        words = ACCURACY_METRICS[spec.metric]
        report(f"{words} floor {spec.min_accuracy:g} (validation {words} of the compiled artifact)")


def _within_reach(fastest: list | None, spec: SearchSpec, profile) -> None:
    """Refuse a new search whose space holds no model that fits the target: screening its smallest models (seconds)
    says so at once, where the search would screen out every candidate it asks and end with nothing trained."""
    if not fastest or fastest[-1][1] is None:
        return
    words, reason, median_ms, over_budget = min(fastest, key=lambda screened: screened[2])
    raise ConfigError(f"No candidate of the search space fits {profile.name}: its fastest, {words}, screened "
                      f"untrained: {reason}. "
                      + (f"Raise --latency-budget-ms (latency_budget_ms in a spec) above {median_ms:.4g} ms or choose "
                         "a faster target" if over_budget else
                         "Choose a target with more memory or give the model a smaller input")
                      + "; nothing was trained.")


class EpochProgress:
    """Progress lines of a training run: its first epoch, then at most one per ``every`` seconds (a line per epoch
    of a long run would bury the search's own lines)."""

    def __init__(self, what: str, epochs: int, every: float = PROGRESS_S, clock=time.perf_counter):
        self.what, self.epochs, self.every, self.clock = what, epochs, every, clock
        self.started = self.shown = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def line(self, epoch: int) -> str | None:
        """The line to show after ``epoch`` epochs, or None when the last one shown is recent."""
        now = self.clock()
        if epoch != 1 and now - self.shown < self.every:
            return None
        self.shown, spent = now, now - self.started
        return (f"{self.what}: epoch {epoch}/{self.epochs}, {_clock(spent)} so far, "
                f"ETA {_clock(spent / epoch * (self.epochs - epoch))}")


# what a user does about a teacher not worth distilling from
TEACHER_ADVICE = ("Train it longer (--teacher-epochs), or leave distillation out of the space (space.alpha: [1, 1] in "
                  "a spec file)")


def teacher_line(scores: dict, metric: str, classes: int | None) -> str:
    """The teacher's validation score in words, called useless where it is no better than chance (a width-2
    teacher of signals on a large offset predicted one class: 1/3 balanced accuracy, where students reached 1.00)."""
    return (f"distillation teacher: validation {metric.replace('_', ' ')} {scores[metric]:.4f} (measured on its fp32 "
            "torch model: the teacher is not shipped)"
            + (f"; no better than chance, 1/{classes}: distilling from it teaches a student nothing. {TEACHER_ADVICE}"
               if classes and at_chance(scores["balanced_accuracy"], 1 / classes) else ""))


def _teacher_stage(ray, study, spec: SearchSpec, remaining: float, report: Reporter, placement: dict,
                   transport: _Transport) -> None:
    """Have the distillation teacher trained before the first trial when the space distils and a distilling
    candidate may come: once, on all the search's CPUs, with its own progress, and outside the trials' ETA (inside a
    trial it would hold a worker for many candidates' time, unannounced). Every node then gets it with the search's
    caches."""
    if spec.space.alpha[0] >= 1:
        return
    filled = queued_without_distillation(study, spec, remaining)
    if filled:
        report(f"distillation teacher not trained before the first trial: the {filled} queued recipe(s) fill the "
               "trial budget and none distils (a distilling candidate asked for later, where a screened-out recipe "
               "leaves budget, trains it first on its own worker)")
        return
    epochs = spec.budget.teacher_epochs
    threads = min(spec.workers * THREADS_PER_WORKER, _node_cpus(ray, placement))
    task = ray.remote(num_cpus=threads, max_retries=0, **placement)(teacher_task)
    stream = task.remote(transport.dataset, spec.seed, epochs, str(transport.root), threads, transport.inputs())
    progress = None
    try:
        for ref in stream:
            message = ray.get(ref)
            progress = progress or EpochProgress("teacher", epochs)  # from the task's start: the ETA is the training's
            what = f"width {message['width']:g}, {epochs} epochs" if "width" in message else ""
            if message.get("cached"):
                report(f"distillation teacher ({what}): cached, not trained again")
            elif "cached" in message:
                report(f"training the distillation teacher first ({what}, {threads} CPU thread(s)): the space "
                       f"distils (alpha from {spec.space.alpha[0]:g}); once per dataset, seed and teacher epochs "
                       "(budget.teacher_epochs, --teacher-epochs), then cached for later searches and resumes")
            elif "epoch" in message:
                if message["epoch"] == epochs:
                    report(f"distillation teacher trained in {_clock(progress.elapsed())}")
                elif line := progress.line(message["epoch"]):
                    report(line)
            elif "scores" in message:
                study.set_user_attr(TEACHER_ATTR, {**message["scores"], "metric": spec.metric, "epochs": epochs})
                report(teacher_line(message["scores"], spec.metric, study.user_attrs.get(CLASSES_ATTR)))
            else:
                transport.land(message.get("files"))
    except Exception as exc:
        _stop_on_write_fault(exc)
        report(f"the distillation teacher could not be trained ({_failure_reason(exc)}); each distilling candidate "
               "tries it again, and fails on its own if it cannot")
    except BaseException:  # Ctrl-C: the training stops with the driver
        with contextlib.suppress(Exception):
            ray.cancel(stream)
        raise


def _cancel(ray, ref) -> None:
    """Stop a task of this search that has not finished. A search stopped by an exception on a cluster it started
    stops the cluster; on one it was given (``--address``, a notebook's), a task left running would go on training
    beside the next search's timings. A finished task is left alone: Ray 2.60 aborts the driver process ("Tried to
    complete task that was not pending") when a task is force-cancelled as its reply comes in, which a task that has
    just failed, whose error ``ray.get`` has already raised, makes likely (NOTES.md)."""
    with contextlib.suppress(Exception):
        done, _ = ray.wait([ref], timeout=0, fetch_local=False)  # finished here or on another node
        if not done:
            ray.cancel(ref, force=True)


def _get(ray, refs, **kwargs):
    """``ray.get`` that cancels what it waits for when the wait ends in an exception (Ctrl-C, a timeout)."""
    try:
        return ray.get(refs, **kwargs)
    except BaseException:
        for ref in refs if isinstance(refs, list) else [refs]:
            _cancel(ray, ref)
        raise


@contextlib.contextmanager
def _stage(study, doing: str):
    """Tell ``status`` what the driver does before the first trial, while it does it."""
    study.set_user_attr(STAGE_ATTR, doing)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            study.set_user_attr(STAGE_ATTR, None)


def _get_reporting(ray, ref, report: Reporter, what: str):
    """``_get`` of one long task with a line every ``PROGRESS_S`` seconds, so a long wait is never silent."""
    started = time.perf_counter()
    try:
        while not ray.wait([ref], timeout=PROGRESS_S, fetch_local=False)[0]:
            report(f"{what}: still running, {_clock(time.perf_counter() - started)}")
    except BaseException:
        _cancel(ray, ref)
        raise
    return _get(ray, ref)


@contextlib.contextmanager
def _timed(timings: dict[str, float], part: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[part] = timings.get(part, 0.0) + time.perf_counter() - started


@dataclass
class _Job:
    """A trial on a worker: which candidate, at which halving rung (None = the full budget, no halving)."""

    trial: object
    candidate: Candidate
    rung: int | None
    started: float


class _Driver:
    """Keeps every worker busy and tells Optuna each result as it lands.

    A free worker gets its next candidate right after Optuna is told, before the progress line and the MLflow
    logging: those run while the workers compute, so they never hold a worker idle."""

    def __init__(self, ray, study, spec: SearchSpec, profile, remaining: float, report: Reporter, on_trial,
                 timings: dict, placement: dict, transport: _Transport):
        from search.stages.screen import shape_knobs

        self.ray, self.study, self.spec, self.profile = ray, study, spec, profile
        self.runs_dir, self.transport = str(transport.root), transport
        self.remaining, self.on_trial, self.timings = remaining, on_trial, timings
        self.said_at = time.perf_counter()  # the last line: a long silence says what runs (``_still_running``)

        def say(line: str) -> None:
            self.said_at = time.perf_counter()
            report(line)

        self.report = say
        self.chance = study.user_attrs.get(CHANCE_ATTR)  # set on imbalanced classes: lines show balanced accuracy
        self.classes = study.user_attrs.get(CLASSES_ATTR)  # a trial at chance is called so on even classes too
        self.task = ray.remote(num_cpus=THREADS_PER_WORKER, max_retries=0, **placement)(run_candidate)
        from search.board import StageBoard

        self.board = ray.remote(num_cpus=0, max_restarts=0)(StageBoard).remote()
        self.taking = self.board.take.remote()  # the next posts; collected once they are in, never waited for
        # holds every CPU of the search: Ray starts it only when no candidate runs beside it
        self.retime_task = ray.remote(num_cpus=min(spec.workers * THREADS_PER_WORKER, _node_cpus(ray, placement)),
                                      max_retries=0, **placement)(retime_results)
        self.shape_knobs = functools.partial(shape_knobs, profile=profile)
        self.in_flight: dict = {}  # ray ref -> _Job
        self.done = reusable_trials(study)  # candidate key -> finished trial: repeats reuse it, across restarts too
        self.running: dict[str, _Job] = {}  # candidate key -> its job: a repeat waits for it instead of running twice
        self.waiting: dict[str, list] = {}  # candidate key -> trials waiting for the running one
        self.screened: dict[tuple, tuple[int, dict]] = {}  # shapes -> (trial, screening) of shapes that cannot fit
        # Measured targets: the first candidate of new shapes is their probe; later candidates of the same shapes
        # wait for its verdict (a worker takes the next candidate meanwhile), so two candidates never both train
        # for shapes that turn out over the budget. Emulated figures are exact at screening: nothing waits there.
        self.probing: dict[tuple, _Job] = {}  # shapes -> the running candidate that decides them
        self.proven: set[tuple] = set()  # shapes a finished candidate fitted
        self.shape_waiting: dict[tuple, list[tuple[object, Candidate]]] = {}  # shapes -> (trial, candidate) waiting
        self.ready: list[tuple[object, Candidate]] = []  # released from waiting: sent before any new ask
        self.pending_retime: list[tuple[_Job, CandidateResult]] = []
        self.rung0: list[tuple[float, float, bool]] = []  # (accuracy, p90 latency, fits) at the first rung
        self.bounds = search_bounds(study, spec)
        self.told: list[tuple[object, int, str]] = []  # (trial, finished count, note) not yet published
        self.after_told: list[str] = []  # lines about told trials, published after theirs
        self.spent = 0.0  # of the budget, in fully trained candidates (``trial_cost``)
        self.asks = 0
        self.max_asks = max(1, int(ASKS_PER_TRIAL * remaining))
        self.counts = {"screened": 0, "retimed": 0, "retime_changed": 0, "against_fit": 0, "promoted": 0,
                       "stopped": 0, "reused": 0, "waited": 0}
        self.started_all = time.perf_counter()
        self.stored_pace = stored_pace(study, spec.workers)  # a resume's ETA before its own first candidate
        self.landed = None  # when the last result came back: a worker is free until its next candidate is sent

    def _can_ask(self) -> bool:
        """Whether another candidate fits the budget, counting each running or waiting one as a full one."""
        committed = (self.spent + len(self.in_flight) + len(self.pending_retime) + len(self.ready)
                     + sum(map(len, self.waiting.values())) + sum(map(len, self.shape_waiting.values())))
        return committed < self.remaining - 1e-9 and self.asks < self.max_asks

    def run(self) -> None:
        try:
            self._run()
        except BaseException:  # Ctrl-C, a storage error: what runs for this search stops with it
            for ref in self.in_flight:
                _cancel(self.ray, ref)
            raise

    def _run(self) -> None:
        while True:
            if not self.in_flight and self.pending_retime:
                self._retime()
            self._fill()
            self._publish()
            idle = not self.in_flight and not self.pending_retime
            if idle and not self.ready and not self.shape_waiting and not self._can_ask():
                break
            if not self.in_flight:
                if self.pending_retime:
                    continue
                for key, trials in list(self.waiting.items()):  # cannot happen: a waiting trial's source runs
                    for trial in trials:
                        self._fail(trial, "internal: waited for a candidate that is not running")
                    del self.waiting[key]
                for shapes in list(self.shape_waiting):  # nor this: the probe of waiting shapes runs
                    self.probing.pop(shapes, None)
                    self.ready.extend(self.shape_waiting.pop(shapes))
                continue
            self._wait_one()
        if self.asks >= self.max_asks and self.spent < self.remaining:
            self.report(f"stopped after {self.asks} candidates, {ASKS_PER_TRIAL} per trial of budget: most were "
                        "screened out; a looser budget or another target leaves more that fit")
            self.study.set_user_attr(ASKED_OUT_ATTR, self.asks)  # for status and export to say why it stopped
        elif self.study.user_attrs.get(ASKED_OUT_ATTR):  # a resume that went on to its budget
            self.study.set_user_attr(ASKED_OUT_ATTR, None)
        c = self.counts
        self.report(f"screened out before training: {c['screened']}; re-timed alone near the budget: {c['retimed']} "
                    f"({c['retime_changed']} changed verdict"
                    + (f"; {c['against_fit']} over the budget where its shapes had fitted" if c['against_fit'] else "")
                    + f"); reused results: {c['reused']}; waited for the first "
                    f"candidate of the same shapes: {c['waited']}"
                    + (f"; halving: {c['promoted']} promoted to the full budget, {c['stopped']} stopped at the first "
                       "rung" if self.spec.uses_halving else ""))

    # --- dispatch ------------------------------------------------------------------------------------------

    def _fill(self) -> None:
        while len(self.in_flight) < self.spec.workers and (self.ready or self._can_ask()):
            if self.ready:
                self._dispatch(*self.ready.pop(0))
                continue
            with _timed(self.timings, "optuna"):
                trial = self.study.ask()
                candidate = suggest_candidate(trial, self.spec)
            self.asks += 1
            self._dispatch(trial, candidate)

    def _dispatch(self, trial, candidate: Candidate) -> None:
        """Send a candidate to a worker, unless an earlier result (or a running candidate) decides it."""
        key = candidate.key()
        shapes = self.shape_knobs(candidate)
        if key in self.done:
            self._reuse(trial, self.done[key])
        elif key in self.running:
            self.waiting.setdefault(key, []).append(trial)
        elif shapes in self.screened:
            number, screening = self.screened[shapes]
            with _timed(self.timings, "optuna"):
                record_screened(self.study, trial, self.spec, candidate, screening,
                                note=f" (same shapes as trial {number}: not screened again)")
            self.counts["screened"] += 1
            self._told(trial, "")
            self._narrow_recipe(trial, candidate)
        elif shapes in self.probing and shapes not in self.proven:
            self.shape_waiting.setdefault(shapes, []).append((trial, candidate))
            self.counts["waited"] += 1
        else:
            halve = self.spec.uses_halving and not trial.user_attrs.get("recipe")
            job = _Job(trial, candidate, 0 if halve else None, time.perf_counter())
            if self.profile.backend != "emulated" and shapes not in self.proven:
                self.probing.setdefault(shapes, job)
            self._submit(job, screen=True)

    def _submit(self, job: _Job, screen: bool) -> None:
        budget = rung_budget(self.spec.budget) if job.rung == 0 else self.spec.budget
        candidate = dataclasses.replace(job.candidate, budget=budget)
        ref = self.task.remote(dataclasses.asdict(candidate), self.transport.dataset, self.profile, self.runs_dir,
                               THREADS_PER_WORKER, self.spec.latency_budget_ms if screen else None,
                               self.transport.inputs(), self.spec.runtime, search=self.spec.name,
                               board=self.board, trial=job.trial.number)
        self.in_flight[ref] = job
        self.running[job.candidate.key()] = job
        if self.landed is not None:
            self.timings["dispatch"] += time.perf_counter() - self.landed
            self.timings["dispatches"] += 1
            self.landed = None

    def _wait_one(self) -> None:
        timeout = self.spec.timeout_s
        now = time.perf_counter()
        wait = min(STAGE_POLL_S, max(0.1, self.said_at + QUIET_S - now))
        if timeout:
            wait = min(wait, max(0.1, min(j.started + timeout - now for j in self.in_flight.values())))
        ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=wait)
        self._store_stages()
        if not ready:  # a long silence, or the oldest candidate(s) went over the per-candidate time limit
            now = time.perf_counter()
            for ref, job in list(self.in_flight.items()):
                if timeout and now - job.started >= timeout:
                    _cancel(self.ray, ref)
                    del self.in_flight[ref]
                    self._fail_job(job, f"timeout: exceeded the per-candidate limit of {timeout} s")
            if self.in_flight and now - self.said_at >= QUIET_S:
                self.report(self._still_running())
            return
        ref = ready[0]
        self.landed = time.perf_counter()
        job = self.in_flight.pop(ref)
        try:
            out = self.ray.get(ref)
        except Exception as exc:
            _stop_on_write_fault(exc)
            self._fail_job(job, _failure_reason(exc))
            return
        self.timings["transfer_workers"] += out.get("transfer_s", 0.0)
        if out.get("result") is None:
            self._screened_out(job, out["screening"])
            return
        self.transport.land(out.get("files"))
        result = CandidateResult.from_dict(out["result"])
        if job.rung == 0:
            self._halving_decision(job, result)
            return
        if job.rung == 1:  # promoted from the first rung (recipes train fully from the start: no rung)
            result = dataclasses.replace(result, info={**result.info, "rung": "full budget"})
        median, p90 = result.value("latency_ms_median"), result.value("latency_ms_p90")
        provenance = result.metrics["latency_ms_median"].provenance
        verdict = budget_verdict(median, p90, self.spec.latency_budget_ms, provenance)
        # an earlier candidate of the same shapes fitted: a loaded timing over the budget contradicts a measurement
        # of the same graph, so it is timed again alone before it rules the shapes out
        against_fit = verdict == INFEASIBLE and provenance == "measured" and \
            self.shape_knobs(job.candidate) in self.proven
        if verdict == RETIME or against_fit:
            self.counts["against_fit"] += against_fit
            self.pending_retime.append((job, result))
            return
        self._finish(job, result)

    # --- outcomes ------------------------------------------------------------------------------------------

    def _store_stages(self) -> None:
        """Store the stages workers posted with their running trials (a finished trial's last one is dropped). The
        driver never waits for the board: a board slow to start, or gone, costs the search nothing."""
        done, _ = self.ray.wait([self.taking], timeout=0)
        if not done:
            return
        try:
            posts = self.ray.get(self.taking)
        except Exception:  # the board is gone: stages are a courtesy, the search goes on without them
            posts = {}
        self.taking = self.board.take.remote()
        running = {job.trial.number: job.trial for job in self.in_flight.values()}
        with _timed(self.timings, "optuna"):
            for number, stage in posts.items():
                if number in running:
                    with contextlib.suppress(Exception):  # nor does a storage that refuses one
                        running[number].set_user_attr(RUNNING_STAGE_ATTR, stage)

    def _still_running(self) -> str:
        """What runs while no line has come for a while: long training on large data is otherwise silent. Read from
        storage, as ``status`` reads it, so a trial waiting to be re-timed shows too."""
        return f"running: {running_trials(self.study)}; a trial's line comes once it is trained, compiled and measured"

    def _told(self, trial, note: str) -> None:
        self.spent += trial_cost(self.study._storage.get_trial(trial._trial_id))
        self.told.append((trial, self.spent, note))

    def _finish(self, job: _Job, result: CandidateResult, stopped: str | None = None) -> None:
        with _timed(self.timings, "optuna"):
            record_result(self.study, job.trial, self.spec, result, stopped=stopped)
        self._told(job.trial, "")
        self._release(job)
        shapes = self.shape_knobs(job.candidate)
        ruled_out = _shapes_ruled_out(result, self.spec.latency_budget_ms)
        if ruled_out:
            self.screened.setdefault(shapes, (job.trial.number, ruled_out))
        else:
            self.proven.add(shapes)
        self._release_shapes(job)

    def _release(self, job: _Job) -> None:
        """The job's trial is told: remember it for repeats and hand it to the trials that waited for it."""
        key = job.candidate.key()
        self.running.pop(key, None)
        frozen = self.study._storage.get_trial(job.trial._trial_id)
        if frozen.state.name in ("COMPLETE", "PRUNED"):
            self.done.setdefault(key, frozen)
        for trial in self.waiting.pop(key, []):
            self._reuse(trial, frozen)

    def _reuse(self, trial, source) -> None:
        with _timed(self.timings, "optuna"):
            record_reuse(self.study, trial, source)
        self.counts["reused"] += 1
        self._told(trial, f"  (same knobs as trial {source.number}: result reused)")

    def _screened_out(self, job: _Job, screening: dict) -> None:
        with _timed(self.timings, "optuna"):
            record_screened(self.study, job.trial, self.spec, job.candidate, screening)
        self.screened[self.shape_knobs(job.candidate)] = (job.trial.number, screening)
        self.counts["screened"] += 1
        self._told(job.trial, "")
        self._release(job)
        self._release_shapes(job)
        self._narrow_recipe(job.trial, job.candidate)

    def _narrow_recipe(self, trial, candidate: Candidate) -> None:
        """A screened-out recipe comes back one width step narrower, next in the queue, until it fits."""
        label = trial.user_attrs.get("recipe")
        narrower = narrower_recipe(label, candidate.knobs(), self.spec) if label else None
        if narrower is None:
            return
        with _timed(self.timings, "optuna"):
            self.study.enqueue_trial(narrower[1], user_attrs={"recipe": narrower[0]})
        self.after_told.append(f"recipe {label!r} does not fit the target; next: {narrower[0]!r}")

    def _fail(self, trial, reason: str) -> None:
        with _timed(self.timings, "optuna"):
            record_failure(self.study, trial, reason)
        self._told(trial, reason)

    def _fail_job(self, job: _Job, reason: str) -> None:
        self._fail(job.trial, reason)
        self.running.pop(job.candidate.key(), None)
        for trial in self.waiting.pop(job.candidate.key(), []):
            self._fail(trial, f"same knobs as trial {job.trial.number}, which failed: {reason}")
        self._release_shapes(job)

    def _release_shapes(self, job: _Job) -> None:
        """The candidates that waited for ``job``'s shapes go on: to the screened-out record when they were ruled
        out, else to a worker (ahead of new asks); another candidate becomes the probe of still-open shapes."""
        shapes = self.shape_knobs(job.candidate)
        if self.probing.get(shapes) is not job:
            return
        del self.probing[shapes]
        self.ready.extend(self.shape_waiting.pop(shapes, []))

    def _halving_decision(self, job: _Job, result: CandidateResult) -> None:
        """Asynchronous successive halving: go on to the full budget when the first-rung result ranks in the best
        third of the first-rung results so far (non-dominated rank on accuracy and p90 latency, then accuracy).
        Size and energy are left out of the rank: they follow the shapes, which training does not change."""
        accuracy, p90 = result.value(self.spec.metric), result.value("latency_ms_p90")
        fits = p90 <= self.spec.latency_budget_ms and all(
            result.value(n) <= limit for n, limit in (result.info.get("limits") or {}).items() if limit)
        self.rung0.append((accuracy, p90, fits))
        pool = [(a, lat) for a, lat, ok in self.rung0 if ok]
        if fits and _halving_position(pool, (accuracy, p90)) < math.ceil(len(pool) / HALVING_ETA):
            self.counts["promoted"] += 1
            promoted = dataclasses.replace(job, rung=1, started=time.perf_counter())
            shapes = self.shape_knobs(job.candidate)
            if self.probing.get(shapes) is job:  # still the probe of its shapes: its final result decides them
                self.probing[shapes] = promoted
            self._submit(promoted, screen=False)
            return
        self.counts["stopped"] += 1
        epochs = rung_budget(self.spec.budget).epochs
        result = dataclasses.replace(result, info={**result.info, "rung": "first rung"})
        self._finish(job, result, stopped=f"the first rung ({epochs} of {self.spec.budget.epochs} epochs)")

    def _retime(self) -> None:
        """Time the pending near-budget candidates again, alone: called when no candidate is running."""
        pending, self.pending_retime = self.pending_retime, []
        ref = self.retime_task.remote([r.to_dict() for _, r in pending], self.transport.dataset, self.profile,
                                      self.runs_dir, THREADS_PER_WORKER,
                                      self.transport.inputs(*(Path(r.artifacts["onnx"]).parent for _, r in pending)))
        try:
            fresh = [CandidateResult.from_dict(d) for d in _get(self.ray, ref)]
        except Exception as exc:
            _stop_on_write_fault(exc)
            self.report(f"re-timing failed ({_failure_reason(exc)}); the figures timed during the search stand")
            fresh = [r for _, r in pending]
        budget = self.spec.latency_budget_ms
        for (job, before), after in zip(pending, fresh):
            self.counts["retimed"] += after.info.get("retimed", False)
            verdict = [budget_verdict(r.value("latency_ms_median"), r.value("latency_ms_p90"), budget,
                                      r.metrics["latency_ms_median"].provenance, retimed=True) for r in (before, after)]
            self.counts["retime_changed"] += verdict[0] != verdict[1]
            self._finish(job, after)

    # --- reporting -----------------------------------------------------------------------------------------

    def _publish(self) -> None:
        """Progress lines and MLflow logging for what Optuna was told since the last call."""
        for trial, spent, note in self.told:
            with _timed(self.timings, "optuna"):
                row = Row.from_trial(self.study._storage.get_trial(trial._trial_id), objective=self.spec.metric)
                hv = front_hypervolume(feasible_front(rows(self.study)), self.bounds)
            eta = _eta(spent, self.remaining, self.started_all, self.stored_pace)
            prefix = f"[{spent_text(spent)}/{self.remaining:g}] trial {row.number}: {_knobs(row)}"
            if row.state == "FAIL":
                self.report(f"{prefix} FAILED - {note}  ETA {eta}")
            elif row.stopped == "screened":
                self.report(f"{prefix} -> screened out, not trained: {row.error}  ETA {eta}{note}")
            else:
                self.report(f"{prefix} -> {_outcome(row, self.chance, self.classes)}  HV {hv:.3f}  ETA {eta}{note}")
        for line in self.after_told:
            self.report(line)
        if self.told and self.on_trial:
            self.on_trial()
        self.told.clear()
        self.after_told.clear()


def _shapes_ruled_out(result: CandidateResult, budget_ms: float) -> dict | None:
    """A trained candidate's latency and memories follow its shapes, as screening's do, and are measured better
    (re-timed alone near the budget): when they miss the budget or a limit, a later candidate of the same shapes
    is ruled out as if screened, without a task. Returns that screening record, or None."""
    median, p90 = result.value("latency_ms_median"), result.value("latency_ms_p90")
    provenance = result.metrics["latency_ms_median"].provenance
    retimed = bool(result.info.get("retimed"))
    reasons = []
    if budget_verdict(median, p90, budget_ms, provenance, retimed=retimed) == INFEASIBLE:
        how = "re-timed alone" if retimed else "timed"
        reasons.append(f"{p90:.4g} ms p90 ({provenance}, {how}, trained candidate of the same shapes) is over the "
                       f"{budget_ms:g} ms budget")
    limits = result.info.get("limits") or {}
    reasons += over_limits({name: m.value for name, m in result.metrics.items()}, limits)
    if not reasons:
        return None
    figures = {n: [m.value, m.unit, m.provenance] for n, m in result.metrics.items()
               if not n.startswith(("accuracy", "balanced_accuracy", "ort_")) and n not in ("sparsity", "nonzero_weight_fraction")}
    return {"fits": False, "reason": "; ".join(reasons), "metrics": figures, "limits": limits, "seconds": 0.0}


def _halving_position(pool: list[tuple[float, float]], point: tuple[float, float]) -> int:
    """How many points of ``pool`` rank before ``point``: by non-dominated rank (accuracy up, latency down),
    then by accuracy."""
    remaining = list(range(len(pool)))
    rank = {}
    level = 0
    while remaining:
        front = non_dominated([pool[i] for i in remaining], ["maximize", "minimize"])
        for j in front:
            rank[remaining[j]] = level
        remaining = [i for k, i in enumerate(remaining) if k not in set(front)]
        level += 1
    mine = next(i for i in reversed(range(len(pool))) if pool[i] == point)
    order = (rank[mine], -point[0])
    return sum(1 for i in range(len(pool)) if (rank[i], -pool[i][0]) < order)


def _knobs(row: Row) -> str:
    """The trial's knobs in one short line (a failed trial holds only the knobs its space let vary)."""
    k = row.knobs

    def num(name: str) -> str:
        return f"{k[name]:<4g}" if name in k else "-   "

    pruned = k.get("pruning", "-")[0] if k.get("sparsity") else "-"  # s(tructured) or u(nstructured); - unpruned
    return (f"{k.get('precision', '-'):<8} w={num('width')} s={num('sparsity')} {pruned} "
            f"T={num('temperature')} a={num('alpha')}" + (f" [{row.recipe}]" if row.recipe else ""))


def _outcome(row: Row, chance: float | None = None, classes: int | None = None) -> str:
    on = f" on {row.searched_runtime}" if row.searched_runtime == "onnxruntime" else ""  # else untuned TVM, as ever
    text = (f"{row.accuracy_text(chance, classes)}, p90 {row.value('latency_ms_p90'):.4g} ms "
            f"({row.metrics['latency_ms_p90'][2]}{on}), {row.value('size_bytes') / 1024:.1f} KiB, ")
    if row.stopped:
        return text + f"stopped at {row.stopped}"
    return text + ("feasible" if row.feasible else f"infeasible: {row.infeasible_because()}")


def _stop_on_write_fault(exc: Exception) -> None:
    """Raise ``exc`` again when a full disk or a folder that cannot be written caused it: the search stops (what
    finished is kept, what ran is queued again) rather than failing each candidate after it on the disk, not on its
    knobs."""
    if write_fault(exc):
        raise exc


def _failure_reason(exc: Exception) -> str:
    """One line saying why a candidate failed, whether it raised or its worker died."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, CandidateError):
        return str(cause)
    if cause is not None:
        return first_line(cause, named=True)
    name = type(exc).__name__
    if "WorkerCrashed" in name or "ActorDied" in name or "NodeDied" in name or "OutOfMemory" in name:
        return f"worker died: {name}"
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return text[-1] if text else name


def _eta(spent: float, remaining: float, started: float, stored_pace: float | None = None) -> str:
    """Time left at the pace so far; before a candidate has trained (screenings cost no budget), at the stored
    trials' pace on a resume, else unknown."""
    if not spent:
        if not remaining:
            return "0m00s"
        return (f"{_clock(stored_pace * remaining)} at the stored trials' pace" if stored_pace else
                "unknown until a candidate has trained")
    return _clock((time.perf_counter() - started) / spent * max(0.0, remaining - spent))


def stored_pace(study, workers: int) -> float | None:
    """Seconds of a search's wall time per fully trained candidate, from its finished trials (a resume's): the
    median trained trial's duration over the workers that ran beside it. None before any trial trained."""
    from optuna.trial import TrialState

    durations = [(t.datetime_complete - t.datetime_start).total_seconds()
                 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.datetime_start and t.datetime_complete and trial_cost(t) == 1.0
                 and "reused_from_trial" not in t.user_attrs]
    return sorted(durations)[len(durations) // 2] / max(1, workers) if durations else None
