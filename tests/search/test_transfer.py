"""Files by value between nodes: what a worker packs is what the driver writes, once, and only under the runs folder."""

import pytest

from search.errors import CandidateError
from search.transfer import Bundle, mark_driver_disk, pack, shares_disk, unmark_driver_disk, unpack


def test_a_bundle_lands_at_the_same_places_once(tmp_path):
    worker, driver = tmp_path / "worker", tmp_path / "driver"
    folder = worker / "candidates" / "digits" / "host" / "abc"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx")
    (folder / "model.so").write_bytes(b"\x7fELF")
    (folder / ".lock").write_text("")  # a lock is the node's own
    bundle = pack(worker, folder, worker / "teachers" / "missing.pt")
    assert sorted(bundle.files) == ["candidates/digits/host/abc/model.onnx", "candidates/digits/host/abc/model.so"]
    assert unpack(bundle, driver) == bundle.size == 8
    assert (driver / "candidates/digits/host/abc/model.so").read_bytes() == b"\x7fELF"
    assert unpack(bundle, driver) == 0  # already there, the same: nothing written (one machine, a shared disk)
    (driver / "candidates/digits/host/abc/model.onnx").write_bytes(b"stale")
    assert unpack(bundle, driver) == 4


def test_a_bundle_cannot_write_outside_the_runs_folder(tmp_path):
    with pytest.raises(ValueError, match="must lie under the runs folder"):
        unpack(Bundle({"../escape": b"x"}), tmp_path / "runs")
    assert not (tmp_path / "escape").exists()


@pytest.mark.slow  # ~50 s; moving artifacts between nodes runs by default in test_share_nothing
def test_a_node_shares_the_disk_only_while_the_driver_marks_it(tmp_path):
    token = mark_driver_disk(tmp_path)
    other = mark_driver_disk(tmp_path)  # a second search on the same runs folder keeps its own mark
    assert shares_disk(tmp_path, token) and shares_disk(tmp_path, other)
    assert not shares_disk(tmp_path / "elsewhere", token)
    unmark_driver_disk(tmp_path, token)
    assert not shares_disk(tmp_path, token) and shares_disk(tmp_path, other)


def test_a_built_in_dataset_made_on_another_node_is_checked_by_content(digits):
    from search.workers import _dataset

    assert _dataset(("digits", digits.content_digest())).content_digest() == digits.content_digest()
    with pytest.raises(CandidateError, match="came out different on this node than on the driver"):
        _dataset(("digits", "0" * 16))
