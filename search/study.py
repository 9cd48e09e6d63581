"""The Optuna side of a search: storage, sampler, search space, results and the front.

Only this module (with ``workers``) knows Optuna; the pipeline sees Candidates.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import psutil
from optuna.trial import FrozenTrial, TrialState

from objectives.accuracy import at_chance, chance_shortfall
from objectives.pareto import OBJECTIVES, non_dominated, normalised_hypervolume, objectives
from search.candidate import Candidate, CandidateResult
from search.errors import ConfigError, SearchNotFoundError, first_line
from search.spec import SearchSpec, input_files

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPEC_ATTR = "edgesearch_spec"
REQUEUED_ATTR = "requeued"
BOUNDS_ATTR = "hv_bounds"  # [latency ms, size bytes, energy mJ]: the unit box of the normalised hypervolume
WIDEST_MARGIN = 1.1  # a bound taken from the widest model lies this far beyond it, so that model adds volume too
TEACHER_ATTR = "teacher"  # the distillation teacher's validation scores: {"accuracy", "balanced_accuracy", ...}
FLOOR_ATTR = "accuracy_floor"  # {"value", "baseline", "max_drop"} when the search has an accuracy floor
# 1/K when the dataset's classes are imbalanced (absent otherwise): the balanced accuracy of a model that learned
# nothing, which the search's lines and tables then show beside accuracy
CHANCE_ATTR = "chance_balanced_accuracy"
EMULATOR_ATTR = "emulator"  # which factors emulate an emulated target's figures, in words (a model card says them)
EMULATOR_FACTORS_ATTR = "emulator_factors"  # and the factors themselves (None: the profile's own), for a resume
CLASSES_ATTR = "classes"  # K, the dataset's number of classes: a trial at 1/K balanced accuracy learned nothing
SAMPLER_ATTR = "sampler_resolved"
DATA_ATTR = "dataset_content"  # the dataset's content digest when the search started: what its figures hold for
FINISHED_STATES = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
# Optuna's guidance: NSGA-II needs 100+ trials (its first generation is random); TPE is model-guided far sooner.
NSGA2_FROM_TRIALS = 100
WIDTH_STEP = 0.25  # the width knob's grid

# The classic optimisation guide's single-technique recipes: one technique applied to the plain fp32, width-1 model.
PLAIN = {"precision": "fp32", "pruning": "unstructured", "sparsity": 0.0, "temperature": 1.0, "alpha": 1.0,
         "width": 1.0}
RECIPES: dict[str, dict[str, Any]] = {
    "fp16 only": {"precision": "fp16"},
    "int8 post-training only": {"precision": "int8-ptq"},
    "int8 quantisation-aware only": {"precision": "int8-qat"},
    "50% pruning": {"sparsity": 0.5},
    "90% pruning": {"sparsity": 0.9},
    "distillation into width 0.5": {"width": 0.5, "temperature": 4.0, "alpha": 0.5},
    "width 0.5 only": {"width": 0.5},
}


def shown_url(url: str) -> str:
    """A storage or MLflow tracking URL as printed: its password hidden, since terminal output ends up in logs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def default_storage(runs_dir: Path) -> str:
    runs_dir = Path(runs_dir).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{runs_dir / 'optuna.db'}"


def recipes_for(spec: SearchSpec) -> list[tuple[str, dict[str, Any]]]:
    """The recipes whose every knob lies in the search space, as full parameter sets, at most ``spec.trials``."""
    if not spec.recipes:
        return []
    s = spec.space
    # the guide prunes weights (unstructured); where the target's space has only channel pruning, that is the one
    mode = "unstructured" if "unstructured" in s.pruning else s.pruning[0]
    out = []
    for label, change in RECIPES.items():
        params = {**PLAIN, "pruning": mode, **change}
        if params["sparsity"] > 0 and mode != "unstructured":
            label = f"{label} ({mode})"
        fits = params["precision"] in s.precision and params["pruning"] in s.pruning and all(
            getattr(s, k)[0] <= params[k] <= getattr(s, k)[1] for k in ("sparsity", "temperature", "alpha", "width"))
        if fits:
            out.append((label, params))
    return out[: spec.trials]


def queued_without_distillation(study: optuna.Study, spec: SearchSpec, remaining: float) -> int:
    """How many queued trials (the recipes) fill the ``remaining`` budget with no distilling candidate among them,
    or 0 when a distilling candidate may come (one is queued, the sampler gets trials, or halving frees budget).

    Then the distillation teacher is not worth training before the first trial: a recipe screened out is queued
    again one width narrower, so the sampler asks for a candidate only where that cannot be done."""
    if spec.uses_halving:
        return 0
    waiting = [t.system_attrs.get("fixed_params", {})
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))]
    if len(waiting) < remaining or any(params.get("alpha", 1.0) < 1 for params in waiting):
        return 0
    return len(waiting)


def narrower_recipe(label: str, knobs: dict[str, Any], spec: SearchSpec) -> tuple[str, dict[str, Any]] | None:
    """A recipe screened out on the target, one width step narrower: the guide's technique on a model that can fit.

    A recipe the budget rules out teaches the sampler only where the budget lies; the same technique on the widest
    network that fits is the informative start-up point the recipe was meant to be. None when no narrower width is
    left in the space (or recipes are off)."""
    width = round(knobs["width"] - WIDTH_STEP, 4)
    if not spec.recipes or width < spec.space.width[0] - 1e-9:
        return None
    base = label.split(", width ")[0]
    return f"{base}, width {width:g}", {**knobs, "width": width}


def resolved_sampler(spec: SearchSpec) -> str:
    if spec.sampler != "auto":
        return spec.sampler
    return "nsga2" if spec.trials >= NSGA2_FROM_TRIALS else "tpe"


def make_sampler(spec: SearchSpec, drawn: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler ``spec`` asks for; ``auto`` follows the trial count (see ``resolved_sampler``). A resume passes
    the trials already ``drawn``: seeded as at the start, a sampler's random draws would repeat the first run's,
    and its first new trials would be earlier knobs again (a reused result that spends a trial of the budget)."""
    name, seed = resolved_sampler(spec), (spec.seed + drawn) % 2**32
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, spec.trials // 2)))
    if name == "tpe":
        # Few random start-up trials: the recipes are informative start-up points already, and TPE counts
        # screened-out (pruned, infeasible) trials too. The constant liar keeps parallel workers apart.
        startup = len(recipes_for(spec)) + 2 if spec.recipes else max(4, min(10, spec.trials // 4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=spec.workers > 1,
                                              n_startup_trials=min(startup, spec.trials))
    return optuna.samplers.RandomSampler(seed=seed)


_SERVER_STORAGES: dict[str, optuna.storages.RDBStorage] = {}  # one per database server URL in this process


def _storage(url: str, attempts: int = 3) -> optuna.storages.BaseStorage:
    """Open an RDB storage. Two searches starting at once on a new database race in its first-time schema
    creation: for SQLite a file lock serialises it; a server database (PostgreSQL) has no file to lock, so a failed
    open is tried again once the other search's schema is in place.

    A server database's storage is opened once per process: each one keeps a pool of connections until it is
    garbage-collected, and a process that looks a search up again and again (a poll, a notebook) held enough of them
    to leave other users' searches none (PostgreSQL allows 100 by default). A pooled connection is checked before use,
    so a server restarted since still works."""
    import random
    import time
    from contextlib import nullcontext

    from filelock import FileLock

    if "://" not in url:  # a file's path, as a user may give it
        raise ConfigError(f"The Optuna storage {url!r} is not a database URL: pass sqlite:///"
                          f"{Path(url).expanduser().resolve()} for a file, or postgresql://USER@HOST:5432/DB.")
    server = not url.startswith("sqlite")
    if server and url in _SERVER_STORAGES:
        return _SERVER_STORAGES[url]
    lock = nullcontext()
    if url.startswith("sqlite:///"):
        lock = FileLock(url[len("sqlite:///"):] + ".lock")
    for attempt in range(attempts):
        try:
            with lock:
                if not server:
                    return optuna.storages.RDBStorage(url, heartbeat_interval=None)
                opened = optuna.storages.RDBStorage(url, heartbeat_interval=None,
                                                    engine_kwargs={"pool_pre_ping": True})
                return _SERVER_STORAGES.setdefault(url, opened)
        except Exception as exc:
            if attempt + 1 < attempts and server:
                time.sleep(1 + random.random())
                continue
            raise ConfigError(f"Cannot open the Optuna storage '{shown_url(url)}': {first_line(exc)}") from exc


def _holds(storage: optuna.storages.BaseStorage, name: str) -> bool:
    """Whether ``storage`` holds a study ``name``: one lookup by name, not every study's summary."""
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def refuse_existing(name: str, storage_url: str, storage=None) -> None:
    """Refuse a new search under a name the store already holds."""
    storage = storage or _storage(storage_url)
    if _holds(storage, name):
        own = SPEC_ATTR in storage.get_study_user_attrs(storage.get_study_id_from_name(name))
        raise ConfigError(f"A search named {name!r} already exists in {shown_url(storage_url)}; pass --resume to "
                          "continue it or choose another --name." if own else
                          f"The Optuna storage {shown_url(storage_url)} holds a study {name!r} of another tool; "
                          "choose another --name.")


def create_study(spec: SearchSpec, storage_url: str, resume: bool) -> optuna.Study:
    """A new study for ``spec.name``, or the stored one with ``resume``; never silently both."""
    storage = _storage(storage_url)
    if not resume:
        refuse_existing(spec.name, storage_url, storage)
    elif not _holds(storage, spec.name):
        raise SearchNotFoundError(f"No search named {spec.name!r} in {shown_url(storage_url)} to resume.")
    study = optuna.create_study(
        study_name=spec.name, storage=storage, sampler=make_sampler(spec), load_if_exists=resume,
        directions=[d for _, d in OBJECTIVES],  # the same whatever the accuracy metric
    )
    study.set_user_attr(SPEC_ATTR, spec.to_dict())  # a resume's changes too (trials, workers, ...): status reads it
    if resume:
        study.sampler = make_sampler(spec, drawn=len(study.get_trials(deepcopy=False)))
    else:
        study.set_user_attr(SAMPLER_ATTR, resolved_sampler(spec))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([n for n, _ in objectives(spec.metric)])
        for label, params in recipes_for(spec):  # the first trials, in this order
            study.enqueue_trial(params, user_attrs={"recipe": label})
    return study


def stored_searches(storage_url: str) -> list[tuple[optuna.study.StudySummary, optuna.Study]]:
    """Every search in a storage with its study, oldest first, from one connection and one summary query (a
    ``load_study`` per search would re-read every summary). A storage that cannot be opened is a clear error."""
    storage = _storage(storage_url)
    summaries = sorted(optuna.get_all_study_summaries(storage),  # those with no trial started yet go last
                       key=lambda s: (s.datetime_start is None, s.datetime_start or datetime.min))
    return [(s, optuna.load_study(study_name=s.study_name, storage=storage)) for s in summaries]


def load_study(name: str, storage_url: str) -> optuna.Study:
    storage = _storage(storage_url)
    if not _holds(storage, name):  # the names are listed only for the error
        known = ", ".join(sorted(s.study_name for s in optuna.get_all_study_summaries(storage))) or "none yet"
        raise SearchNotFoundError(f"No search named {name!r} in {shown_url(storage_url)} (searches: {known}).")
    study = optuna.load_study(study_name=name, storage=storage)
    if SPEC_ATTR not in study.user_attrs:  # a shared storage's study of another tool: not read, resumed nor deleted
        raise SearchNotFoundError(f"The study {name!r} in {shown_url(storage_url)} was not made by edgesearch (it "
                                  "has no search spec); edgesearch leaves it alone: use Optuna for it.")
    return study


def check_same_data(study: optuna.Study, spec: SearchSpec, data, then: str) -> None:
    """Refuse to ``then`` (resume, export) a search whose dataset file changed since it started: its trials were
    trained and measured on the data as it was (a regenerated archive made an export fail its accuracy check
    with figures only)."""
    recorded, now = study.user_attrs.get(DATA_ATTR), data.content_digest()
    searched = (study.user_attrs.get(SPEC_ATTR) or {}).get("dataset", spec.dataset)
    if recorded and recorded != now and searched != spec.dataset:
        raise ConfigError(f"Dataset {spec.dataset} is not the data search {spec.name!r} ran on ({searched}; content "
                          f"{now} here, {recorded} then). Pass a copy of that file, or start a new search on this "
                          "data.")
    if recorded and recorded != now:
        raise ConfigError(f"Dataset {spec.dataset} has changed since search {spec.name!r} started (content {now} "
                          f"now, {recorded} then): its trials were trained and measured on the data as it was. "
                          f"Restore that file to {then}, or start a new search on the new data.")


def check_same_cpu(study: optuna.Study, spec: SearchSpec, cpu) -> None:
    """Refuse to resume a search whose latencies were measured on a CPU of another kind than ``cpu`` (this machine's,
    a ``HostCPU``): the resumed trials would be timed here, and one front would mix two CPUs' figures. A runs folder
    carried to another machine made this one command away."""
    timed = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        where = trial.user_attrs.get("host_cpu") or {}
        if trial.user_attrs.get("provenance") == "measured" and where.get("key"):
            timed.setdefault(where["key"], where.get("model", "?"))
    others = {key: model for key, model in timed.items() if key != cpu.key}
    if others:
        kinds = ", ".join(f"{model} (CPU kind {key})" for key, model in others.items())
        raise ConfigError(f"Search {spec.name!r} measured its latencies on {kinds}; this machine is {cpu.model} (CPU "
                          f"kind {cpu.key}), and trials timed here would not compare with those in one front. Resume "
                          "it on a machine of that kind, or start a new search here (the finished trials stay "
                          "stored).")


def check_same_emulator(study: optuna.Study, spec: SearchSpec, words: str, factors: dict | None) -> None:
    """Refuse to resume a search whose figures were emulated with other factors than those its runs folder holds
    now (``calibrate`` ran since, or the folder was carried without its calibration/): one front would mix two
    device models' figures."""
    if EMULATOR_FACTORS_ATTR not in study.user_attrs or study.user_attrs[EMULATOR_FACTORS_ATTR] == factors:
        return
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        return
    raise ConfigError(f"Search {spec.name!r} emulated its figures for {spec.target} with "
                      f"{study.user_attrs.get(EMULATOR_ATTR)}; its runs folder now emulates that board with {words}, "
                      "and trials emulated now would not compare with those in one front. Put back the calibration "
                      "file it ran with (calibration/ under the runs folder), or start a new search (the finished "
                      "trials stay stored).")


def stored_spec(study: optuna.Study, runs_dir: Path | None = None) -> SearchSpec:
    """The spec a search was started with; with ``runs_dir``, the inputs it kept there (--keep-inputs) are named
    where they are now (``found_under``)."""
    data = dict(study.user_attrs[SPEC_ATTR])
    data.pop("reference_point", None)  # stored by searches from before the hypervolume was normalised
    spec = SearchSpec.from_dict(data)
    if runs_dir is None:
        return spec
    moved = {field: str(found_under(path, runs_dir)) for field, path in input_files(spec).items()}
    return dataclasses.replace(spec, **{field: path for field, path in moved.items() if path != str(data[field])})


def knob_names(spec: SearchSpec) -> set[str]:
    """The parameters ``suggest_candidate`` asks Optuna for under ``spec`` (a fixed range is not asked)."""
    s = spec.space
    return {"precision", "pruning"} | {n for n in ("sparsity", "temperature", "alpha", "width")
                                       if getattr(s, n)[0] != getattr(s, n)[1]}


def requeue_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING by a driver that died: mark them failed and enqueue their knobs again.

    A driver killed while it was drawing a trial's knobs leaves some of them undrawn; that candidate never
    started, and its partial knobs are not worth re-running (the search draws a new one instead)."""
    count = 0
    names = knob_names(stored_spec(study))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        drawn = set(t.params) >= names
        study._storage.set_trial_user_attr(t._trial_id, REQUEUED_ATTR, True)
        study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted: the driver stopped while it ran" if drawn
                                           else "interrupted before its knobs were drawn; not re-run")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if drawn:
            recipe = t.user_attrs.get("recipe")
            study.enqueue_trial(t.params, skip_if_exists=False, user_attrs={"recipe": recipe} if recipe else None)
        count += 1
    return count


def settle_stopped(study: optuna.Study) -> None:
    """What a driver that stops leaves in storage: its running trials queued again, a shipping stage marked stopped.

    The signal that stopped it can have cut a storage commit short and left that connection, transaction open, in
    the pool: SQLite then refuses every other writer ("database is locked"). Closing the pooled connections ends
    that transaction; a search still running in this process opens new ones as it needs them."""
    engine = getattr(getattr(study._storage, "_backend", study._storage), "engine", None)
    for attempt in range(2):
        if engine is not None:
            engine.dispose()
        try:
            requeue_interrupted(study)
            if study.user_attrs.get(SHIPPING_ATTR) == "running":
                study.set_user_attr(SHIPPING_ATTR, "stopped")
            return
        except Exception:
            if attempt:
                raise


HALVING_ETA = 3  # successive halving: a third of the epochs at the first rung, the best third goes on
ASKS_PER_TRIAL = 5  # at most this many candidates asked per trial of budget (screened ones cost nothing)
ASKED_OUT_ATTR = "asked_out"  # candidates asked by a driver that stopped at ASKS_PER_TRIAL, most screened out


DRIVER_ATTR = "driver"  # {"host", "pid", "started", "seen"} while a driver runs the search; None once it ended
STAGE_ATTR = "stage"  # what a driver does before the first trial (training the teacher, ...) while it does it
RUNNING_STAGE_ATTR = "running_stage"  # of a trial: the pipeline stage its worker posted last (``StageBoard``)
# what a running trial's stage is called where people read it
STAGE_WORDS = {"screen": "screening", "teacher": "training the teacher", "train": "training",
               "distill": "training (distilling)", "prune": "pruning", "quantize": "quantisation-aware fine-tuning",
               "export": "exporting", "convert": "converting to TFLite Micro", "compile": "compiling",
               "measure": "timing", "accuracy": "measuring accuracy"}
DRIVER_BEAT_S = 30.0
DRIVER_LOST_S = 180.0  # no beat for this long: the driver was killed outright, or its machine went down
CLAIM_SETTLE_S = 1.0  # two resumes that both found no driver: each writes its mark, the later one stands


def _driver_mark() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time(),
            "seen": time.time()}


@contextmanager
def driving(study: optuna.Study, claim: bool = False):
    """Mark ``study`` as run by this process while the block runs, renewed every ``DRIVER_BEAT_S`` from a thread
    (a shipping stage's tuning holds the driver for minutes): ``status`` can then tell a search whose driver was
    killed outright from one still running. With ``claim`` (a resume) a search another driver runs is refused, also
    when two resumes start at once."""
    mark = _driver_mark()
    if claim:
        refuse_second_driver(study)
    study.set_user_attr(DRIVER_ATTR, mark)
    if claim:
        time.sleep(CLAIM_SETTLE_S)
        if study.user_attrs.get(DRIVER_ATTR) != mark:
            refuse_second_driver(study)
            study.set_user_attr(DRIVER_ATTR, mark)  # the other one has already gone
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(DRIVER_BEAT_S):
            with suppress(Exception):  # a storage hiccup: the next beat tries again
                study.set_user_attr(DRIVER_ATTR, {**mark, "seen": time.time()})

    thread = threading.Thread(target=beat, name="edgesearch-driver-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        with suppress(Exception):
            study.set_user_attr(DRIVER_ATTR, None)


def live_driver(study: optuna.Study) -> dict[str, Any] | None:
    """The driver running ``study``, or None. On its own machine a driver is alive while its process is; seen from
    another, while it beat within ``DRIVER_LOST_S`` (so clocks must agree to within about that)."""
    return _alive(study.user_attrs.get(DRIVER_ATTR))


def _alive(mark: dict[str, Any] | None) -> dict[str, Any] | None:
    if not mark or time.time() - mark["seen"] > DRIVER_LOST_S:
        return None
    if mark["host"] == socket.gethostname():
        try:
            started = psutil.Process(mark["pid"]).create_time()
        except psutil.NoSuchProcess:
            return None
        except psutil.AccessDenied:  # another user's process: it exists
            return mark
        if "started" in mark and abs(started - mark["started"]) > 1.0:
            return None  # the pid was reused by a process started after the driver died
    return mark


def refuse_second_driver(study: optuna.Study) -> None:
    """A resume while the search's driver still runs would re-queue the trials that driver is running."""
    mark = live_driver(study)
    if mark and mark["pid"] != os.getpid():
        raise ConfigError(f"Search {study.study_name!r} is still running (driver process {mark['pid']} on "
                          f"{mark['host']}, seen {max(0, time.time() - mark['seen']):.0f} s ago); wait for it to end "
                          "or stop it (Ctrl-C in its terminal, or edgesearch stop for a detached search) before "
                          "resuming it.")


def shipping_left(study: optuna.Study, spec: SearchSpec, profile=None) -> bool:
    """Whether the shipping stage has candidates left to time: the search's target (``profile``, loaded if not
    given) is timed on this kind of host, the stage has a budget, and it never ended (stopped, or its driver stopped
    before it began). A profile file since moved or broken cannot tell: then it is not said to be left."""
    if spec.budget.front_tuning_minutes <= 0 or study.user_attrs.get(SHIPPING_ATTR) == "done":
        return False
    if profile is None:
        from hardware_targets.errors import ProfileError
        from hardware_targets.profile import load_profile

        try:
            profile = load_profile(spec.target)
        except ProfileError:
            return False
    return profile.backend == "local" and bool(stage_picks(study, spec.latency_budget_ms))


def clock(seconds: float) -> str:
    """A duration as 3m07s, as progress lines give it."""
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def running_trials(study: optuna.Study) -> str:
    """The trials out now, each with its main knobs and how long since it was drawn, for another terminal than the
    driver's: with several minutes of training and tuning per candidate, a count alone does not say whether any
    moves. Empty when none is out."""
    now = datetime.now()  # Optuna stamps trials in local time
    out = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        k = trial.params
        knobs = " ".join(f"{short}={k[name]:g}" for name, short in (("width", "w"), ("sparsity", "s"))
                         if isinstance(k.get(name), (int, float)))
        knobs = " ".join(filter(None, (k.get("precision"), knobs))) or "knobs not drawn yet"
        since = f" for {clock((now - trial.datetime_start).total_seconds())}" if trial.datetime_start else ""
        stage = trial.user_attrs.get(RUNNING_STAGE_ATTR)
        doing = f", {STAGE_WORDS.get(stage, stage)}" if stage else ""
        out.append(f"trial {trial.number} ({knobs}{doing}){since}")
    return ", ".join(out)


def search_state(study: optuna.Study, spec: SearchSpec) -> tuple[str, str]:
    """Where a stored search stands, as (state, detail): running (its driver is at work), stopped (short of its
    trial budget or of its shipping stage, with no driver running it) or done."""
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    attrs = study.user_attrs  # one read of the storage
    live = _alive(attrs.get(DRIVER_ATTR))
    driven = DRIVER_ATTR not in attrs or live  # searches from before the beat: trust them
    if driven and running:
        return "running", f"{running} trial(s) in progress"
    if driven and attrs.get(SHIPPING_ATTR) == "running":
        return "running", "its shipping stage is timing the front for what ships"
    if live:  # alive with no trial out: before the first (a teacher, a baseline) or between two
        return "running", attrs.get(STAGE_ATTR) or "its driver is between trials"
    lost = ""
    if running:
        seen = (attrs.get(DRIVER_ATTR) or {}).get("seen")
        lost = ("; its driver stopped without a word"
                + (f" (last seen {datetime.fromtimestamp(seen):%Y-%m-%d %H:%M:%S})" if seen else "")
                + f", so the {running} trial(s) it was running start again on a resume")
    spent = spent_budget(study)
    if spent < spec.trials and attrs.get(ASKED_OUT_ATTR) and not lost:
        return "stopped", (f"before its trial budget ({spent_text(spent)} of {spec.trials}): its driver stopped "
                           f"after {attrs[ASKED_OUT_ATTR]} candidates, {ASKS_PER_TRIAL} per trial of budget, as most "
                           "were screened out (a resume asks as many more per trial left; a looser budget or another "
                           "target leaves more that fit)")
    if spent < spec.trials:
        return "stopped", f"before its trial budget ({spent_text(spent)} of {spec.trials}){lost}"
    if shipping_left(study, spec):
        return "stopped", f"in its shipping stage (the front is not all timed for what ships){lost}"
    return "done", ""


def trial_cost(t: FrozenTrial) -> float:
    """What a finished trial spent of the search's budget, counted in fully trained candidates: screening out
    costs nothing, stopping at the first rung of halving a third, a promoted candidate a third more than one
    (it trained at both rungs). A repeat of earlier knobs and a failure count as one, so a sampler that keeps
    proposing them still ends."""
    if t.user_attrs.get(REQUEUED_ATTR):
        return 0.0
    if "reused_from_trial" in t.user_attrs:
        return 1.0
    stopped = str(t.user_attrs.get("stopped", ""))
    if stopped == "screened":
        return 0.0
    if stopped.startswith("the first rung"):
        return 1.0 / HALVING_ETA
    return 1.0 + 1.0 / HALVING_ETA if t.user_attrs.get("rung") == "full budget" else 1.0


def spent_budget(study: optuna.Study) -> float:
    """The budget the finished trials used (``trial_cost``); a search runs until it reaches ``spec.trials``."""
    return sum(trial_cost(t) for t in study.get_trials(deepcopy=False, states=FINISHED_STATES))


def spent_text(spent: float) -> str:
    """Spent budget as shown everywhere: a trial stopped by halving costs a third, so tenths are enough."""
    return f"{round(spent, 1):g}"


def finished_count(study: optuna.Study) -> int:
    """Trials finished, re-queued ones left out."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED_STATES)
               if not t.user_attrs.get(REQUEUED_ATTR))


def suggest_candidate(trial: optuna.trial.BaseTrial, spec: SearchSpec) -> Candidate:
    s = spec.space

    def num(name: str, lo_hi: tuple[float, float], step: float) -> float:
        lo, hi = lo_hi
        if lo == hi:
            return lo
        return trial.suggest_float(name, lo, hi, step=step if (hi - lo) >= step else None)

    return Candidate(
        precision=trial.suggest_categorical("precision", list(s.precision)),
        pruning=trial.suggest_categorical("pruning", list(s.pruning)),
        sparsity=round(num("sparsity", s.sparsity, 0.05), 4),
        temperature=round(num("temperature", s.temperature, 0.5), 4),
        alpha=round(num("alpha", s.alpha, 0.1), 4),
        width=round(num("width", s.width, WIDTH_STEP), 4),
        budget=spec.budget,
        seed=spec.seed,
    )


def _set_metrics(trial: optuna.Trial, metrics: dict[str, tuple[float, str, str]]) -> None:
    for name, (value, unit, provenance) in metrics.items():
        trial.set_user_attr(f"metric:{name}", [value, unit, provenance])


def _set_limits(trial: optuna.Trial, spec: SearchSpec, metrics: dict, limits: dict | None) -> None:
    """The latency budget (judged on the p90) and the target's RAM and flash limits, as constraints relative to
    each limit (0.5: half over it). TPE and NSGA-II rank infeasible trials by the sum of their violations, so the
    terms must be comparable: in ms and bytes, a RAM overflow outweighed any latency and a latency overrun any
    accuracy shortfall, whatever their size."""
    trial.set_constraint("latency_budget", metrics["latency_ms_p90"][0] / spec.latency_budget_ms - 1)
    for name, limit in (limits or {}).items():
        if limit and name in metrics:
            trial.set_constraint(f"fits_{name.split('_')[0]}", metrics[name][0] / limit - 1)


def _metric_tuples(result: CandidateResult) -> dict[str, tuple[float, str, str]]:
    return {n: (m.value, m.unit, m.provenance) for n, m in result.metrics.items()}


def record_result(study: optuna.Study, trial: optuna.Trial, spec: SearchSpec, result: CandidateResult,
                  stopped: str | None = None) -> None:
    """Tell Optuna the objectives, the constraints, and every metric with its provenance.

    With ``stopped`` (successive halving ended the candidate early) the trial is PRUNED: its figures are
    real but for a smaller training budget, so they inform the sampler without entering the front."""
    metrics = _metric_tuples(result)
    _set_limits(trial, spec, metrics, result.info.get("limits"))
    attrs = study.user_attrs
    floor = attrs.get(FLOOR_ATTR)
    if floor:
        trial.set_constraint("accuracy_floor", floor["value"] - result.value(spec.metric))
    if attrs.get(CLASSES_ATTR) and "balanced_accuracy" in result.metrics:
        # a model no better than predicting one class does not do the task, however fast or small: it is kept off
        # the front (and the shipping stage's tuning), and the sampler learns to avoid what made it
        trial.set_constraint("above_chance", chance_shortfall(result.value("balanced_accuracy"),
                                                              1 / attrs[CLASSES_ATTR]))
    _set_metrics(trial, metrics)
    if result.info.get("teacher_scores") and TEACHER_ATTR not in study.user_attrs:  # trained inside this trial
        study.set_user_attr(TEACHER_ATTR, {**result.info["teacher_scores"], "metric": spec.metric})
    for key in ("provenance", "tuning", "rung", "retimed", "host_cpu", "teacher", "searched_runtime"):
        if result.info.get(key) is not None:
            trial.set_user_attr(key, result.info[key])
    trial.set_user_attr("stage_seconds", result.stage_seconds)
    trial.set_user_attr("artifacts", result.artifacts)
    trial.set_user_attr("candidate", json.loads(json.dumps(result.candidate.knobs())))
    trial.set_user_attr("candidate_key", result.candidate.key())
    if stopped:
        trial.set_user_attr("stopped", stopped)
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, [result.value(name) for name, _ in objectives(spec.metric)])


def record_screened(study: optuna.Study, trial: optuna.Trial, spec: SearchSpec, candidate: Candidate,
                    screening: dict[str, Any], note: str = "") -> None:
    """A candidate ruled out before training: PRUNED, with the figures of its untrained graph as constraints,
    so the sampler learns where the budget lies (TPE counts a pruned trial's violated constraint)."""
    metrics = {n: tuple(v) for n, v in screening["metrics"].items()}
    _set_limits(trial, spec, metrics, screening.get("limits"))
    _set_metrics(trial, metrics)
    trial.set_user_attr("candidate", json.loads(json.dumps(candidate.knobs())))
    trial.set_user_attr("candidate_key", candidate.key())
    trial.set_user_attr("stopped", "screened")
    trial.set_user_attr("screened_out", screening["reason"] + note)
    for name in ("latency_ms_median", "latency_ms_p90"):  # its timing: measured, emulated or estimated
        if name in metrics:
            trial.set_user_attr("provenance", metrics[name][2])
            break
    trial.set_user_attr("stage_seconds", {} if note else {"screen": screening.get("seconds", 0.0)})
    study.tell(trial, state=TrialState.PRUNED)


def record_reuse(study: optuna.Study, trial: optuna.Trial, source: FrozenTrial) -> None:
    """The same knobs as ``source``, already finished: its outcome, marked as reused (never a second front point)."""
    for key, value in source.constraints.items():
        trial.set_constraint(key, value)
    for key, value in source.user_attrs.items():
        if key.startswith("metric:") or key in ("provenance", "artifacts", "tuning", "candidate", "candidate_key",
                                                "stopped", "screened_out", "rung", "retimed", "host_cpu"):
            trial.set_user_attr(key, value)
    trial.set_user_attr("stage_seconds", {})
    trial.set_user_attr("reused_from_trial", source.number)
    if source.state == TrialState.COMPLETE:
        study.tell(trial, list(source.values))
    else:
        study.tell(trial, state=TrialState.PRUNED)


def record_failure(study: optuna.Study, trial: optuna.Trial, error: str) -> None:
    trial.set_user_attr("error", error[:2000])
    study.tell(trial, state=TrialState.FAIL)


def reusable_trials(study: optuna.Study) -> dict[str, FrozenTrial]:
    """Finished trials by candidate key, first one wins: what a repeat of the same knobs reuses, across restarts."""
    out: dict[str, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        key = t.user_attrs.get("candidate_key")
        if key and "reused_from_trial" not in t.user_attrs:
            out.setdefault(key, t)
    return out


@dataclass(frozen=True)
class Row:
    """One finished trial, flattened for tables and logs."""

    number: int
    state: str
    knobs: dict[str, Any]
    metrics: dict[str, tuple[float, str, str]]
    feasible: bool
    error: str | None
    reused_from: int | None = None  # same knobs as this trial: its result, not a candidate of its own
    recipe: str | None = None
    stopped: str | None = None  # "screened", or the halving rung where training stopped
    shipped: dict | None = None  # the shipping stage's outcome (runtime, figures); its metrics replace the search's
    fits_but_latency: bool = False  # finished, and within every limit but the latency budget
    interrupted: bool = False  # running when its driver stopped (Ctrl-C, a dead driver); a resume re-runs its knobs
    violated: tuple[str, ...] = ()  # the constraints the trial's figures miss (CONSTRAINT_WORDS' keys)
    objective: str = "accuracy"  # the search's accuracy metric (``ACCURACY_METRICS``): what its front ranks by
    searched_runtime: str | None = None  # on a local target, the untuned runtime its search figures are from

    def value(self, name: str) -> float:
        return self.metrics[name][0]

    @property
    def quality(self) -> float:
        """The figure the search ranks by: validation accuracy, or balanced accuracy if the search said so."""
        return self.value(self.objective)

    def point(self) -> list[float]:
        """The trial's objective vector, in study order."""
        return [self.value(n) for n, _ in objectives(self.objective)]

    @classmethod
    def from_trial(cls, t: FrozenTrial, shipped: dict | None = None, objective: str = "accuracy") -> "Row":
        """A trial as stored; with ``shipped``, its figures after the shipping stage, the search's kept beside them
        as ``<name>_search`` and the constraints judged again on the shipped figures."""
        metrics = {k.split(":", 1)[1]: tuple(v) for k, v in t.user_attrs.items() if k.startswith("metric:")}
        constraints = dict(t.constraints)
        if shipped:
            for name, figure in shipped["metrics"].items():
                if name in metrics:
                    metrics[f"{name}_search"] = metrics[name]
                    for constraint, (kind, metric) in SHIPPED_CONSTRAINTS.items():
                        if (metric or objective) != name or constraint not in constraints:
                            continue
                        if kind == "relative":  # figure / limit - 1
                            constraints[constraint] = (constraints[constraint] + 1) * figure[0] / metrics[name][0] - 1
                        else:  # floor - accuracy
                            constraints[constraint] -= figure[0] - metrics[name][0]
                metrics[name] = tuple(figure)
        complete = t.state == TrialState.COMPLETE
        violated = tuple(k for k, c in constraints.items() if not c <= 0)  # a NaN violates
        feasible = complete and not violated
        others = complete and set(violated) <= {"latency_budget"}
        error = t.user_attrs.get("error") or t.user_attrs.get("screened_out")
        return cls(t.number, t.state.name, t.user_attrs.get("candidate", t.params), metrics, feasible, error,
                   t.user_attrs.get("reused_from_trial"), t.user_attrs.get("recipe"), t.user_attrs.get("stopped"),
                   shipped, others and not feasible, bool(t.user_attrs.get(REQUEUED_ATTR)), violated, objective,
                   t.user_attrs.get("searched_runtime"))

    def accuracy_text(self, chance: float | None = None, classes: int | None = None) -> str:
        """Validation accuracy; with its balanced accuracy on imbalanced classes (``chance`` = 1/K) or when the
        search ranks by it, and a model no better than always predicting one class called so: its plain accuracy
        is the largest class's share. On even classes (``classes`` = K given) a model at 1/K or below is called so
        too (int8 candidates of data int8 cannot read scored 0.31 of 3 classes, shown as any other figure)."""
        text = f"acc {self.value('accuracy'):.3f}"
        if chance is None and self.objective == "accuracy" and classes and "balanced_accuracy" in self.metrics:
            return text + (f" (no better than chance, 1/{classes})"
                           if at_chance(self.value("balanced_accuracy"), 1 / classes) else "")
        if (chance is None and self.objective == "accuracy") or "balanced_accuracy" not in self.metrics:
            return text
        balanced = self.value("balanced_accuracy")
        return text + f" (balanced {balanced:.3f}{', no better than chance' if at_chance(balanced, chance) else ''})"

    def infeasible_because(self) -> str:
        """Which constraints the trial misses, in words: what a user changes to let such a candidate through."""
        return ", ".join(CONSTRAINT_WORDS.get(name, name) for name in self.violated)


# a constraint's name as Optuna stores it, and what exceeding it means
CONSTRAINT_WORDS = {"latency_budget": "over the latency budget", "fits_ram": "over the RAM",
                    "fits_flash": "over the flash", "accuracy_floor": "below the accuracy floor",
                    "above_chance": "no better than chance"}


# constraints that a shipped figure changes: (kind, metric); latency_budget = p90 / budget - 1 (relative),
# accuracy_floor = floor - accuracy (a fraction already); None: the search's accuracy metric (``Row.objective``)
SHIPPED_CONSTRAINTS = {"latency_budget": ("relative", "latency_ms_p90"), "accuracy_floor": ("floor", None)}
SHIPPED_PREFIX = "shipped:"  # study attribute per trial number: what the shipping stage measured
SHIPPING_ATTR = "shipping_stage"  # "running" while the stage runs, "done" once it ended, "stopped" if its driver did


def stored_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """One trial by its number, read from storage (not the whole study's trials)."""
    storage = study._storage
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


def found_under(recorded: str | Path, runs_dir: Path | None) -> Path:
    """A path a search recorded (absolute, in its runs folder) where it is now: as recorded, else at its place under
    ``runs_dir``, for a runs folder moved or copied to another machine since."""
    path = Path(recorded)
    if path.exists() or runs_dir is None or not path.is_absolute():
        return path
    for start in range(1, len(path.parts) - 1):  # the longest tail first: runs/candidates/..., candidates/...
        moved = Path(runs_dir).resolve().joinpath(*path.parts[start:])
        if moved.exists():
            return moved
    return path


def trial_artifact(trial: FrozenTrial, kind: str, runs_dir: Path | None = None) -> Path | None:
    """Where a trial's ``kind`` artifact ("onnx", "tflite") is now (``found_under``); None if it recorded none."""
    recorded = (trial.user_attrs.get("artifacts") or {}).get(kind)
    return found_under(recorded, runs_dir) if recorded else None


def accuracy_metric(attrs: dict) -> str:
    """The accuracy metric a search ranks by, from its study's attributes (a search stored before it had one:
    plain accuracy)."""
    return (attrs.get(SPEC_ATTR) or {}).get("metric", "accuracy")


def rows(study: optuna.Study) -> list[Row]:
    attrs = study.user_attrs
    return [Row.from_trial(t, attrs.get(f"{SHIPPED_PREFIX}{t.number}"), accuracy_metric(attrs))
            for t in study.get_trials(deepcopy=False, states=FINISHED_STATES)]


SHIP_MARGIN = 1.5  # a candidate this much over the budget, or off the front, may still make it once tuned


def shipping_picks(all_rows: list[Row], budget_ms: float, margin: float = SHIP_MARGIN) -> list[Row]:
    """The candidates the shipping stage tunes and times, in order: the feasible front, most accurate first, then
    those within ``margin`` of it (over the budget by at most ``margin``, or dominated only until their latency is
    divided by it). Candidates already shipped are left out."""
    front = feasible_front(all_rows)
    on_front = {r.number for r in front}
    names, directions = [n for n, _ in OBJECTIVES], [d for _, d in OBJECTIVES]
    points = [r.point() for r in front]
    near = []
    for r in all_rows:
        if r.number in on_front or r.reused_from is not None or not (r.feasible or r.fits_but_latency):
            continue
        if r.value("latency_ms_p90") > margin * budget_ms:
            continue
        hoped = [v / (margin if n == "latency_ms_p90" else 1) for n, v in zip(names, r.point())]
        if len(points) in non_dominated(points + [hoped], directions):  # no front point dominates it
            near.append(r)
    ordered = sorted(front, key=lambda r: -r.quality) + sorted(near, key=lambda r: -r.quality)
    return [r for r in ordered if r.shipped is None]


def stage_picks(study: optuna.Study, budget_ms: float) -> list[Row]:
    """The shipping stage's first picks, chosen on the searched figures as when the stage began, less those shipped
    already: a resumed stage goes on with the candidates it had picked, not only with those that an untuned figure
    still puts near candidates shipped tuned."""
    attrs = study.user_attrs  # one read of the storage, not one per pick
    searched = [Row.from_trial(t, objective=accuracy_metric(attrs))
                for t in study.get_trials(deepcopy=False, states=FINISHED_STATES)]
    return [r for r in shipping_picks(searched, budget_ms) if f"{SHIPPED_PREFIX}{r.number}" not in attrs]


def shipping_order(study: optuna.Study, budget_ms: float, queue: list[Row],
                   report: Callable[[str], None]) -> Iterator[Row]:
    """The shipping stage's candidates in order: ``queue`` (the first picks), extended as it goes. Shipped figures
    re-rank the front, and a candidate that this brings on or near it (one ahead of it got slower) is shipped too,
    each at most once, also when its shipping failed."""
    tried, i = set(), 0
    while True:
        while i < len(queue):
            tried.add(queue[i].number)
            yield queue[i]
            i += 1
        more = [r for r in shipping_picks(rows(study), budget_ms) if r.number not in tried]
        if not more:
            return
        report(f"shipping stage: {len(more)} more candidate(s) came on or near the front as it was re-ranked")
        queue.extend(more)


def feasible_front(all_rows: list[Row]) -> list[Row]:
    """The feasible Pareto front, each candidate once: a reused result is its source trial's point."""
    feasible = [r for r in all_rows if r.feasible and r.reused_from is None]
    if not feasible:
        return []
    return [feasible[i] for i in non_dominated([r.point() for r in feasible], [d for _, d in OBJECTIVES])]


def search_bounds(study: optuna.Study, spec: SearchSpec) -> list[float]:
    """The unit box of the normalised hypervolume: [latency budget, size bound, energy bound].

    Fixed when the search starts (``set_bounds``) and stored with it; a search stored before that
    falls back to the largest figures among its own trials."""
    stored = study.user_attrs.get(BOUNDS_ATTR)
    if stored:
        return [float(v) for v in stored["values"]]
    done = [r for r in rows(study) if r.state == "COMPLETE"]
    size = max((r.value("size_bytes") for r in done), default=1.0)
    energy = max((r.value("energy_mj") for r in done), default=1.0)
    return [float(spec.latency_budget_ms), max(size, 1e-12), max(energy, 1e-12)]


def set_bounds(study: optuna.Study, spec: SearchSpec, size: float, energy: float, source: str) -> list[float]:
    bounds = [float(spec.latency_budget_ms), float(size), float(energy)]
    study.set_user_attr(BOUNDS_ATTR, {"values": bounds, "source": source})
    return bounds


def front_hypervolume(front: list[Row], bounds: list[float]) -> float:
    """Normalised hypervolume in [0, 1] (``objectives.pareto.normalised_hypervolume``)."""
    return normalised_hypervolume([r.point() for r in front], bounds)


def best_within_budget(all_rows: list[Row]) -> Row | None:
    feasible = [r for r in all_rows if r.feasible and r.reused_from is None]
    if not feasible:
        return None
    return min(feasible, key=lambda r: (-r.quality, r.value("latency_ms_p90"), r.value("size_bytes")))
