"""The ``edgesearch`` command line: parse, call the library, print.

Every ``EdgeSearchError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

from objectives.accuracy import at_chance
from objectives.pareto import ACCURACY_METRICS
from search.data import CLASS_WEIGHTS
from search.errors import ConfigError, EdgeSearchError, stopped_by_signals
from search.spec import HALVING_FROM_TRIALS, SearchSpec

DEFAULT_RUNS = Path(os.environ.get("EDGESEARCH_RUNS", "runs"))


def _print_result(result, args_runtime: str = "auto") -> None:
    c = result.candidate
    print(f"\ncandidate  {c.key()}  on {result.target} ({result.info['provenance']}), dataset {result.dataset}")
    print(f"{'metric':<28}{'value':>14}  {'unit':<9}provenance")
    for name, m in result.metrics.items():
        value = f"{m.value:,.0f}" if m.unit in ("bytes", "count") else f"{m.value:.4g}"
        print(f"{name:<28}{value:>14}  {m.unit:<9}{m.provenance}")
    from hardware_targets.compile import tuning_summary

    t = result.info.get("tuning")
    if t:  # a TVM build (a TFLite Micro profile ships a .tflite instead)
        print(f"tuning: {tuning_summary(t)}")
    if result.info.get("searched_runtime"):
        why = "the faster of untuned TVM and onnxruntime here" if args_runtime == "auto" else "--runtime"
        print(f"latency, energy and accuracy: {result.info['searched_runtime']} ({why}; tvm_latency_* and "
              "ort_latency_* give each)")
    total = sum(result.stage_seconds.values())
    print("stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in result.stage_seconds.items()) + f" (total {total:.1f})")
    print("artifacts: " + "\n           ".join(result.artifacts.values()))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hardware_targets import get_backend, load_profile
    from search.candidate import Budget, Candidate
    from search.data import load_dataset
    from search.pipeline import Paths, evaluate_candidate

    cores = os.cpu_count() or 1
    if not 1 <= args.threads <= cores:  # more threads than cores would time contention, not the model
        raise ConfigError(f"--threads must be between 1 and this machine's {cores} core(s). Got {args.threads} "
                          "instead.")
    profile = load_profile(args.target)
    budget = Budget(epochs=args.epochs, finetune_epochs=args.finetune_epochs, tuning_trials=args.tuning_trials,
                    timing_repeats=args.repeats, teacher_epochs=args.teacher_epochs)
    candidate = Candidate(precision=args.precision, sparsity=args.sparsity, pruning=args.pruning,
                          temperature=args.temperature, alpha=args.alpha, width=args.width, budget=budget,
                          seed=args.seed)
    dataset = load_dataset(args.dataset, args.class_weight)
    quiet = args.json

    def progress(stage: str, message: str) -> None:
        if not quiet:
            print(f"[{stage:>8}] {message}", flush=True)

    if not quiet:
        print(f"dataset {dataset.summary()}")
        if profile.backend == "emulated":
            from hardware_targets.calibration import emulator_for

            print(emulator_for(profile, args.runs_dir).line(args.target))
    # asked for by name, the candidate is built anyway; a search would leave it out of its space, for this reason
    # (a TFLite Micro target refuses such a precision outright, with its own error)
    arithmetic = profile.arithmetic_reason(candidate.precision) if profile.runtime != "tflite-micro" else None
    pruning = profile.pruning_reason(candidate.pruning) if candidate.sparsity else None
    for what, reason in ((candidate.precision, arithmetic), (f"{candidate.pruning} pruning", pruning)):
        if reason:
            print(f"note: {what} on {profile.name}: {reason}; a search leaves it out of its space",
                  file=sys.stderr if quiet else sys.stdout)
    if candidate.precision.startswith("int8") and (note := dataset.int8_input_note()):
        print(f"note: {note}", file=sys.stderr if quiet else sys.stdout)
    get_backend(profile, args.runs_dir).check()  # a board that is down, before the candidate is trained
    if profile.backend == "local":
        from search.workers import say_competing_load

        say_competing_load(lambda line: print(line, file=sys.stderr if quiet else sys.stdout), "this evaluation")
    result = evaluate_candidate(candidate, dataset, profile, Paths(args.runs_dir), threads=args.threads,
                                runtime=args.runtime, progress=progress)
    if args.json:
        print(result.to_json())
    else:
        _print_result(result, args.runtime)
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from search.pack import pack_folder, parse_size

    size = parse_size(args.size) if args.size else None
    with tqdm(unit=" files", desc=f"reading {args.folder}", disable=None, leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        packed = pack_folder(args.folder, args.out, size, args.grey, progress)
    stored = packed.path.stat().st_size
    first, second = packed.shape
    if packed.kind == "images":
        what = (f"{first}x{second} pixels, " + ("grey (1 channel)" if packed.channels == 1 else
                                                "RGB (3 channels, stored height x width x channel)")
                + ", 8-bit values 0-255 as decoded (a device feeds the model the same)")
    else:
        what = (f"windows of {first} samples x {second} channel(s)"
                + (f" ({', '.join(packed.channel_names)})" if packed.channel_names else "")
                + ", values as read (float32; a device feeds the model the same)"
                + (f"; column(s) {', '.join(packed.time_columns)} left out: a time, not a signal"
                   if packed.time_columns else ""))
    print(f"packed {packed.samples} {packed.kind if packed.kind == 'images' else 'signal windows'} of "
          f"{len(packed.classes)} classes into {packed.path} ("
          + (f"{stored / 1e6:.1f} MB" if stored >= 1e5 else f"{stored / 1e3:.0f} KB") + f"): {what}; "
          + (f"the folder's own splits ({', '.join(packed.splits)})" if packed.splits else
             "the test and validation splits drawn by each search (stratified, fixed seed)"))
    if packed.resized:
        print(f"resized to {first}x{second} (bilinear): {packed.resized} image(s) of another size")
    if packed.skipped:
        shown = ", ".join(packed.skipped[:4]) + (f" and {len(packed.skipped) - 4} more" if len(packed.skipped) > 4
                                                 else "")
        print(f"not read: {len(packed.skipped)} file(s), not data or not in a class folder ({shown})")
    print(f"dataset {packed.summary}")
    print(f"search it: edgesearch submit --dataset {shlex.quote(str(packed.path))} --target TARGET "
          "--latency-budget-ms MS")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from hardware_targets import available_profiles, load_profile

    def num(v, scale=1.0, fmt="{:g}"):
        return "-" if v is None else fmt.format(v / scale)

    print(f"{'target':<22}{'backend':<10}{'MHz':>6}{'cores':>6}  {'peak MAC/cycle fp32/fp16/int8':<30}"
          f"{'RAM KiB':>10}{'flash KiB':>11}{'power mW':>10}  provenance")
    skipping = []  # profiles whose kernels skip zero weights: the only ones whose searches prune unstructured
    for name in available_profiles():
        p = load_profile(name)
        if p.pruning_reason("unstructured") is None:
            skipping.append(name)
        peak = "/".join(num(p.peak_macs_per_cycle.get(k)) for k in ("fp32", "fp16", "int8")) \
            if p.peak_macs_per_cycle else "-"
        provenance = {"local": "measured", "remote": "measured (RPC)", "emulated": "emulated"}[p.backend]
        print(f"{p.name:<22}{p.backend:<10}{num(p.clock_mhz, 1, '{:.0f}'):>6}{num(p.cores):>6}  {peak:<30}"
              f"{num(p.sram_bytes, 1024, '{:,.0f}'):>10}{num(p.flash_bytes, 1024, '{:,.0f}'):>11}"
              f"{num(p.power_active_mw):>10}  {provenance}")
    from hardware_targets.host import cpu_kind_resource, host_cpu

    cpu, host = host_cpu(), load_profile("host")
    print(f"\nhost (detected, this machine): {cpu.model}, {cpu.cores} cores"
          + (f" at {cpu.mhz:.0f} MHz" if cpu.mhz else "") + f"; ISA {' '.join(cpu.isa) or 'none read'}; "
          f"CPU kind {cpu.key}")
    print(f"  as a Ray worker node for host searches: ray start ... --resources "
          f"'{{\"{cpu_kind_resource(cpu.key)}\": {cpu.cores}}}'")
    derived = cpu.peak_macs_per_cycle()  # a rate the flags give as 0 is the profile's software fallback
    print("  peak MAC/cycle per core: "
          + ", ".join(f"{k} {v:g}" + ("" if derived.get(k) else " (no native instructions: the profile's "
                                                                  "software figure, estimated)")
                      for k, v in (host.peak_macs_per_cycle or {}).items())
          + " (the rest derived from the ISA flags)"
          + f"; fp16 {'native' if host.supports('fp16') else 'not native (left out of host searches)'}; "
          f"active power {host.power_active_mw:g} mW per core (estimated, by CPU class)")
    print("  fp16 and int8: timed against fp32 of the same shapes on TVM and onnxruntime when a host search starts, "
          "and left out of the default space where neither runtime runs them faster than fp32 (TVM computes int8 "
          "QDQ graphs in float)")
    print("unstructured pruning is searched only where a profile's kernels skip zero weights "
          f"(unstructured_sparsity_speedup): {', '.join(skipping) or 'none of these'}; elsewhere channels are pruned")
    print("  what each sparsity lowers: removed channels (structured) lower latency, weights, RAM and energy on every "
          "target; zeroed weights (unstructured) lower latency only where kernels skip them, and otherwise only the "
          "gzip-compressed model file (every runtime here holds weights dense; export writes a .gz copy of each model "
          "file to send, and its model card gives both sizes)")
    from hardware_targets.calibration import emulator_for

    fitted = [(name, emulator.words) for name in available_profiles() if (p := load_profile(name)).backend == "emulated"
              and (emulator := emulator_for(p, args.runs_dir)).params is not None]
    print(f"emulated targets calibrated under {args.runs_dir} (searches with it apply the fit): "
          + ("; ".join(f"{name}, {words}" for name, words in fitted) if fitted else
             "none (edgesearch calibrate --target BOARD fits one to published results, or with --measured to your "
             "timings of it)"))
    print("\nsources of every figure: the comments in hardware_targets/profiles/*.yaml")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from hardware_targets import load_profile
    from search.calibrate import calibrate

    report = calibrate(load_profile(args.target), args.runs_dir, candidates=args.candidates, seed=args.seed,
                       measured=args.measured, progress=lambda line: print(line, flush=True))
    if report["kind"] == "board measurements":
        _print_board_fit(report, args.target)
    elif report["kind"] == "published references":
        print(f"\n{args.target} emulated against published MLPerf Tiny results (int8; energy at the board's "
              f"published power), aim: within {report['within']}x")
        print(f"{'task':<5}{'board':<15}{'engine':<16}{'published ms':>13}{'emulated ms':>13}{'ratio':>7}"
              f"{'held out':>9}{'published uJ':>14}{'emulated uJ':>13}{'ratio':>7}  within")
        for r in report["references"]:
            energy = (f"{r['published_uj']:>14,.0f}{r['emulated_uj']:>13,.0f}{r['energy_ratio']:>7.2f}"
                      if "energy_ratio" in r else f"{'-':>14}{'-':>13}{'-':>7}")
            print(f"{r['task']:<5}{r['board']:<15}{r['engine']:<16}{r['published_ms']:>13.4g}"
                  f"{r['emulated_ms']:>13.4g}{r['latency_ratio']:>7.2f}"
                  + (f"{r['held_out_ratio']:>9.2f}" if "held_out_ratio" in r else f"{'-':>9}")
                  + f"{energy}  {'yes' if r['within'] else 'NO'}"
                  + ("" if r.get("applied", True) else "  (fitted on its own, not applied)"))
        print("ratio: emulated / published; held out: the same, fitted without that reference")
        print(f"engine {report['engine']}, on the {report['train']} references it was fitted on: "
              f"{_errors_before_after(report)}; every reference within {report['within']}x: "
              f"{'yes' if report['all_within'] else 'no'}")
        print(LEAST_SQUARES_NOTE)
    else:
        print(f"emulator vs measured on {args.target}, on {report['held_out']} held-out candidates "
              f"({report['train']} fitted): {_errors_before_after(report)}")
    print(f"fitted factors written to {report['path']}" + (" (replacing any earlier fit)" if report["kind"] ==
                                                              "board measurements" else "")
          + f"; searches with {_runs_option(args)} apply them, and so do exports to {args.target} of a search made on "
          "another board")
    return 0


LEAST_SQUARES_NOTE = ("  (the fit minimises the squared relative errors: it weighs the largest most, and may raise the "
                      "median)")


def _print_board_fit(report: dict, target: str) -> None:
    """Each timing of the user's board against the emulator, before and after the fit and held out."""
    rows, energy = report["measurements"], report.get("energy_rows")
    width = max(len("model"), *(len(r["model"]) for r in rows))
    print(f"\n{target} emulated against your timings (emulated / measured: the ratio; held out: the same, "
          "fitted without that timing)")
    print(f"{'model':<{width}}  {'precision':<9}{'MHz':>6}{'measured ms':>13}{'profile ms':>12}{'fitted ms':>11}"
          f"{'ratio':>7}{'held out':>9}" + (f"{'measured uJ':>13}{'profile uJ':>12}{'fitted uJ':>11}{'ratio':>7}"
                                           f"{'held out':>9}" if energy else ""))
    for r in rows:
        uj = ""
        if energy:
            uj = (f"{r['measured_uj']:>13.4g}{r['emulated_uj_uncalibrated']:>12.4g}{r['emulated_uj']:>11.4g}"
                  f"{r['energy_ratio']:>7.2f}" if "measured_uj" in r else f"{'-':>13}{'-':>12}{'-':>11}{'-':>7}")
            uj += f"{r['energy_held_out_ratio']:>9.2f}" if "energy_held_out_ratio" in r else f"{'-':>9}"
        print(f"{r['model']:<{width}}  {r['precision']:<9}{r['clock_mhz']:>6g}{r['measured_ms']:>13.4g}"
              f"{r['emulated_ms_uncalibrated']:>12.4g}{r['emulated_ms']:>11.4g}{r['latency_ratio']:>7.2f}"
              + (f"{r['held_out_ratio']:>9.2f}" if "held_out_ratio" in r else f"{'-':>9}") + uj)
    print(f"fitted: {report['fitted']}" + (f", and the active power to the {energy} energy measurement(s)"
                                           if energy else "") + ": "
          + ", ".join(f"{name} {old:.3g} -> {new:.3g}" for name, (old, new) in report["factors"].items()))
    print(f"on these timings, {_errors_before_after(report)}")
    print(LEAST_SQUARES_NOTE)
    print("held out: " + (f"median absolute error {report['mape_held_out']:.1f}%, each timing predicted by a fit "
                          "made without it" if report["mape_held_out"] is not None else
                          "none (one timing: time at least two models to see how well the fit predicts another)"))


def _errors_before_after(report: dict) -> str:
    return (f"median absolute error {report['mape_uncalibrated']:.1f}% with the profile's own factors -> "
            f"{report['mape_calibrated']:.1f}% calibrated, largest {report['worst_uncalibrated']:.1f}% -> "
            f"{report['worst_calibrated']:.1f}%")


def _ships_as(r) -> str:
    """The runtime the shipping stage chose for a candidate; the one its search timed when it did not reach it
    (untuned TVM or onnxruntime); TFLite Micro on microcontroller profiles, whose .tflite is what the search
    measured."""
    if r.shipped:
        return r.shipped["option"]
    return "tflite-micro" if "tflm_arena_bytes" in r.metrics else f"{r.searched_runtime or 'tvm'} (searched)"


def _why_none(trained) -> str:
    """What the trained candidates missed, most often first, and how close they came: what to loosen."""
    from collections import Counter

    from search.study import CONSTRAINT_WORDS

    if not trained:
        return ""
    missed = Counter(name for r in trained for name in r.violated).most_common()
    metric = trained[0].objective
    best_words = "the most accurate" if metric == "accuracy" else f"the best {ACCURACY_METRICS[metric]}"
    counts = ", ".join(f"{n} {CONSTRAINT_WORDS.get(name, name)}" for name, n in missed)
    return (f": of {len(trained)} trained, {counts}"
            + f" ({best_words} {max(r.quality for r in trained):.4f}, the fastest "
            f"{min(r.value('latency_ms_p90') for r in trained):.4g} ms p90). Loosen what they miss most "
            "(--latency-budget-ms, --min-accuracy or --max-accuracy-drop, a target with more memory), or train "
            "longer (--epochs, --trials).")


# how far below the median candidate trained without distillation the teacher must score to be called weak: less is
# within what one seed's training moves a validation accuracy
WEAK_TEACHER_MARGIN = 0.02


def _weak_teacher(trained, teacher: dict | None) -> str:
    """A note when the distillation teacher scored below most candidates trained without it: distilling from it
    then pulls students toward a weaker model (on signals with a large offset the teacher reached 0.71 where
    students trained alone reached 1.00, and nothing said so). ``teacher`` is the study's stored scores."""
    metric = (teacher or {}).get("metric", "accuracy")
    alone = sorted(r.quality for r in trained if r.knobs["alpha"] >= 1.0)
    if teacher is None or teacher.get(metric) is None or not any(r.knobs["alpha"] < 1.0 for r in trained) \
            or len(alone) < 2 or teacher[metric] >= alone[len(alone) // 2] - WEAK_TEACHER_MARGIN:
        return ""
    from search.models import TEACHER_WIDTH  # torch: only when there is something to say
    from search.workers import TEACHER_ADVICE

    above = sum(q > teacher[metric] for q in alone)
    return (f"note: the distillation teacher (width {TEACHER_WIDTH:g}, {teacher.get('epochs', '?')} epochs) reached "
            f"validation {ACCURACY_METRICS[metric]} {teacher[metric]:.4f}, below {above} of the {len(alone)} "
            f"candidates trained without it (best {alone[-1]:.4f}): distilling from it pulls a student toward a "
            f"weaker model. {TEACHER_ADVICE}.")


def _print_outcome(outcome_rows, front, best, hv, spec, storage, floor=None, chance=None, teacher=None) -> None:
    """The search's end (and ``status``): counts, the front, the best candidate; ``chance`` (1/K, on imbalanced
    classes) adds balanced accuracy, since plain accuracy then rewards always predicting the largest class, as does
    a search that ranks by it; ``teacher``, the distillation teacher's stored scores, a note if it was weak."""
    from search.study import shown_url

    balanced_too = chance is not None or spec.metric == "balanced_accuracy"

    failed = [r for r in outcome_rows if r.state == "FAIL" and not r.interrupted]
    interrupted = sum(r.interrupted for r in outcome_rows)
    done = [r for r in outcome_rows if r.state == "COMPLETE" and r.reused_from is None]
    screened = [r for r in outcome_rows if r.stopped == "screened"]
    stopped = [r for r in outcome_rows if r.stopped and r.stopped != "screened"]
    reused = [r for r in outcome_rows if r.reused_from is not None]
    print(f"\nsearch {spec.name!r}: {len(done)} trained to the full budget, {len(screened)} screened out before "
          f"training, {len(stopped)} stopped early by successive halving, {len(reused)} reused an earlier result, "
          f"{len(failed)} failed" + (f", {interrupted} interrupted by a stopped driver (queued again for a resume)"
                                      if interrupted else "")
          + f"; latency budget {spec.latency_budget_ms} ms (p90) on {spec.target_name}"
          + (f"; accuracy floor {floor:.4f}" if floor is not None else ""))
    if not front:
        print("no feasible candidate yet (none within the latency budget, memory limits and accuracy floor)"
              + _why_none(done))
    else:
        print(f"\nfeasible Pareto front ({len(front)} candidate(s), each once):")
        print(f"{'trial':>5}  {'precision':<9}{'width':>6}{'sparsity':>9} {'pruning':<13}{'T':>5}{'alpha':>6}"
              f"{'accuracy':>10}" + (f"{'balanced':>10}" if balanced_too else "")
              + f"{'p90 ms':>10}{'size KiB':>10}  provenance  {'ships as':<24}recipe")
        for r in sorted(front, key=lambda r: r.value("latency_ms_p90")):
            k = r.knobs
            pruning = k["pruning"] if k["sparsity"] else "-"  # the mode drawn for an unpruned model means nothing
            print(f"{r.number:>5}  {k['precision']:<9}{k['width']:>6g}{k['sparsity']:>9g} {pruning:<13}"
                  f"{k['temperature']:>5g}{k['alpha']:>6g}{r.value('accuracy'):>10.4f}"
                  + (f"{r.metrics.get('balanced_accuracy', (float('nan'),))[0]:>10.4f}" if balanced_too else "")
                  + f"{r.value('latency_ms_p90'):>10.4f}{r.value('size_bytes') / 1024:>10.1f}  "
                  f"{r.metrics['latency_ms_p90'][2]:<10}  {_ships_as(r):<24}{r.recipe or '-'}")
    if best:
        balanced = ""
        if balanced_too and "balanced_accuracy_test" in best.metrics:
            value = best.value("balanced_accuracy")
            balanced = (f" (balanced {value:.4f} validation, {best.value('balanced_accuracy_test'):.4f} test"
                        + ("; no better than always predicting the largest class, which its plain accuracy "
                           "rewards on these imbalanced classes" if at_chance(value, chance) else "") + ")")
        print(f"\nbest within budget: trial {best.number}, validation accuracy {best.value('accuracy'):.4f}, "
              f"test accuracy {best.value('accuracy_test'):.4f}{balanced}, p90 {best.value('latency_ms_p90'):.4f} ms "
              f"({best.metrics['latency_ms_p90'][2]}), {best.value('size_bytes') / 1024:.1f} KiB")
    print(f"hypervolume of the feasible front: {hv:.4f} on a 0-1 scale ({ACCURACY_METRICS[spec.metric]}; latency / "
          "budget; size and energy / the search's bounds)")
    if note := _weak_teacher(done, teacher):
        print(note)
    for r in failed[-3:]:
        print(f"failed trial {r.number}: {r.error}")
    print(f"stored in {shown_url(storage)} (study {spec.name!r})")


def _spec_from_args(args: argparse.Namespace):
    from search.spec import SearchSpec, beside_spec_file, load_spec_file

    data = beside_spec_file(load_spec_file(args.spec), args.spec) if args.spec else {}
    for key in ("name", "dataset", "target", "latency_budget_ms", "trials", "workers", "sampler", "seed", "timeout_s",
                "recipes", "halving", "max_accuracy_drop", "min_accuracy", "runtime", "class_weight",
                "metric"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    budget = dict(data.get("budget") or {})
    for key in ("epochs", "teacher_epochs", "tuning_trials", "front_tuning_trials", "front_tuning_minutes"):
        value = getattr(args, key)
        if value is not None:
            budget[key] = value
    if budget:
        data["budget"] = budget
    if "name" not in data:
        raise ConfigError("A search needs a name: pass --name NAME or set 'name' in the spec file.")
    return _absolute_inputs(SearchSpec.from_dict(data))


def _absolute_inputs(spec):
    """The spec with its dataset and profile files named by absolute path: export, resume and status read them
    later, from whatever folder they are run in (a relative path stored as given failed there)."""
    import dataclasses

    from search.spec import input_files

    found = {field: str(path.resolve()) for field, path in input_files(spec).items() if path.is_file()}
    return dataclasses.replace(spec, **found) if found else spec


def _storage_url(args: argparse.Namespace) -> str:
    from search.study import default_storage

    return args.storage or default_storage(args.runs_dir)


def cmd_submit(args: argparse.Namespace) -> int:
    from search.study import DATA_ATTR, load_study, stored_spec
    from search.workers import cached_dataset, run_search

    if args.detach:
        return _submit_detached(args)
    storage = _storage_url(args)
    stored = None
    if args.resume:
        stored = load_study(_resumed_name(args), storage)
        spec = _resumed_spec(args, stored_spec(stored, args.runs_dir), DATA_ATTR in stored.user_attrs)
        if spec.dataset.endswith(".npz") and not Path(spec.dataset).is_file():
            from search.errors import DatasetError

            raise DatasetError(f"Dataset file {spec.dataset} of search {spec.name!r} does not exist here: pass its "
                               "copy on this machine with --dataset PATH (checked to be the same data).")
    else:
        spec = _spec_from_args(args)
    from search.spec import check_inputs, check_resources

    check_inputs(spec)  # bad input is refused before anything is written
    cached_dataset(spec.dataset, spec.class_weight)  # a malformed file too; run_search then finds it loaded
    if args.address:
        from search.workers import check_cluster

        check_cluster(args.address)
    else:
        check_resources(spec)
    if not args.resume:
        from search.study import refuse_existing

        # and so is a taken name: the spec file and kept inputs of the search that holds it were overwritten by the
        # refused one's
        refuse_existing(spec.name, storage)
        if args.keep_inputs:
            spec = _keep_inputs(spec, args.runs_dir)
    _write_spec(args.runs_dir, spec)
    tracking = None if args.no_mlflow else _tracking_uri(args, stored)
    try:
        outcome = run_search(spec, args.runs_dir, storage_url=storage, resume=args.resume, address=args.address,
                             report=lambda line: print(line, flush=True), tracking_uri=tracking)
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
            _say_how_to_resume(args, spec.name, storage)
        raise
    except Exception as exc:
        from search.errors import write_fault

        if fault := write_fault(exc):
            _say_how_to_resume(args, spec.name, storage, f"stopped: {fault.why}")
        raise
    from search.study import CHANCE_ATTR, FLOOR_ATTR, TEACHER_ATTR, load_study, shown_url

    attrs = load_study(spec.name, storage).user_attrs
    _print_outcome(outcome.rows, outcome.front, outcome.best, outcome.hypervolume, spec, storage,
                   (attrs.get(FLOOR_ATTR) or {}).get("value"), attrs.get(CHANCE_ATTR), attrs.get(TEACHER_ATTR))
    t = outcome.timings
    if t.get("wall"):
        own = t["ray_start"] + t["optuna"] + t["logging"]
        print(f"wall time {t['wall']:.0f} s; the service's own share {100 * own / t['wall']:.1f}% "
              f"(Ray start/stop {t['ray_start']:.1f} s, Optuna {t['optuna']:.1f} s, MLflow {t['logging']:.1f} s; "
              f"MLflow's thread logged beside the search for another {t.get('logging_background', 0.0):.1f} s)"
              + (f"; a freed worker waited {1e3 * t['dispatch'] / t['dispatches']:.0f} ms on average for its next "
                 "candidate" if t.get("dispatches") else ""))
    experiment = outcome.experiment or spec.name
    if tracking and outcome.tracking_incomplete:
        print(f"MLflow: experiment {experiment!r} in {shown_url(tracking)} lacks what this search logged while the "
              f"store was unreachable (every trial is in the Optuna storage); once it is back: {_program()} "
              f"{_runs_option(args)} sync {spec.name}{_same_stores(args, storage)}")
    elif tracking and not tracking.startswith("sqlite:"):
        print(f"MLflow: experiment {experiment!r} on the tracking server {shown_url(tracking)}; review it there")
    elif tracking:
        print(f"MLflow: experiment {experiment!r} in {shown_url(tracking)}; review it with 'make ui' or "
              f"'edgesearch ui {spec.name}', which prints the link to its runs")
    if outcome.best is not None:
        print(f"deploy it: {_program()} {_runs_option(args)} export {spec.name}"
              f"{_same_stores(args, storage)} --out DIR (the best within budget; --trial N or --pick "
              "fastest-above-accuracy X for another)")
    return 0


def _same_stores(args: argparse.Namespace, storage: str, tracked: bool | None = None) -> str:
    """The options that point a later command at the stores this one used (passwords hidden); ``tracked`` says
    whether the search logs to MLflow, where this command's own --no-mlflow does not."""
    from search.study import default_storage, shown_url

    where = "" if storage == default_storage(args.runs_dir) else f" --storage '{shown_url(storage)}'"
    if args.no_mlflow if tracked is None else not tracked:
        return where + " --no-mlflow"
    return where + (f" --tracking-uri '{shown_url(args.tracking_uri)}'" if args.tracking_uri else "")


def _say_how_to_resume(args: argparse.Namespace, name: str, storage: str, why: str = "interrupted") -> None:
    """After Ctrl-C or a full disk: where the search stopped, what was kept and the command that goes on from
    there."""
    from search.study import finished_count, load_study, search_state, shown_url, stored_spec

    try:
        study = load_study(name, storage)
        state, detail = search_state(study, stored_spec(study))
    except Exception:  # interrupted before the study was stored: nothing to resume
        return
    where, again = "", ""
    if state == "stopped":
        where = " " + detail
        again = (" (the trials it was running start again)" if detail.startswith("before") else
                 " (the stage goes on with the picks not yet timed)")
    logged = ("" if args.no_mlflow else ", each with its MLflow run" if why == "interrupted" else
              " (the resume logs to MLflow what it could not)")
    print(f"search {name!r} {why}{where}: {finished_count(study)} finished trial(s) are kept in "
          f"{shown_url(storage)}{logged}; continue it{again} with: {_resume_command(args, name, storage)}",
          file=sys.stderr, flush=True)


def _resume_command(args: argparse.Namespace, name: str, storage: str, tracked: bool | None = None) -> str:
    """The command that resumes search ``name`` from the stores this command used."""
    stores = _same_stores(args, storage, tracked)
    return f"{_program()} {_runs_option(args)} submit --name {name} --resume{stores}"


def _runs_option(args: argparse.Namespace) -> str:
    """``--runs-dir`` as a shell reads it back: a folder named with a space is quoted."""
    return f"--runs-dir {shlex.quote(str(args.runs_dir))}"


def _program() -> str:
    """The command as the user can type it again: `.venv/bin/edgesearch` from a checkout whose venv is not active."""
    import shutil

    invoked = Path(sys.argv[0])
    if invoked.name != "edgesearch" or shutil.which("edgesearch") == str(invoked.resolve()):
        return "edgesearch"
    relative = os.path.relpath(invoked)
    return shlex.quote(str(invoked.absolute()) if relative.startswith("..") else relative)


# what a resumed search may change: how it goes on, not what its finished trials mean
RESUME_MAY_CHANGE = ("trials", "workers", "timeout_s", "runtime")
RESUME_MAY_CHANGE_BUDGET = ("front_tuning_trials", "front_tuning_minutes")
RESUME_KEEPS = ("target", "latency_budget_ms", "sampler", "recipes", "halving", "max_accuracy_drop",
                "min_accuracy", "seed", "epochs", "teacher_epochs", "tuning_trials", "class_weight",
                "metric")


def _resumed_spec(args: argparse.Namespace, stored, data_recorded: bool = True):
    """The stored spec with the options a resume may change; an option that would change what the finished trials
    mean is refused rather than ignored. --dataset may name the same data file in another place (another machine):
    the search checks its content against the digest it recorded (``data_recorded``) before going on."""
    from search.spec import input_files

    fixed = [{"recipes": "--no-recipes", "halving": "--halving/--no-halving"}.get(
        key, "--" + key.replace("_", "-")) for key in RESUME_KEEPS if getattr(args, key) is not None]
    moved_data = args.dataset is not None and args.dataset != stored.dataset
    if moved_data and not (data_recorded and "dataset" in input_files(stored) and args.dataset.endswith(".npz")):
        fixed.insert(0, "--dataset")
    if fixed:
        raise ConfigError(f"--resume continues search {stored.name!r} as it was stored; {', '.join(fixed)} would "
                          "change what its finished trials mean. Resume without them, or start a new search under "
                          "another --name. A resume may change --trials, --workers, --timeout, --runtime, "
                          "--front-tuning-trials, --front-tuning-minutes, and --dataset to the same data file in "
                          "another place.")
    budget = {key: getattr(args, key) for key in RESUME_MAY_CHANGE_BUDGET if getattr(args, key) is not None}
    changes = {key: getattr(args, key) for key in RESUME_MAY_CHANGE if getattr(args, key) is not None}
    if moved_data:
        changes["dataset"] = str(Path(args.dataset).resolve())
    if budget:
        changes["budget"] = dataclasses.replace(stored.budget, **budget)
    return dataclasses.replace(stored, **changes) if changes else stored


def _resumed_name(args: argparse.Namespace) -> str:
    if not args.name and not args.spec:
        raise ConfigError("--resume needs the --name of the search to continue.")
    return args.name or _spec_from_args(args).name


def _keep_inputs(spec, runs_dir: Path):
    """The spec naming copies of its dataset and profile files in the search's folder (a detached search's inputs
    arrive in the job's temporary working folder; resuming needs them later)."""
    import dataclasses
    import shutil

    from search.spec import input_files, search_folder

    folder = search_folder(Path(runs_dir).resolve(), spec.name) / "inputs"
    kept = {}
    for field, path in input_files(spec).items():
        if path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / path.name)
            kept[field] = str(folder / path.name)
    return dataclasses.replace(spec, **kept)


def _submit_detached(args: argparse.Namespace) -> int:
    """Send the search to the cluster by value; what runs there names only the cluster's folders and stores."""
    from search.service import submit_job, wait_started
    from search.workers import cached_dataset

    where = {"runs_dir": args.cluster_runs_dir or "", "storage": args.storage or "",
             "tracking_uri": "none" if args.no_mlflow else args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""),
             "client_runs": args.runs_dir}
    if args.resume:
        name = _resumed_name(args)
        args.address = args.address or _cluster(args, name)  # the cluster this machine submitted it to
        job_id = submit_job(args.address, name, trials=args.trials, **where)
    else:
        from search.spec import check_inputs

        spec = _spec_from_args(args)
        check_inputs(spec)  # bad input is refused here, before anything reaches the cluster
        cached_dataset(spec.dataset, spec.class_weight)  # a malformed file too
        name = spec.name
        job_id = submit_job(args.address, name, spec=spec, **where)
    print(f"submitted search {name!r} as Ray job {job_id} to {args.address}; waiting for it to start ...", flush=True)
    wait_started(args.address, job_id)
    print(f"follow it with: edgesearch status {name} | edgesearch logs {name} | edgesearch stop {name} "
          f"(from another machine, add --address {args.address})")
    return 0


def _cluster(args: argparse.Namespace, name: str, needed: bool = False) -> str | None:
    """The cluster a detached search runs on: --address, else the one this machine submitted it to (unless
    --storage points at the search's store directly)."""
    from search.service import remembered_address

    address = args.address or (None if getattr(args, "storage", None) else remembered_address(args.runs_dir, name))
    if needed and not address:
        if _stored_here(args, name):
            raise ConfigError(f"Search {name!r} ran on this machine, not as a Ray job: `logs` and `stop` are for a "
                              f"search submitted with --detach. `edgesearch status {name}` shows its progress; one "
                              "running in a terminal stops with Ctrl-C there (and resumes with submit --resume).")
        raise ConfigError(f"Search {name!r} was not submitted from this machine: pass --address with the cluster's "
                          "dashboard URL (e.g. http://HOST:8265).")
    return address


def _stored_here(args: argparse.Namespace, name: str) -> bool:
    """Whether search ``name`` is in this machine's default store (a local search, not a detached one)."""
    if not (Path(args.runs_dir) / "optuna.db").is_file():
        return False
    from search.study import default_storage, load_study

    try:
        load_study(name, default_storage(args.runs_dir))
    except Exception:  # not there, or a store this version cannot read: say what was said before
        return False
    return True


def _tracking_uri(args: argparse.Namespace, study=None) -> str:
    """--tracking-uri, else the tracking server a stored ``study`` logged to, else the default store."""
    from search.tracking import default_tracking_uri, search_tracking_uri

    if args.tracking_uri:
        return args.tracking_uri
    return search_tracking_uri(study, args.runs_dir) if study is not None else default_tracking_uri(args.runs_dir)


def cmd_ui(args: argparse.Namespace) -> int:
    from search.study import shown_url
    from search.tracking import check_tracking, default_tracking_uri
    from search.ui import serve

    uri, parent = args.tracking_uri or default_tracking_uri(args.runs_dir), None
    if args.search and (Path(args.runs_dir) / "optuna.db").is_file():
        from search.study import default_storage, load_study
        from search.tracking import PARENT_ATTR, search_tracking_uri

        with contextlib.suppress(EdgeSearchError):  # not stored here: the UI says so on its page
            study = load_study(args.search, default_storage(args.runs_dir))
            uri = args.tracking_uri or search_tracking_uri(study, args.runs_dir)
            parent = study.user_attrs.get(PARENT_ATTR)
    if not uri.startswith("sqlite:"):
        print(f"the tracking store is a server already: open {shown_url(uri)}")
        return 0
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("warning: the UI has no authentication; anyone who reaches this host and port can read and change "
              "your runs", file=sys.stderr)
    check_tracking(uri, runs_dir=args.runs_dir)  # creates the store on first use: the landing page is looked up
    return serve(uri, args.host, args.port, args.search, say=lambda line: print(line, flush=True), parent=parent)


def _write_spec(runs_dir: Path, spec) -> None:
    from search.spec import search_folder

    folder = search_folder(runs_dir, spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2))


def cmd_status(args: argparse.Namespace) -> int:
    from search.study import (CHANCE_ATTR, EMULATOR_ATTR, FLOOR_ATTR, TEACHER_ATTR, best_within_budget, feasible_front,
                              front_hypervolume, load_study, rows, search_bounds, stored_spec)

    address = _cluster(args, args.name)
    if address:  # a detached search: its stores are the cluster's, so status runs there
        from search.service import find_job, status_on_cluster

        job = find_job(address, args.name)
        print(f"Ray job {job.submission_id} at {address}: {job.status.value}")
        print(status_on_cluster(address, job))
        return 0
    storage = _storage_url(args)
    study = load_study(args.name, storage)
    spec = stored_spec(study, args.runs_dir)
    from optuna.trial import TrialState

    from search.study import finished_count, running_trials, search_state, spent_budget, spent_text
    from search.tracking import TRACKED_ATTR

    all_rows = rows(study)
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    state, detail = search_state(study, spec)
    running_now = (f"{running} running" if state == "running" or not running
                   else f"{running} left unfinished by a stopped driver")
    print(f"{spent_text(spent_budget(study))} of {spec.trials} trials of training budget spent ("
          f"{finished_count(study)} trials finished, {running_now}; a candidate screened out costs nothing, one "
          "stopped by halving a third); "
          + (f"{state}: {detail}" if detail else state)
          + ("; continue it with: " + _resume_command(args, args.name, storage,
                                                        study.user_attrs.get(TRACKED_ATTR, True))
             if state == "stopped" else ""))
    if state == "running" and (out := running_trials(study)):
        print(f"running now: {out}; a trial's figures come once it is trained, compiled and measured")
    if words := study.user_attrs.get(EMULATOR_ATTR):
        from hardware_targets.calibration import emulated_line

        print(emulated_line(spec.target, words))
    front = feasible_front(all_rows)
    floor = (study.user_attrs.get(FLOOR_ATTR) or {}).get("value")
    _print_outcome(all_rows, front, best_within_budget(all_rows), front_hypervolume(front, search_bounds(study, spec)),
                   spec, storage, floor, study.user_attrs.get(CHANCE_ATTR), study.user_attrs.get(TEACHER_ATTR))
    _sync_quietly(study, spec, args)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from search.study import load_study, shown_url, stored_spec
    from search.tracking import sync_search

    study = load_study(args.name, _storage_url(args))
    uri = _tracking_uri(args, study)
    logged = sync_search(study, stored_spec(study, args.runs_dir), uri, args.runs_dir)
    shown = shown_url(uri)
    print(f"MLflow {shown}: {logged} missing run(s) of search {args.name!r} logged; it now holds every finished trial"
          if logged else f"MLflow {shown} already held every finished trial of search {args.name!r}")
    return 0


def _sync_quietly(study, spec, args: argparse.Namespace) -> None:
    """Catch MLflow up after an outage when a command reads a finished search; never fails the command. A search
    run without MLflow is left so (`edgesearch sync NAME` logs it on request)."""
    from search.tracking import TRACKED_ATTR, answers, sync_search

    if getattr(args, "no_mlflow", False) or not study.user_attrs.get(TRACKED_ATTR, True):
        return

    uri = _tracking_uri(args, study)
    if uri.startswith(("http://", "https://")) and not answers(uri):  # down: not worth MLflow's retries here
        return
    try:
        logged = sync_search(study, spec, uri, args.runs_dir)
    except Exception:  # still running, or MLflow unreachable: `edgesearch sync NAME` says which
        return
    if logged:
        print(f"MLflow was missing {logged} run(s) of this search (a tracking outage); logged them now")


def cmd_list(args: argparse.Namespace) -> int:
    if args.address:
        from search.service import searches_on_cluster

        jobs = searches_on_cluster(args.address)
        if not jobs:
            print(f"no searches were submitted to the cluster at {args.address}")
        else:
            print(f"{'search':<28}{'status':<11}{'submitted':<21}job")
            for name, job in jobs.items():
                print(f"{name:<28}{str(job.status.value):<11}"
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(job.start_time / 1e3)):<21}"
                      f"{job.submission_id}")
        return 0
    from search.study import shown_url, stored_searches

    storage = _storage_url(args)
    # the default SQLite file is only created by a first search, not by listing
    exists = args.storage or Path(args.runs_dir, "optuna.db").exists()
    searches = stored_searches(storage) if exists else []
    if not searches:
        print(f"no searches in {shown_url(storage)}")
        return 0
    from objectives.pareto import ACCURACY_METRICS
    from search.study import (SPEC_ATTR, best_within_budget, rows, search_state, spent_budget, spent_text,
                              stored_spec)

    table = []
    for s, study in searches:
        started = s.datetime_start.strftime("%Y-%m-%d %H:%M:%S") if s.datetime_start else "-"
        try:
            spec = stored_spec(study, args.runs_dir)
            spent, state = f"{spent_text(spent_budget(study))}/{spec.trials}", search_state(study, spec)[0]
            target, budget = spec.target_name, f"{spec.latency_budget_ms:g} ms"
            best = best_within_budget(rows(study))
            found = ("none feasible yet" if best is None else
                     f"{ACCURACY_METRICS[spec.metric]} {best.quality:.4f}, p90 {best.value('latency_ms_p90'):.4g} ms "
                     f"({best.metrics['latency_ms_p90'][2]})")
        except (EdgeSearchError, KeyError):  # a study of another tool, or a spec this version no longer reads
            state = "unknown" if SPEC_ATTR in study.user_attrs else "not edgesearch's"
            spent, target, budget, found = f"{s.n_trials} trials", "-", "-", "-"
        table.append((s.study_name, spent, state, target, budget, started, found))
    # the best within budget by validation accuracy (the metric the search ranks by), its p90 latency and where that
    # comes from; `edgesearch status NAME` shows the whole front
    head = ("search", "spent", "state", "target", "budget", "started", "best within budget")
    widths = [max(len(row[i]) for row in [head, *table]) for i in range(len(head) - 1)]
    for row in [head, *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from search.delete import delete_search
    from search.spec import search_folder
    from search.study import load_study, shown_url

    storage = _storage_url(args)
    study = load_study(args.name, storage)  # a search that does not exist is said first
    if not args.yes:
        folder = search_folder(args.runs_dir, args.name)
        raise ConfigError(f"Deleting search {args.name!r} removes its {len(study.trials)} trial(s) from "
                          f"{shown_url(storage)}, its MLflow experiment and its folder "
                          f"({folder if folder.is_dir() else 'none'}); nothing was deleted: pass --yes to delete it.")
    deleted = delete_search(study, args.runs_dir, None if args.no_mlflow else _tracking_uri(args, study))
    print(f"deleted search {args.name!r}: {deleted.trials} trial(s) from {shown_url(storage)}"
          + (f"; its MLflow experiment, renamed {deleted.experiment!r} and deleted (MLflow keeps a deleted "
             "experiment until 'mlflow gc' removes it)" if deleted.experiment else "")
          + (f"; {deleted.file_bytes / 2**20:.1f} MiB of its files ({deleted.folder})" if deleted.folder else "")
          + ". Kept: what other searches share (teachers, tuning records, screenings), exports and registered "
            "models.")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from search.service import job_logs

    print(job_logs(_cluster(args, args.name, needed=True), args.name), end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from search.service import stop_job

    address = _cluster(args, args.name, needed=True)
    stopped = stop_job(address, args.name)
    print(f"stop requested for search {args.name!r}" if stopped else f"search {args.name!r} was not running")
    print(f"resume it with: edgesearch submit --name {args.name} --resume --detach --address {address}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from search.export import Pick, export_search

    min_accuracy = None
    if args.pick and not (args.search or args.search_option) and \
            len(args.pick) == (3 if args.pick[0] == "fastest-above-accuracy" else 2):
        args.search = args.pick.pop()  # `export --pick RULE NAME`: the name came after the rule, which took it
    if args.pick and args.pick[0] == "fastest-above-accuracy":
        if len(args.pick) != 2:
            raise ConfigError("--pick fastest-above-accuracy needs a threshold, e.g. 0.95.")
        try:
            min_accuracy = float(args.pick[1])  # its range is Pick's to check
        except ValueError:
            raise ConfigError(f"--pick fastest-above-accuracy needs a number, e.g. 0.95. Got {args.pick[1]!r} "
                              "instead.") from None
    elif args.pick and (args.pick[0] != "best-accuracy-within-budget" or len(args.pick) != 1):
        raise ConfigError(f"--pick must be 'best-accuracy-within-budget' or 'fastest-above-accuracy X'; "
                          f"got {' '.join(args.pick)!r}.")
    if args.search and args.search_option and args.search != args.search_option:
        raise ConfigError(f"Two searches to export: {args.search!r} and --search {args.search_option!r}; name one.")
    args.search = args.search or args.search_option
    if not args.search:
        raise ConfigError("Name the search to export: edgesearch export NAME --out DIR (`edgesearch list` shows "
                          "the stored ones).")
    address = _cluster(args, args.search)
    if address:  # a detached search: export where its files are; the folder comes back through MLflow
        from search.service import export_on_cluster

        if args.no_mlflow:
            raise ConfigError("--no-mlflow: an export made on the cluster comes back through MLflow; pass "
                              "--storage to export on a machine that has the search's files instead.")

        print(f"exporting search {args.search!r} on the cluster at {address} ...", flush=True)
        options = [*(["--trial", str(args.trial)] if args.trial is not None else []),
                   *(["--pick", *args.pick] if args.pick else []), *(["--target", args.target] if args.target else []),
                   *(["--force"] if args.force else [])]
        card = export_on_cluster(address, args.search, args.out, options, tracking_uri=args.tracking_uri,
                                 overwrite=args.overwrite)
        print("downloaded from MLflow (each file checked against the model card's hash)")
    else:
        from search.study import load_study

        print(f"exporting from search {args.search!r} ...", flush=True)
        storage = _storage_url(args)
        tracking = None if args.no_mlflow else _tracking_uri(args, load_study(args.search, storage))
        card = export_search(args.search, args.out, storage_url=storage, runs_dir=args.runs_dir,
                             pick=Pick(args.trial, min_accuracy, args.force), target=args.target,
                             tracking_uri=tracking, overwrite=args.overwrite, dataset=args.dataset)
    v = card["verification"]
    print(f"exported trial {card['trial']} ({card['why']}) for {card['target_profile']} to {Path(args.out).resolve()}")
    for key in ("over_budget_on_target", "emulator_since"):
        if card.get(key):
            print(f"note: {card[key]}")
    if card.get("search_unfinished"):
        print(f"note: exported while {card['search_unfinished']}; its final winner may differ: export again once it "
              "has finished")
    if "tflm_test_accuracy" in v:
        print(f"verified: test accuracy in the TFLite Micro interpreter {v['tflm_test_accuracy']:.4f}, tensor arena "
              f"{v['tflm_arena_bytes']:,} bytes (as recorded)")
    else:
        print(f"verified: test accuracy onnxruntime {v['onnxruntime_test_accuracy']:.4f}, TVM "
              f"{v['tvm_host_test_accuracy']:.4f} (as recorded); library {v['library_architecture']}")
    for name, m in card["metrics"].items():
        print(f"  {name:<28}{m['value']:>14.6g} {m['unit']:<9}{m['provenance']}")
    if card.get("gzip_copies"):
        print(f"to send to a device: {', '.join(card['gzip_copies'].values())} (gzip-compressed; sizes above)")
    if card.get("registered_version"):
        print(f"registered as MLflow model 'edgesearch-{card['search']}' version {card['registered_version']}")
    return 0


CLASS_WEIGHT_HELP = ("how the training loss weighs the classes: 'balanced' weighs each by its rarity, for "
                     "imbalanced classes, where plain accuracy rewards always predicting the largest class (the "
                     "dataset line says when they are)")


def _add_candidate_options(p: argparse.ArgumentParser) -> None:
    from search.candidate import PRECISIONS, PRUNING_MODES

    p.add_argument("--dataset", default="digits", help="built-in dataset (digits, mnist1d) or path of an .npz file "
                   "with x_train, y_train, x_test, y_test, or x and y (a folder of images or CSV windows: "
                   "'edgesearch pack' it) [default: digits]")
    p.add_argument("--target", default="host", help="target profile name or .yaml path; see 'edgesearch targets' "
                   "[default: host]")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="numeric precision of the deployed graph")
    p.add_argument("--sparsity", type=float, default=0.0, help="requested sparsity in [0, 0.99]: zero weights "
                   "(unstructured) or removed channels (structured) [default: 0]")
    p.add_argument("--pruning", default="unstructured", choices=PRUNING_MODES, help="pruning mode")
    p.add_argument("--temperature", type=float, default=1.0, help="distillation temperature T >= 1 [default: 1]")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the hard-label loss; 1 = no distillation")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of the DS-CNN [default: 1]")
    p.add_argument("--epochs", type=int, default=15, help="training epochs [default: 15]")
    p.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs per pruning step and for QAT")
    p.add_argument("--teacher-epochs", type=int, help="training epochs of the distillation teacher (width 2), "
                   "trained once and cached [default: twice --epochs]")
    p.add_argument("--tuning-trials", type=int, default=0, help="MetaSchedule trials for this model; 0 = no tuning, "
                   "records already in the cache are still applied [default: 0]")
    p.add_argument("--repeats", type=int, default=30, help="latency repeats (median and p90 are over them)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--class-weight", choices=CLASS_WEIGHTS, default="none", help=CLASS_WEIGHT_HELP
                   + " [default: none]")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for torch, TVM and "
                   "onnxruntime [default: all cores]")
    p.add_argument("--runtime", choices=("auto", "tvm", "onnxruntime"), default="auto", help="on a local target, "
                   "the runtime latency and accuracy are measured on: auto = the faster of untuned TVM and "
                   "onnxruntime, timed in turns (each one's latency is printed too) [default: auto]")


def _stores(p: argparse.ArgumentParser, tracking: bool = True) -> None:
    """The options that name a search's stores, said alike by every command that reads one."""
    p.add_argument("--storage", help="Optuna RDB storage URL [default: sqlite:///RUNS/optuna.db]")
    if tracking:
        p.add_argument("--tracking-uri", help="MLflow tracking URI [default: the tracking server the search logged "
                       "to, else $MLFLOW_TRACKING_URI or sqlite:///RUNS/mlflow.db]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgesearch",
        description="Hardware-aware AutoML search: quantization, pruning, distillation and width, "
                    "compiled with TVM and measured on the target.",
    )
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS,
                        help="where outputs, caches and stores go [default: ./runs or $EDGESEARCH_RUNS]")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("evaluate", help="build, compile and measure one candidate",
                       description="Train, compress, export, compile and measure one candidate, and print "
                                   "every figure with its provenance (measured / emulated / estimated).")
    _add_candidate_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("pack", help="pack a folder of images or signal files, a subfolder per class, into a dataset",
                       description="Read a folder with one subfolder per class, named after it, into the .npz a "
                                   "search reads, with the class names and the axis order. Images (PNG, JPEG, BMP, "
                                   "GIF, WebP, TIFF, PNM): 8-bit pixels; grey images give one channel, and a colour "
                                   "image makes every image RGB; photos are turned upright as their EXIF says. "
                                   "Signals: one window per CSV file (a row per sample, a column per channel, "
                                   "an optional first line of column names; a time column is left out) or .npy file "
                                   "((L,) or (L, C)), all of one length. A folder with train/ and test/ (and val/ or "
                                   "validation/), each with the class folders, keeps those splits; otherwise each "
                                   "search draws them. Other files are listed and left out; dot files (.DS_Store, "
                                   "._*) are not data.")
    p.add_argument("folder", type=Path, help="the folder of class folders")
    p.add_argument("--out", type=Path, required=True, help="the .npz file to write (replaced if it exists)")
    p.add_argument("--size", help="images: resize every image to WIDTHxHEIGHT pixels, such as 32x32 (bilinear; "
                   "aspect not kept); needed when the images have several sizes")
    p.add_argument("--grey", action="store_true", help="images: read colour as grey, one channel (a third of the "
                   "input, and of the first layer's work)")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("targets", help="list the target profiles", description="List the shipped target profiles.")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("calibrate", help="fit a target's emulator to measurements and report its error",
                       description="For the host: evaluate a spread of candidates, fit the emulator's efficiency and "
                                   "overhead factors on two thirds and report its median absolute percentage error "
                                   "on the rest. For an emulated board: fit them to the published MLPerf Tiny "
                                   "results of its class, or with --measured to your own timings of exported models "
                                   "on the board, and report the error against each. Searches and exports with the "
                                   "same --runs-dir apply the fit.")
    p.add_argument("--target", default="host", help="host, an emulated board with published references "
                   "(cortex-m4, cortex-m7), or with --measured any emulated board [default: host]")
    p.add_argument("--candidates", type=int, default=12, help="candidates to measure [default: 12]")
    p.add_argument("--seed", type=int, default=0, help="seed of the candidates drawn on the host and of their "
                   "training [default: 0]")
    p.add_argument("--measured", type=Path, metavar="CSV", help="fit an emulated board to your own timings of it "
                   "instead: a CSV with the columns model (an export's folder or its model file, relative to the "
                   "CSV) and latency_ms (one inference), optionally precision, clock_mhz (when the board ran at "
                   "another clock than its profile's) and energy_uj (one inference's energy, to fit the board's "
                   "active power). Replaces the fit to published results")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "submit", help="run a multi-objective search (or submit it to a Ray cluster)",
        description="Search precision, sparsity, distillation and width with Optuna on Ray workers: maximise "
                    "accuracy, minimise latency, size and energy, under a latency budget (a constraint: the reported front "
                    "is feasible). Options override the fields of --spec.")
    p.add_argument("--spec", type=Path, help="YAML or TOML file with the spec fields "
                   f"({', '.join(f.name for f in dataclasses.fields(SearchSpec))})")
    p.add_argument("--name", help="search name: the study, MLflow experiment and output folder are named after it")
    p.add_argument("--dataset", help="digits, mnist1d or an .npz path (a folder of images or CSV windows: "
                   "'edgesearch pack' it) [default: digits]; on --resume, where the "
                   "search's own .npz is on this machine (checked to hold the same data)")
    p.add_argument("--target", help="target profile [default: host]")
    p.add_argument("--latency-budget-ms", dest="latency_budget_ms", type=float,
                   help="latency budget per inference in ms: candidates above it are infeasible [default: 1.0]")
    p.add_argument("--trials", type=int, help="training budget, in fully trained candidates: a candidate screened "
                   "out before training costs nothing, one stopped by successive halving a third [default: 24]")
    p.add_argument("--workers", type=int, help="candidates evaluated in parallel, one CPU each [default: 2]")
    p.add_argument("--sampler", choices=("auto", "tpe", "nsga2", "random"), help="Optuna sampler; auto is "
                   "multivariate TPE (constant liar across workers) below 100 trials and NSGA-II from 100, as Optuna's "
                   "guidance puts them [default: auto]")
    p.add_argument("--no-recipes", dest="recipes", action="store_const", const=False, help="do not start from "
                   "the classic single-technique recipes (fp16, int8 PTQ, int8 QAT, 50%% and 90%% pruning, "
                   "distillation into width 0.5, width 0.5), which are otherwise the first trials")
    halving = p.add_mutually_exclusive_group()
    halving.add_argument("--halving", dest="halving", action="store_const", const=True, help="successive halving "
                         "on epochs: train a third of the epochs first, continue the best third [default: on from "
                         f"{HALVING_FROM_TRIALS} trials]")
    halving.add_argument("--no-halving", dest="halving", action="store_const", const=False,
                         help="train every candidate that passes screening to the full budget")
    floor = p.add_mutually_exclusive_group()
    floor.add_argument("--max-accuracy-drop", dest="max_accuracy_drop", type=float, metavar="FRACTION",
                       help="accuracy floor as a relative drop from the fp32 full-width model of the same dataset "
                            "and budget (trained once and cached), e.g. 0.02 = at most 2%% below it")
    floor.add_argument("--min-accuracy", dest="min_accuracy", type=float, metavar="FRACTION",
                       help="accuracy floor as an absolute validation accuracy, e.g. 0.9")
    p.add_argument("--seed", type=int, help="seed of the sampler and of training [default: 0]")
    p.add_argument("--class-weight", dest="class_weight", choices=CLASS_WEIGHTS, help=CLASS_WEIGHT_HELP
                   + " [default: none]")
    p.add_argument("--metric", choices=ACCURACY_METRICS, help="what the search ranks by, and "
                   "--min-accuracy and --max-accuracy-drop bound: validation accuracy, or balanced accuracy (mean "
                   "recall per class), which a model always predicting the largest of imbalanced classes does not "
                   "inflate [default: accuracy]")
    p.add_argument("--epochs", type=int, help="training epochs per candidate [default: 15]")
    p.add_argument("--teacher-epochs", dest="teacher_epochs", type=int, metavar="N",
                   help="training epochs of the distillation teacher (width 2), trained before the first trial when "
                        "the space distils, once per dataset, seed and N, and cached [default: twice --epochs]")
    p.add_argument("--tuning-trials", dest="tuning_trials", type=int,
                   help="MetaSchedule trials per candidate; records are shared, so later candidates reuse them "
                        "[default: 0]")
    p.add_argument("--front-tuning-trials", dest="front_tuning_trials", type=int, metavar="N",
                   help="after the search, on a local target: MetaSchedule trials for every task of each candidate "
                        "on or near the front (times the layers a task stands for), tuned for the detected CPU; "
                        "0 = compare runtimes only [default: 4]")
    p.add_argument("--front-tuning-minutes", dest="front_tuning_minutes", type=float, metavar="MIN",
                   help="wall-time cap of that tuning, held within a candidate (its tasks not started by then "
                        "keep TVM's default loops); candidates after it tune nothing more, but are built with the "
                        "records tuned so far and timed against untuned TVM and onnxruntime (seconds each); 0 = no "
                        "shipping stage [default: 3]")
    p.add_argument("--runtime", choices=("auto", "tvm", "onnxruntime"), help="what ships on a local target, and "
                   "what its candidates are timed on: auto screens and judges each on the faster of untuned TVM and "
                   "onnxruntime, then the shipping stage times untuned and tuned TVM and onnxruntime side by side and "
                   "keeps the fastest [default: auto]")
    p.add_argument("--timeout", dest="timeout_s", type=float, help="per-candidate time limit in seconds")
    p.add_argument("--resume", action="store_true", help="continue the stored search NAME without repeating "
                   "finished trials; trials interrupted by a dead driver are re-queued")
    p.add_argument("--address", help="an existing Ray cluster: host:port of its head (port 6379 by default) "
                   "from a node of it, or its dashboard URL http://host:8265 with --detach (Ray Client's ray:// is not "
                   "supported); default: start a local cluster")
    p.add_argument("--detach", action="store_true", help="submit the search as a Ray Job to --address "
                   "(the dashboard URL) and return at once with the job id. The spec and a dataset or profile "
                   "file go with it; the driver runs from the edgesearch installed on the cluster ('python' on "
                   "its PATH), and --storage and --tracking-uri name stores as the cluster reaches them")
    p.add_argument("--cluster-runs-dir", metavar="DIR", help="with --detach: the runs folder on the cluster "
                   "[default: $EDGESEARCH_RUNS there, else ~/edgesearch-runs]")
    p.add_argument("--keep-inputs", action="store_true", help="copy a dataset or profile file into the search's "
                   "folder and use the copy (a detached search does this on the cluster)")
    _stores(p, tracking=False)
    p.add_argument("--tracking-uri", help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or "
                   "sqlite:///RUNS/mlflow.db; on --resume, the tracking server the search logged to]")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("ui", help="start the MLflow UI on the local tracking store",
                       description="Serve the MLflow UI for runs/mlflow.db on 127.0.0.1 (local only by default) and "
                                   "print the link to a search's runs in MLflow's model-training view. SIGINT, "
                                   "SIGTERM and SIGHUP stop the server and everything it started.")
    p.add_argument("search", nargs="?", help="the search to open [default: the newest one]")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind [default: 127.0.0.1, this machine only]")
    p.add_argument("--port", type=int, default=5000, help="port [default: 5000]")
    p.add_argument("--tracking-uri", help="MLflow tracking URI [default: the tracking server the search logged "
                   "to, else $MLFLOW_TRACKING_URI or sqlite:///RUNS/mlflow.db]")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("status", help="progress and Pareto front of a search",
                       description="Show a running or finished search: trials, feasible front, best candidate.")
    p.add_argument("name", help="the search's name, as given to submit --name ('edgesearch list' lists them)")
    _stores(p, tracking=False)
    p.add_argument("--tracking-uri", help="MLflow tracking URI, caught up if an outage left runs out [default: "
                   "the tracking server the search logged to, else $MLFLOW_TRACKING_URI or sqlite:///RUNS/mlflow.db]")
    p.add_argument("--no-mlflow", action="store_true", help="do not touch MLflow")
    p.add_argument("--address", help="the dashboard URL (http://HOST:8265) of the cluster a detached search runs "
                   "on [default: the one this machine submitted it to]")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("sync", help="log to MLflow what a tracking outage left out",
                       description="Log every finished trial of a search that the MLflow store is missing (say, the "
                                   "tracking server was down when the search ended, or it ran with --no-mlflow), and "
                                   "refresh its front. status does this too when it can reach the store (not for a "
                                   "search run with --no-mlflow), and export before it registers the model.")
    p.add_argument("name", help="the search's name, as given to submit --name")
    _stores(p)
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("list", help="list the stored searches", description="List the searches in the storage, "
                       "or those submitted to a cluster with their newest job's status.")
    _stores(p, tracking=False)
    p.add_argument("--address", help="list the searches submitted to the cluster at this dashboard URL instead")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("export", help="export a search's winner for deployment",
                       description="Copy the measured ONNX of the chosen candidate, build the TVM library for the "
                                   "target, write a model card with every figure and its provenance, verify that the "
                                   "artifacts reproduce the recorded test accuracy, and register the model in MLflow.")
    p.add_argument("search", nargs="?", help="name of a finished (or running) search")
    p.add_argument("--search", dest="search_option", metavar="SEARCH", help="the same, given as an option")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--trial", type=int, help="export this trial (must be on the feasible front unless --force)")
    group.add_argument("--pick", nargs="+", metavar="RULE", help="best-accuracy-within-budget (default) or "
                       "fastest-above-accuracy X")
    p.add_argument("--out", type=Path, required=True, help="directory to write (must be new or empty)")
    p.add_argument("--target", help="target profile to export for: another than the search's is measured or "
                   "emulated there at export (a TFLite Micro search: another TFLite Micro board, the same .tflite "
                   "re-emulated) [default: the search's target]")
    p.add_argument("--dataset", help="the search's dataset file where it is on this machine (checked to be the "
                   "same data) [default: the path the search recorded]")
    p.add_argument("--force", action="store_true", help="allow a --trial that is not on the feasible front")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    _stores(p)
    p.add_argument("--no-mlflow", action="store_true", help="do not look up the run nor register the model")
    p.add_argument("--address", help="the dashboard URL (http://HOST:8265) of the cluster a detached search runs "
                   "on; the export runs there and comes back through the search's MLflow tracking server "
                   "[default: the one this machine submitted it to]")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("delete", help="delete a stored search: its trials, MLflow experiment and files",
                       description="Delete a search that is not running, so that its name can be used again: its "
                                   "trials in the storage, its MLflow experiment (renamed, then deleted as MLflow "
                                   "deletes) and its folders under the runs folder. Caches other searches share, "
                                   "exports and registered models stay.")
    p.add_argument("name", help="the search's name, as given to submit --name")
    p.add_argument("--yes", action="store_true", help="delete it (without it, say what would go and delete nothing)")
    _stores(p)
    p.add_argument("--no-mlflow", action="store_true",
                   help="leave its MLflow experiment as it is (a new search of the name is then refused until that "
                        "experiment is deleted in MLflow: their runs would mix)")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("logs", help="logs of a detached search (Ray job)",
                       description="Print what a search submitted with --detach has printed so far (its Ray job's "
                                   "log), as its terminal would have shown it. A search run in a terminal prints "
                                   "there; status shows any search's progress.")
    p.add_argument("name", help="the search's name, as given to submit --name")
    p.add_argument("--address", help="the dashboard URL (http://HOST:8265) of the cluster a detached search runs "
                   "on [default: the one this machine submitted it to]")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stop", help="stop a detached search (Ray job); resume it later with submit --resume",
                       description="Stop a search submitted with --detach, as Ctrl-C stops one in a terminal: its "
                                   "finished trials stay in storage and MLflow, the trials it was running start "
                                   "again on submit --resume, whose command it prints.")
    p.add_argument("name", help="the search's name, as given to submit --name")
    p.add_argument("--address", help="the dashboard URL (http://HOST:8265) of the cluster a detached search runs "
                   "on [default: the one this machine submitted it to]")
    p.set_defaults(func=cmd_stop)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _refuse_unknown_leading_options(parser, sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        _unrecognized(parser, args, extra)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.runs_dir.exists() and not args.runs_dir.is_dir():
        parser.error(f"--runs-dir {args.runs_dir} is a file; it names the folder where searches keep their outputs "
                     "and stores")
    given = getattr(args, "tracking_uri", None)  # for the commands that log to or read MLflow
    if (given or (hasattr(args, "tracking_uri") and os.environ.get("MLFLOW_TRACKING_URI"))
            and not getattr(args, "no_mlflow", False)):
        from search.tracking import file_store_error

        if error := file_store_error(given or os.environ["MLFLOW_TRACKING_URI"]):
            parser.error(error if given else f"{error} (from $MLFLOW_TRACKING_URI)")
    try:
        with stopped_by_signals():  # `kill` and a closed terminal stop a command as Ctrl-C does
            return args.func(args)
    except EdgeSearchError as exc:
        from search.errors import write_fault

        if fault := write_fault(exc):  # a candidate's stage said why it failed: the disk, not the candidate
            return _stopped_by_write_fault(args, fault)
        print(f"edgesearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        from search.errors import Terminated

        with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
            print(f"edgesearch: {'stopped by ' + str(exc) if isinstance(exc, Terminated) else 'interrupted'}",
                  file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Terminated) else 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        from search.errors import write_fault

        if not (fault := write_fault(exc)):
            raise
        return _stopped_by_write_fault(args, fault)


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's parser, by name (argparse keeps them on its private subparsers action)."""
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _refuse_unknown_leading_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """An option before the command that edgesearch does not have (`--run-dir x list`) made argparse take its value
    for the command ("invalid choice: 'x'"): say which option it is instead."""
    import difflib

    commands = _commands(parser)
    known = [o for a in parser._actions for o in a.option_strings]
    takes_value = {o for a in parser._actions if a.nargs != 0 for o in a.option_strings}
    args = iter(argv)
    for arg in args:
        if arg in commands or arg == "--" or not arg.startswith("-"):
            return
        word = arg.split("=", 1)[0]
        matches = [o for o in known if o.startswith(word)]
        if not matches:
            meant = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
            parser.error(f"unrecognized option {word} before the command" + (
                f" (did you mean {meant[0]}?)" if meant else "") + "; see 'edgesearch --help'")
        if "=" not in arg and len(matches) == 1 and matches[0] in takes_value:
            next(args, None)


def _unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """Refuse options the command does not have, from the command's own usage, naming the options meant
    (--budget-ms: --latency-budget-ms)."""
    import difflib
    import re

    commands = _commands(parser)
    command = commands.get(getattr(args, "command", None), parser)
    known = sorted(set(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", command.format_help())))
    leading = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    hints = []
    for arg in extra:
        word = arg.split("=", 1)[0]
        if not word.startswith("-"):
            continue
        meant = difflib.get_close_matches(word, known + leading, n=1, cutoff=0.6) or [
            k for k in known if len(word.strip("-")) > 2 and word.strip("-") in k][:2]
        if meant and meant[0] == word:  # an option of edgesearch itself, given after the command
            hints.append(f"{word} goes before the command: edgesearch {word} ... {args.command} ...")
        elif meant:
            hints.append(f"{word}: did you mean {' or '.join(meant)}"
                         + (", given before the command?" if meant[0] in leading and command is not parser else "?"))
    command.error(f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})" if hints else "")
                  + f"; see '{command.prog} --help'")


def _stopped_by_write_fault(args: argparse.Namespace, fault) -> int:
    """One line for a full disk, a read-only or forbidden folder, not a traceback; a search has said how to resume
    it."""
    out = f", --out {args.out}" if getattr(args, "out", None) else ""
    where = "" if fault.path else f" (in the runs folder {args.runs_dir}{out} or a store)"
    again = "" if args.func is cmd_submit else ", then run the command again"
    with contextlib.suppress(OSError):
        print(f"edgesearch: error: {fault.what}{where}; {fault.remedy(getattr(args, 'out', None))}{again}",
              file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
