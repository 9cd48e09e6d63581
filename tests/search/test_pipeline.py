"""One candidate end to end, through the library and through the CLI."""

import dataclasses
import json

import pytest

from search.candidate import Candidate, CandidateResult
from search.cli import main
from search.pipeline import Paths, evaluate_candidate


def test_evaluate_candidate_measures_the_compiled_artifact(digits, host, tiny_budget, shared_runs, tmp_path):
    c = Candidate(precision="int8-ptq", sparsity=0.5, temperature=4, alpha=0.5, width=0.5, budget=tiny_budget)
    stages, said = [], []
    r = evaluate_candidate(c, digits, host, Paths(shared_runs), threads=1,
                           progress=lambda s, m: (stages.append(s), said.append(m)))
    order = [s for i, s in enumerate(stages) if not i or stages[i - 1] != s]  # a stage's progress lines as one
    assert order[:3] == ["teacher", "distill", "prune"] and "compile" in order and "accuracy" in order
    # what the student learns from, said before it learns
    teacher = float(next(m for m in said if m.startswith("validation accuracy ")).split()[2].rstrip(","))
    assert teacher > 0.3 and said.index(next(m for m in said if m.startswith("validation accuracy "))) < stages.index(
        "distill")
    m = r.metrics
    for name in ("latency_ms_median", "latency_ms_p90", "ort_latency_ms_median", "accuracy", "accuracy_test"):
        assert m[name].provenance == "measured"
    assert m["peak_activation_bytes"].provenance == "estimated"
    assert 0 < m["latency_ms_median"].value <= m["latency_ms_p90"].value
    assert m["accuracy"].value > 0.3  # trained for 3 epochs; chance is 0.1
    assert abs(m["sparsity"].value - 0.5) <= 0.01
    assert m["size_bytes"].value > 0 and m["library_bytes"].value > 0
    assert r.info["provenance"] == "measured" and r.target == "host"
    folder = Paths(shared_runs).candidate(c, digits, host)
    assert folder.parent == shared_runs / "evaluate" / "digits" / "host"
    assert folder.name.startswith(c.key())
    assert r.artifacts["onnx"] == str(folder / "model.onnx")
    saved = CandidateResult.from_dict(json.loads((folder / "result.json").read_text()))
    assert saved == r
    # a search whose teacher a trial trained (no teacher stage before it) stores the teacher's scores from it
    from search.spec import SearchSpec
    from search.study import create_study, default_storage, record_result

    study = create_study(SearchSpec(name="taught-in-a-trial", budget=tiny_budget), default_storage(tmp_path), False)
    record_result(study, study.ask(), SearchSpec(name="taught-in-a-trial", budget=tiny_budget), r)
    assert round(study.user_attrs["teacher"]["accuracy"], 4) == teacher == round(r.info["teacher_scores"]["accuracy"],
                                                                                  4)
    # the same knobs trained on another budget get a folder of their own: they no longer overwrite this one's files
    other = dataclasses.replace(c, budget=dataclasses.replace(c.budget, epochs=c.budget.epochs + 1))
    assert Paths(shared_runs).candidate(other, digits, host) != folder
    # and so do the same knobs in two searches: a later search (after an upgrade, say) cannot rewrite the files an
    # earlier one's trials recorded and its exports copy
    mine, theirs = (Paths(shared_runs, name).candidate(c, digits, host) for name in ("mine", "theirs"))
    assert mine.relative_to(shared_runs / "searches" / "mine" / "candidates") == theirs.relative_to(
        shared_runs / "searches" / "theirs" / "candidates") == folder.relative_to(shared_runs / "evaluate")


def test_cli_evaluate_json(shared_runs, capsys):
    code = main(["--runs-dir", str(shared_runs), "evaluate", "--precision", "fp32", "--width", "0.25",
                 "--pruning", "unstructured", "--sparsity", "0.5", "--epochs", "1", "--finetune-epochs", "0",
                 "--repeats", "3", "--threads", "1", "--json"])
    assert code == 0
    printed = capsys.readouterr()
    out = json.loads(printed.out)  # the JSON alone on stdout; notes go to stderr
    assert out["candidate"]["width"] == 0.25 and out["metrics"]["accuracy"]["provenance"] == "measured"
    # built as asked, but the user is told why a search of the host would not have searched it
    assert printed.err.startswith("note: unstructured pruning on host: kernels that do not skip zero weights")
    assert abs(out["metrics"]["sparsity"]["value"] - 0.5) <= 0.01


@pytest.mark.parametrize(
    "argv, message",
    [(["evaluate", "--target", "no-such-board"], "Unknown target 'no-such-board'"),
     (["evaluate", "--dataset", "imagenet"], "Unknown dataset 'imagenet'"),
     (["evaluate", "--sparsity", "1.5"], "'sparsity' parameter"),
     (["evaluate", "--threads", "0"], "--threads must be between 1 and this machine's"),
     (["evaluate", "--threads", "4096"], "--threads must be between 1 and this machine's"),
     # refused before any training: the convert stage would only refuse it after
     (["evaluate", "--target", "cortex-m4", "--precision", "fp16"], "evaluate fp32, int8-ptq or int8-qat on cortex-m4")],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main(["--runs-dir", str(tmp_path)] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_evaluate_trains_imbalanced_classes_balanced_and_records_the_artifacts_balanced_accuracy(
        shared_runs, tmp_path, capsys):
    import numpy as np

    from objectives.accuracy import predict_tvm
    from search.data import load_dataset

    rng = np.random.default_rng(1)
    y = np.array([0] * 180 + [1] * 20)
    x = rng.normal(size=(200, 1, 32)).astype(np.float32)
    x[y == 1, 0, :8] += 1.5  # the rare class carries a step the model can find
    path = tmp_path / "skewed.npz"
    np.savez(path, x=x, y=y)
    argv = ["--runs-dir", str(shared_runs), "evaluate", "--dataset", str(path), "--width", "0.25", "--epochs", "2",
            "--repeats", "3", "--threads", "1", "--json"]
    assert main(argv + ["--class-weight", "balanced"]) == 0
    out = json.loads(capsys.readouterr().out)
    test = load_dataset(str(path)).y_test
    predicted = predict_tvm(out["artifacts"]["library"], load_dataset(str(path)).x_test, "float32")
    recalls = [float((predicted[test == c] == c).mean()) for c in (0, 1)]
    figure = out["metrics"]["balanced_accuracy_test"]
    assert figure["provenance"] == "measured" and figure["value"] == sum(recalls) / 2
    assert out["metrics"]["accuracy_test"]["value"] == float((predicted == test).mean())
    # the same knobs trained with classes alike are another candidate, in a folder of their own
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["artifacts"]["library"] != out["artifacts"]["library"]
