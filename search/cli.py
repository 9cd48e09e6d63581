"""The ``edgesearch`` command line: parse, call the library, print.

Every ``EdgeSearchError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from search.errors import EdgeSearchError

DEFAULT_RUNS = Path(os.environ.get("EDGESEARCH_RUNS", "runs"))


def _print_result(result) -> None:
    c = result.candidate
    print(f"\ncandidate  {c.key()}  on {result.target} ({result.info['provenance']}), dataset {result.dataset}")
    print(f"{'metric':<28}{'value':>14}  {'unit':<9}provenance")
    for name, m in result.metrics.items():
        value = f"{m.value:.4f}" if m.unit in ("ms", "fraction") else f"{m.value:,.0f}"
        print(f"{name:<28}{value:>14}  {m.unit:<9}{m.provenance}")
    t = result.info["tuning"]
    print(f"tuning: {t['tasks']} tasks, {t['tuned']} tuned now, {t['reused']} reused from records ({t['seconds']} s)")
    total = sum(result.stage_seconds.values())
    print("stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in result.stage_seconds.items()) + f" (total {total:.1f})")
    print(f"artifacts: {result.artifacts['onnx']}\n           {result.artifacts['library']}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hardware_targets import load_profile
    from search.candidate import Budget, Candidate
    from search.data import load_dataset
    from search.pipeline import Paths, evaluate_candidate

    profile = load_profile(args.target)
    budget = Budget(epochs=args.epochs, finetune_epochs=args.finetune_epochs, tuning_trials=args.tuning_trials,
                    timing_repeats=args.repeats)
    candidate = Candidate(precision=args.precision, sparsity=args.sparsity, pruning=args.pruning,
                          temperature=args.temperature, alpha=args.alpha, width=args.width, budget=budget,
                          seed=args.seed)
    dataset = load_dataset(args.dataset)
    quiet = args.json

    def progress(stage: str, message: str) -> None:
        if not quiet:
            print(f"[{stage:>8}] {message}", flush=True)

    if not quiet:
        print(f"dataset {dataset.summary()}")
    result = evaluate_candidate(candidate, dataset, profile, Paths(args.runs_dir), threads=args.threads,
                                progress=progress)
    if args.json:
        print(result.to_json())
    else:
        _print_result(result)
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from hardware_targets import available_profiles, load_profile

    print(f"{'target':<24}{'backend':<10}{'tvm target':<48}description")
    for name in available_profiles():
        p = load_profile(name)
        target = json.dumps(p.tvm_target, separators=(",", ":"))
        print(f"{p.name:<24}{p.backend:<10}{target:<48}{p.description}")
    return 0


def _add_candidate_options(p: argparse.ArgumentParser) -> None:
    from search.candidate import PRECISIONS, PRUNING_MODES

    p.add_argument("--dataset", default="digits", help="built-in dataset (digits, mnist1d) or path of an .npz file "
                   "with x_train, y_train, x_test, y_test [default: digits]")
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
    p.add_argument("--tuning-trials", type=int, default=0, help="MetaSchedule trials for this model; 0 = no tuning, "
                   "records already in the cache are still applied [default: 0]")
    p.add_argument("--repeats", type=int, default=30, help="latency repeats (median and p90 are over them)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for torch, TVM and "
                   "onnxruntime [default: all cores]")


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

    p = sub.add_parser("targets", help="list the target profiles", description="List the shipped target profiles.")
    p.set_defaults(func=cmd_targets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except EdgeSearchError as exc:
        print(f"edgesearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgesearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
