"""A search across two Ray nodes that share nothing but the network: the worker node runs in its own mount
namespace, with a private tmpfs over the tests' folders (the driver's runs folder among them) and its temp folder."""

import dataclasses
import json
import os
import shutil
import time

import numpy as np
import pytest
from mlflow import MlflowClient

from hardware_targets.profile import PROFILE_DIR
from hardware_targets.host import cpu_kind_resource, host_cpu
from search.errors import ConfigError
from search.export import export_search
from search.spec import SearchSpace, SearchSpec
from search.study import SHIPPED_PREFIX, default_storage, load_study
from search.tracking import default_tracking_uri
from search.workers import run_search
from tests.search.conftest import TINY
from tests.servers import CAN_SHARE_NOTHING, node_sharing_nothing, ray_cluster

pytestmark = [pytest.mark.skipif(not CAN_SHARE_NOTHING, reason="a private mount namespace needs root and unshare "
                                 "(the test machines have both)"), pytest.mark.own_ray]


# one shape, four candidates apart in distillation (a teacher to share); the slow run tunes what ships
SAME_SHAPES = SearchSpace(precision=("fp32",), pruning=("structured",), sparsity=(0.0, 0.0), temperature=(1.0, 8.0),
                          alpha=(0.0, 1.0), width=(0.5, 0.5))


@pytest.mark.parametrize("tuning", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_a_search_on_a_node_that_shares_no_disk_ships_its_winner_from_the_driver(tmp_path_factory, free_port,
                                                                                  tmp_path, digits, tuning):
    kind = cpu_kind_resource(host_cpu().key)
    # one CPU on the driver's node, which works in place, and one on a node that shares nothing: the two workers'
    # first candidates start at once, one on each, and both may distil from the search's one teacher
    head = ray_cluster(free_port, "--resources", json.dumps({kind: 1}),
                       num_cpus=1)
    cluster, node_dir = next(head), None
    try:
        node_dir = node_sharing_nothing(cluster, tmp_path_factory.getbasetemp(), 1, {kind: 1, "apart": 1})
        # the user's files exist on the driver only: a dataset and a target profile
        data = tmp_path / "mine.npz"
        np.savez(data, x_train=digits.x_train, y_train=digits.y_train, x_test=digits.x_test, y_test=digits.y_test)
        target = tmp_path / "my-host.yaml"
        shutil.copyfile(PROFILE_DIR / "host.yaml", target)
        import ray  # after the cluster set token authentication up: Ray reads its mode once

        ray.init(address=cluster["gcs"], logging_level="ERROR", log_to_driver=False)
        try:
            deadline = time.time() + 60
            while not ray.cluster_resources().get("apart") and time.time() < deadline:
                time.sleep(0.5)
            exists = ray.remote(num_cpus=1, resources={"apart": 0.001})(lambda path: os.path.exists(path))
            seen = ray.get(exists.remote(str(data)))
            assert seen is False, "the worker node must not see the driver's runs folder"
        finally:
            ray.shutdown()

        if not tuning:  # the cluster's job service, asked without its token and with another: one line, what to do
            _refused_without_the_token(cluster, tmp_path / "refused")

        spec = SearchSpec(name="apart", dataset=str(data), target=str(target), trials=2, workers=2, recipes=False,
                          budget=dataclasses.replace(TINY, front_tuning_minutes=3, front_tuning_trials=tuning),
                          space=SAME_SHAPES, latency_budget_ms=1.0)
        storage, uri = default_storage(tmp_path), default_tracking_uri(tmp_path)
        lines = []
        outcome = run_search(spec, tmp_path, storage_url=storage, address=cluster["gcs"], tracking_uri=uri,
                             report=lines.append)
        too_many = dataclasses.replace(spec, name="too-many", trials=1, workers=3)
        with pytest.raises(ConfigError, match="'workers' field .* at most the 2 CPU"):
            run_search(too_many, tmp_path, storage_url=storage, address=cluster["gcs"], report=lambda line: None)
    finally:
        next(head, None)
        if node_dir:
            node_dir.rmdir()

    done = [r for r in outcome.rows if r.state == "COMPLETE"]
    assert done and outcome.timings["transfer"] > 0, lines
    study = load_study("apart", storage)
    for row in done:  # every candidate's files came back to the driver's disk, at the paths the trial records
        artifacts = study.trials[row.number].user_attrs["artifacts"]
        assert os.path.isfile(artifacts["onnx"]) and os.path.isfile(artifacts["library"])
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("apart").experiment_id])
    child = next(r for r in runs if r.data.tags.get("edgesearch.trial") == str(done[0].number))
    assert {f.path for f in client.list_artifacts(child.info.run_id, "model")} >= {"model/model.onnx"}
    shipped = [study.user_attrs[k] for k in study.user_attrs if k.startswith(SHIPPED_PREFIX)]
    assert shipped, "\n".join(lines)
    if tuning:  # tuned on the worker node; the records came back and the later candidates reused them there
        assert all(s["tuning"]["tuned"] + s["tuning"]["reused"] == s["tuning"]["tasks"] > 0 for s in shipped)
    # one teacher for the search, trained before the first trial on one of the nodes, back on the driver's disk and
    # sent to the other node: no distilling candidate trains it again, on either node
    assert any(line.startswith("distillation teacher trained in") for line in lines), lines
    assert list((tmp_path / "teachers").glob("*.pt"))
    distilled = [study.trials[r.number].user_attrs["teacher"] for r in done if r.knobs["alpha"] < 1]
    assert set(distilled) <= {"cached"}, distilled

    # the winner is exported on the driver: its ONNX and the records its tuned library was built with are here, and
    # the export rebuilds and verifies it against the accuracies the worker node recorded
    card = export_search("apart", tmp_path / "export", storage_url=storage, runs_dir=tmp_path, register=False)
    assert card["verification"]["onnxruntime_test_accuracy"] == card["verification"]["recorded_onnxruntime_test_accuracy"]
    assert (tmp_path / "export" / "model.onnx").is_file()
    if card["runtime"] == "tvm" and card["tvm_target"].get("mcpu"):  # shipped tuned: the records came back too
        assert (tmp_path / "export" / "tuning_records" / "database_tuning_record.json").stat().st_size > 0


def _refused_without_the_token(cluster: dict, runs) -> None:
    """Ray's job service answered a machine without the cluster's token with a paragraph; its GCS (a search driven
    from a node) with a warning per retry for 26 s, then "Failed to connect", which did not say why."""
    import subprocess
    import sys

    plain = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    driven = subprocess.Popen([sys.executable, "-m", "search.cli", "--runs-dir", str(runs), "submit", "--name", "x",
                               "--trials", "1", "--address", cluster["gcs"]], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=plain)
    dashboard = cluster["dashboard"]
    for env, said in ((plain, "needs an authentication token: export RAY_AUTH_MODE=token"),
                      ({**plain, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32},
                       "refused this machine's authentication token")):
        done = subprocess.run([sys.executable, "-m", "search.cli", "logs", "apart", "--address", dashboard],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 2 and said in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "`ray get-auth-token` on its head node" in done.stderr
    err = driven.communicate(timeout=180)[1]
    assert driven.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert f"The Ray cluster at {cluster['gcs']} needs an authentication token: export RAY_AUTH_MODE=token" in err
