"""Ray side of a search: candidates run as Ray tasks; the driver asks and tells Optuna.

The driver keeps ``workers`` tasks in flight and handles whichever finishes
first, so one slow candidate never stalls the others. A task that raises, or
whose worker process dies, becomes a failed trial with its reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


from search.candidate import Candidate, CandidateResult
from search.errors import CandidateError, ConfigError
from search.spec import SearchSpec, check_inputs, check_resources
from search.study import (
    Row, best_within_budget, create_study, feasible_front, finished_count, front_hypervolume, record_failure,
    record_result, requeue_interrupted, rows, suggest_candidate,
)

THREADS_PER_WORKER = 1


@functools.lru_cache(maxsize=4)
def _dataset(name: str):
    from search.data import load_dataset

    return load_dataset(name)


def run_candidate(candidate_dict: dict, dataset: str, target: str, runs_dir: str, threads: int) -> dict:
    """Body of the Ray task: one candidate through the pipeline, returned as a plain dict."""
    from hardware_targets import load_profile
    from search.pipeline import Paths, evaluate_candidate

    result = evaluate_candidate(Candidate.from_dict(candidate_dict), _dataset(dataset), load_profile(target),
                                Paths(Path(runs_dir)), threads=threads)
    return result.to_dict()


@dataclass
class SearchOutcome:
    name: str
    storage: str
    rows: list[Row]
    front: list[Row]
    best: Row | None
    hypervolume: float
    # the driver's own time, by part: ray_start, optuna (ask, tell, storage), logging (MLflow), wall; and
    # dispatch: how long freed workers waited for their next candidate, over `dispatches` hand-overs
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


def start_ray(address: str | None, workers: int):
    """Connect to a cluster at ``address``, or start a local one sized for ``workers``."""
    import ray

    if ray.is_initialized():
        return ray
    env = {"env_vars": {"TVM_NUM_THREADS": str(THREADS_PER_WORKER), "OMP_NUM_THREADS": str(THREADS_PER_WORKER)}}
    try:
        if address:
            ray.init(address=address, runtime_env=env, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(address="local", num_cpus=workers * THREADS_PER_WORKER, include_dashboard=False, runtime_env=env,
                     logging_level="ERROR", log_to_driver=False, _node_ip_address="127.0.0.1")
    except Exception as exc:
        raise ConfigError(f"Cannot start or reach Ray{f' at {address}' if address else ''}: {exc}") from exc
    return ray


def _supported_space(spec: SearchSpec, profile, report: Reporter) -> SearchSpec:
    """Leave out precisions the target has no arithmetic for, and say so."""
    kept = tuple(p for p in spec.space.precision if profile.supports(p))
    if not kept:
        raise ConfigError(f"Target {profile.name} supports none of the precisions {list(spec.space.precision)} "
                          "of the search space; add one it supports (see its peak_macs_per_cycle).")
    if kept != spec.space.precision:
        dropped = sorted(set(spec.space.precision) - set(kept))
        report(f"target {profile.name} has no arithmetic for {dropped}: left out of the search space")
        spec = dataclasses.replace(spec, space=dataclasses.replace(spec.space, precision=kept))
    return spec


class _Tracking:
    """Keeps MLflow in step with the study; a logging failure never stops the search.

    Whatever could not be logged when its trial finished is logged by the next
    successful sync (the next trial, or the end of the search).
    """

    def __init__(self, spec, study, uri, runs_dir, report):
        from search.tracking import SearchTracker

        self.study, self.report, self.pending = study, report, False
        self.tracker = SearchTracker(spec, study, uri, runs_dir)
        report(f"MLflow: experiment {spec.name!r} at {uri} (parent run {self.tracker.parent_id})")
        self._sync()

    def _sync(self, finished: bool = False) -> None:
        try:
            if self.pending:
                self.tracker.recover()
            self.tracker.sync(rows(self.study), finished=finished)
            self.pending = False
        except Exception as exc:
            self.pending = True
            self.report(f"MLflow logging failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        "will retry after the next trial")

    def on_trial(self) -> None:
        self._sync()

    def finish(self, all_rows) -> None:
        self._sync(finished=True)
        if self.pending:
            self.report("MLflow is still unreachable: every trial is in the Optuna storage; "
                        "'edgesearch submit --name NAME --resume' logs the missing ones")


def _cluster_cpus(ray) -> int:
    return int(ray.cluster_resources().get("CPU", 0))


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
    timings = {"ray_start": 0.0, "optuna": 0.0, "logging": 0.0, "dispatch": 0.0, "dispatches": 0}
    spec = _supported_space(spec, check_inputs(spec), report)
    if not address:
        check_resources(spec)
    if tracking_uri:
        from search.tracking import check_tracking

        with _timed(timings, "logging"):
            check_tracking(tracking_uri)
    with _timed(timings, "optuna"):
        study = create_study(spec, storage_url, resume)
    with _timed(timings, "logging"):
        tracker = _Tracking(spec, study, tracking_uri, runs_dir, report) if tracking_uri else None
    requeued = requeue_interrupted(study) if resume else 0
    if requeued:
        report(f"re-queued {requeued} trial(s) interrupted by the previous driver")
    done = finished_count(study)
    remaining = spec.trials - done
    report(f"search {spec.name!r}: {done} of {spec.trials} trials finished, {max(0, remaining)} to go "
           f"({spec.workers} worker(s), sampler {spec.sampler}, budget {spec.latency_budget_ms} ms on {spec.target})")

    if remaining > 0:
        import ray as ray_module

        owns_ray = not ray_module.is_initialized()
        with _timed(timings, "ray_start"):
            ray = start_ray(address, spec.workers)
        try:
            if address and spec.workers > _cluster_cpus(ray):
                raise ConfigError(f"The 'workers' field of the search spec must be at most the {_cluster_cpus(ray)} "
                                  f"CPU(s) of the cluster at {address}. Got {spec.workers} instead.")
            task = ray.remote(num_cpus=THREADS_PER_WORKER, max_retries=0)(run_candidate)
            _drive(ray, task, study, spec, runs_dir, remaining, report, tracker.on_trial if tracker else None,
                   timings)
        finally:
            if owns_ray:
                with _timed(timings, "ray_start"):
                    ray.shutdown()

    all_rows = rows(study)
    if tracker:
        with _timed(timings, "logging"):
            tracker.finish(all_rows)
    front = feasible_front(all_rows)
    timings["wall"] = time.perf_counter() - wall_started
    return SearchOutcome(spec.name, storage_url, all_rows, front, best_within_budget(all_rows),
                         front_hypervolume(front, spec), timings)


@contextlib.contextmanager
def _timed(timings: dict[str, float], part: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[part] = timings.get(part, 0.0) + time.perf_counter() - started


def _drive(ray, task, study, spec, runs_dir, remaining, report, on_trial, timings) -> None:
    """Keep every worker busy; tell Optuna each result as it lands.

    A free worker gets its next candidate right after Optuna is told, before the progress line and the MLflow
    logging: those run while the workers compute, so they never hold a worker idle."""
    in_flight: dict = {}  # ray ref -> (trial, started)
    # Samplers (NSGA-II's crossover especially) propose knobs already evaluated; the result is reused, not
    # rebuilt. Keyed per driver: the same spec, so the same budget, seed, dataset and target.
    results: dict[str, tuple[int, CandidateResult]] = {}
    told: list[tuple[object, int, str]] = []  # (trial, finished count, note) told to Optuna, not yet published
    submitted = finished = 0
    started_all = time.perf_counter()
    landed = None  # when the last result came back: a worker is free from then until its next candidate is sent

    def tell(trial, result: CandidateResult | None, note: str) -> None:
        """Record a finished candidate, or a failure when ``result`` is None (``note`` says why)."""
        nonlocal finished
        with _timed(timings, "optuna"):
            if result is None:
                record_failure(study, trial, note)
            else:
                record_result(study, trial, spec, result)
        finished += 1
        told.append((trial, finished, note))

    def publish() -> None:
        """Progress lines and MLflow logging for what Optuna was told since the last call."""
        for trial, count, note in told:
            with _timed(timings, "optuna"):
                row = Row.from_trial(study._storage.get_trial(trial._trial_id))
                hv = front_hypervolume(feasible_front(rows(study)), spec) if row.state == "COMPLETE" else None
            if hv is None:
                report(f"[{count}/{remaining}] trial {row.number}: FAILED - {note}  "
                       f"ETA {_eta(count, remaining, started_all)}")
            else:
                report(_progress_line(row, count, remaining, started_all) + f"  HV {hv:.4g}{note}")
        if told and on_trial:
            with _timed(timings, "logging"):
                on_trial()
        told.clear()

    while True:
        while len(in_flight) < spec.workers and submitted < remaining:
            with _timed(timings, "optuna"):
                trial = study.ask()
                candidate = suggest_candidate(trial, spec)
            submitted += 1
            if candidate.key() in results:
                number, result = results[candidate.key()]
                trial.set_user_attr("reused_from_trial", number)
                tell(trial, result, f"  (same knobs as trial {number}: result reused)")
                continue
            ref = task.remote(_as_dict(candidate), spec.dataset, spec.target, str(Path(runs_dir).resolve()),
                              THREADS_PER_WORKER)
            in_flight[ref] = (trial, time.perf_counter())
            if landed is not None:
                timings["dispatch"] += time.perf_counter() - landed
                timings["dispatches"] += 1
                landed = None
        publish()
        if finished >= remaining:
            return
        wait = None
        if spec.timeout_s:
            now = time.perf_counter()
            wait = max(0.1, min(started + spec.timeout_s - now for _, started in in_flight.values()))
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait)
        if not ready:  # the oldest candidate(s) went over the per-candidate time limit
            now = time.perf_counter()
            for ref, (trial, started) in list(in_flight.items()):
                if now - started >= spec.timeout_s:
                    ray.cancel(ref, force=True)
                    del in_flight[ref]
                    tell(trial, None, f"timeout: exceeded the per-candidate limit of {spec.timeout_s} s")
            continue
        ref = ready[0]
        landed = time.perf_counter()
        trial, _ = in_flight.pop(ref)
        try:
            result = CandidateResult.from_dict(ray.get(ref))
        except Exception as exc:
            tell(trial, None, _failure_reason(exc))
        else:
            results.setdefault(result.candidate.key(), (trial.number, result))
            tell(trial, result, "")


def _as_dict(candidate: Candidate) -> dict:
    return dataclasses.asdict(candidate)


def _failure_reason(exc: Exception) -> str:
    """One line saying why a candidate failed, whether it raised or its worker died."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, CandidateError):
        return str(cause)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    name = type(exc).__name__
    if "WorkerCrashed" in name or "ActorDied" in name or "NodeDied" in name or "OutOfMemory" in name:
        return f"worker died: {name}"
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return text[-1] if text else name


def _eta(finished: int, remaining: int, started: float) -> str:
    elapsed = time.perf_counter() - started
    left = elapsed / finished * (remaining - finished) if finished else 0
    return f"{int(left // 60)}m{int(left % 60):02d}s"


def _progress_line(row: Row, finished: int, remaining: int, started: float) -> str:
    k = row.knobs
    return (f"[{finished}/{remaining}] trial {row.number}: {k['precision']:<8} w={k['width']:<5g} "
            f"s={k['sparsity']:<4g}{k['pruning'][0]} T={k['temperature']:<4g} a={k['alpha']:<4g} -> "
            f"acc {row.value('accuracy'):.3f}, {row.value('latency_ms_median'):.4f} ms "
            f"({row.metrics['latency_ms_median'][2]}), {row.value('size_bytes') / 1024:.1f} KiB, "
            f"{'feasible' if row.feasible else 'over budget'}  ETA {_eta(finished, remaining, started)}")
