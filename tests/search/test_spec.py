import re
from pathlib import Path

import pytest

from search.errors import ConfigError, DatasetError, ProfileError
from search.spec import (HALVING_FROM_TRIALS, SAMPLERS, SearchSpace, SearchSpec, check_inputs, check_resources,
                         load_spec_file)


def test_defaults_cover_all_four_knobs():
    spec = SearchSpec(name="s")
    assert set(spec.space.precision) == {"fp32", "fp16", "int8-ptq", "int8-qat"}
    assert spec.space.sparsity == (0.0, 0.95) and spec.space.temperature == (1.0, 10.0)
    assert spec.sampler == "auto" and spec.recipes and spec.halving is None
    assert not spec.uses_halving and SearchSpec(name="s", trials=100).uses_halving  # on from 100 trials


@pytest.mark.parametrize("fields", [{"max_accuracy_drop": 1.5}, {"max_accuracy_drop": 0}, {"min_accuracy": 0},
                                    {"min_accuracy": "high"}, {"recipes": "yes"}, {"halving": 1},
                                    {"max_accuracy_drop": 0.1, "min_accuracy": 0.9}])
def test_floor_recipe_and_halving_fields_are_checked(fields):
    with pytest.raises(ConfigError, match="max_accuracy_drop|min_accuracy|'recipes'|'halving'"):
        SearchSpec.from_dict({"name": "s", **fields})


@pytest.mark.parametrize(
    "fields, message",
    [({"trials": 0}, "'trials' field"), ({"trials": -3}, "'trials' field"), ({"workers": 0}, "'workers' field"),
     ({"latency_budget_ms": 0}, "'latency_budget_ms' field"), ({"latency_budget_ms": -1.0}, "'latency_budget_ms'"),
     ({"sampler": "grid"}, "'sampler' field"), ({"name": "../etc"}, "'name' field"), ({"name": "a\nb"}, "'name'"),
     ({"space": {"precision": []}}, "'space.precision' field"),
     ({"space": {"precision": ["int4"]}}, "'space.precision' field"),
     ({"space": {"sparsity": [0.9, 0.1]}}, "'space.sparsity' field"),
     ({"space": {"width": "wide"}}, "'space.width' field"),
     ({"space": {"depth": [1, 2]}}, "Unknown field"), ({"colour": "red"}, "Unknown field"),
     ({"budget": {"epochs": 0}}, "'epochs'"), ({"seed": -1}, "'seed' field"), ({"seed": 2**32}, "'seed' field"),
     ({"seed": "7"}, "'seed' field"),
     ({"metric": "f1"}, r"'metric' field .*\['accuracy', 'balanced_accuracy'\]"),
     ({"class_weight": "inverse"}, r"'class_weight' field .*\['none', 'balanced'\]")],
)
def test_invalid_specs_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpec.from_dict({"name": "s", **fields})


@pytest.mark.parametrize("fields, hint", [
    ({"latency_budget": 5}, "('latency_budget': did you mean 'latency_budget_ms'?)"),
    ({"epochs": 3}, "('epochs' belongs under 'budget')"),
    ({"budget": {"epoch": 3}}, "('epoch': did you mean 'epochs'?)"),
    ({"space": {"precison": ["fp32"], "trials": 4}},
     "('precison': did you mean 'precision'?; 'trials' belongs at the top level)"),
    ({"space": {"tuning_trials": 4}}, "('tuning_trials' belongs under 'budget')")])
def test_an_unknown_field_says_what_it_was_likely_meant_to_be(fields, hint):
    with pytest.raises(ConfigError, match=re.escape(hint)):
        SearchSpec.from_dict({"name": "s", **fields})


def test_spec_files_yaml_and_toml(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("name: y\ntrials: 3\nspace:\n  precision: [fp32, int8-ptq]\n  width: [0.5, 1.0]\n")
    spec = SearchSpec.from_dict(load_spec_file(y))
    assert spec.trials == 3 and spec.space.precision == ("fp32", "int8-ptq") and spec.space.width == (0.5, 1.0)
    t = tmp_path / "s.toml"
    t.write_text('name = "t"\nlatency_budget_ms = 0.2\n[budget]\nepochs = 2\n')
    spec = SearchSpec.from_dict(load_spec_file(t))
    assert spec.latency_budget_ms == 0.2 and spec.budget.epochs == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [oops\n")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_spec_file(bad)


def test_round_trip_and_inputs():
    spec = SearchSpec(name="rt", space=SearchSpace(precision=("fp32",)))
    assert SearchSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ProfileError, match="Unknown target"):
        check_inputs(SearchSpec(name="x", target="toaster"))
    with pytest.raises(DatasetError, match="Unknown dataset"):
        check_inputs(SearchSpec(name="x", dataset="imagenet"))
    with pytest.raises(ConfigError, match="'workers' field .* at most the 2 available"):
        check_resources(SearchSpec(name="x", workers=3), available_cpus=2)


def test_the_readme_spec_example_is_a_valid_spec_and_its_comments_give_the_defaults(tmp_path):
    """README's example is what users copy: it must load, and what its comments say of defaults must hold."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.yaml"
    path.write_text(example)
    spec = SearchSpec.from_dict(load_spec_file(path))
    assert (spec.target, spec.trials, spec.halving, spec.uses_halving) == ("cortex-m4", 48, None, False)
    comments = dict(re.findall(r"^(\w+):[^#\n]*#\s*(.*)$", example, re.M))
    assert f"null = on from {HALVING_FROM_TRIALS} trials" in comments["halving"]
    assert all(name in comments["sampler"] for name in SAMPLERS)


def test_a_submitted_spec_names_its_files_by_absolute_path_so_export_works_from_any_folder(tmp_path, monkeypatch):
    """A search is submitted from the dataset's folder and exported, resumed or shown from another: the stored
    spec holds the file's absolute path. A missing file keeps the path as typed, for the error to name it."""
    import numpy as np

    from hardware_targets.profile import PROFILE_DIR
    from search.cli import _absolute_inputs
    from search.export import _searched_dataset

    x = np.random.default_rng(0).normal(size=(40, 1, 16)).astype(np.float32)
    np.savez(tmp_path / "sig.npz", x=x, y=np.arange(40) % 2)
    (tmp_path / "board.yaml").write_text((PROFILE_DIR / "rpi4.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    spec = _absolute_inputs(SearchSpec(name="rel", dataset="sig.npz", target="board.yaml"))
    assert (spec.dataset, spec.target) == (str(tmp_path / "sig.npz"), str(tmp_path / "board.yaml"))
    # the search says the target as its candidates are filed: by the profile's own name, not the file's
    assert (spec.target_name, SearchSpec(name="x", target="rpi5").target_name) == ("rpi4", "rpi5")
    assert SearchSpec(name="x", target=str(tmp_path / "moved.yaml")).target_name == "moved"
    assert _absolute_inputs(SearchSpec(name="gone", dataset="gone.npz")).dataset == "gone.npz"
    monkeypatch.chdir(tmp_path.parent)
    assert _searched_dataset(spec, "rel").sample_shape == (1, 16)
    # a search stored before, with the path as typed: the message says where to run export from
    with pytest.raises(DatasetError, match="relative to the folder it was submitted from: run export from that"):
        _searched_dataset(SearchSpec(name="old", dataset="sig.npz"), "old")


def test_a_spec_file_names_its_files_from_its_own_folder_where_the_current_one_has_none(tmp_path, monkeypatch,
                                                                                       capsys):
    """A spec kept beside its data (specs/har.yaml naming har.npz) runs from the repository root; a path that
    names a file from the current folder keeps that meaning; a file found in neither is named with both places."""
    import numpy as np

    from hardware_targets.profile import PROFILE_DIR
    from search.cli import _spec_from_args, build_parser, main

    (tmp_path / "specs").mkdir()
    x = np.random.default_rng(0).normal(size=(40, 1, 16)).astype(np.float32)
    np.savez(tmp_path / "specs" / "sig.npz", x=x, y=np.arange(40) % 2)
    (tmp_path / "specs" / "board.yaml").write_text((PROFILE_DIR / "rpi4.yaml").read_text())
    (tmp_path / "specs" / "s.yaml").write_text("name: beside\ndataset: sig.npz\ntarget: board.yaml\n")
    monkeypatch.chdir(tmp_path)
    spec = _spec_from_args(build_parser().parse_args(["submit", "--spec", "specs/s.yaml"]))
    assert (spec.dataset, spec.target) == (str(tmp_path / "specs" / "sig.npz"), str(tmp_path / "specs" / "board.yaml"))
    check_inputs(spec)
    # the current folder's file of the same name wins, as before
    np.savez(tmp_path / "sig.npz", x=x[:, :, :8], y=np.arange(40) % 2)
    assert _spec_from_args(build_parser().parse_args(["submit", "--spec", "specs/s.yaml"])).dataset \
        == str(tmp_path / "sig.npz")
    (tmp_path / "specs" / "s.yaml").write_text("name: gone\ndataset: gone.npz\n")
    assert main(["--runs-dir", str(tmp_path / "runs"), "submit", "--spec", "specs/s.yaml", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "Dataset file 'gone.npz' does not exist" in err and str(tmp_path) in err and "spec file's folder" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*"))


def test_every_command_says_what_it_does_and_what_its_arguments_are():
    """`edgesearch logs --help` printed only its usage: each command's --help now opens with what it does, and
    every argument, a search's name too, has a line of help."""
    import argparse

    from search.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"submit", "status", "export", "logs", "stop"} <= set(commands)
    for name, parser in commands.items():
        assert parser.description, f"'edgesearch {name} --help' does not say what the command does"
        bare = [a.dest for a in parser._actions if not a.help and not isinstance(a, argparse._HelpAction)]
        assert not bare, f"'edgesearch {name} --help' gives no help for {bare}"


@pytest.mark.parametrize("argv, hint", [
    (["submit", "--budget-ms", "1"], "--budget-ms: did you mean --latency-budget-ms?"),
    (["submit", "--trails", "3"], "--trails: did you mean --trials?"),
    (["export", "s", "--out", "o", "--forse"], "--forse: did you mean --force?"),
    (["status", "s", "stray"], "unrecognized arguments: stray; see 'edgesearch status --help'"),
])
def test_a_mistyped_option_is_refused_by_its_command_with_the_option_meant(argv, hint, capsys, tmp_path):
    """`submit --budget-ms 1` said only "unrecognized arguments", under the usage of edgesearch itself: the
    command's usage now says it, with the option it most likely meant, before anything runs."""
    from search.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["--runs-dir", str(tmp_path / "runs"), *argv])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and hint in err
    assert err.startswith(f"usage: edgesearch {argv[0]} ") and f"edgesearch {argv[0]}: error:" in err
    assert not (tmp_path / "runs").exists()


def test_a_taken_name_is_refused_before_the_searchs_files_are_touched(tmp_path, capsys):
    """`submit --name many` of a name another search holds overwrote that search's spec.json (and, with
    --keep-inputs, its kept dataset) before it was refused: now nothing is written."""
    import numpy as np

    from search.cli import _write_spec, main
    from search.study import create_study, default_storage

    runs = tmp_path / "runs"
    held = SearchSpec(name="many", dataset=str(tmp_path / "sig.npz"))
    np.savez(tmp_path / "sig.npz", x=np.zeros((40, 1, 16), np.float32), y=np.arange(40) % 2)
    create_study(held, default_storage(runs), resume=False)
    _write_spec(runs, held)
    kept = runs / "searches" / "many" / "inputs" / "sig.npz"
    kept.parent.mkdir()
    kept.write_bytes((tmp_path / "sig.npz").read_bytes())
    before = {p: p.read_bytes() for p in (runs / "searches" / "many").rglob("*") if p.is_file()}
    other = tmp_path / "other" / "sig.npz"
    other.parent.mkdir()
    np.savez(other, x=np.ones((40, 1, 16), np.float32), y=np.arange(40) % 2)
    assert main(["--runs-dir", str(runs), "submit", "--name", "many", "--dataset", str(other), "--keep-inputs",
                 "--no-mlflow"]) == 2
    assert "A search named 'many' already exists" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (runs / "searches" / "many").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("detach", [[], ["--detach", "--address", "http://127.0.0.1:9"]])
def test_a_malformed_dataset_is_refused_before_anything_is_written(tmp_path, capsys, detach):
    """A dataset file that exists but cannot be read as given (grey images saved without a layout) was found only
    once the search started: its spec.json and an empty store were left behind, and a detached search would have
    reached the cluster."""
    import numpy as np

    from search.cli import main

    np.savez(tmp_path / "grey.npz", x=np.zeros((40, 28, 28), np.uint8), y=np.arange(40) % 2)
    runs = tmp_path / "runs"
    assert main(["--runs-dir", str(runs), "submit", "--name", "grey", "--dataset", str(tmp_path / "grey.npz"),
                 "--no-mlflow", *detach]) == 2
    assert "which may be grey images" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.rglob("*"))


def test_an_option_of_edgesearch_itself_mistyped_or_misplaced_is_named(capsys, tmp_path):
    """`edgesearch --run-dir x list` said "invalid choice: 'x'" (the mistyped option's value taken for the command);
    `edgesearch list --runs-dir x` did not say the option goes before the command."""
    from search.cli import main

    for argv, said in ((["--run-dir", str(tmp_path), "list"], "edgesearch: error: unrecognized option --run-dir "
                        "before the command (did you mean --runs-dir?)"),
                       (["list", "--runs-dir", str(tmp_path)], "--runs-dir goes before the command: edgesearch "
                        "--runs-dir ... list ...")):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and said in err and "invalid choice" not in err
    assert main(["--runs", str(tmp_path / "runs"), "list"]) == 0  # an abbreviation argparse takes still works
