import pytest

from hardware_targets import available_profiles, get_backend, load_profile
from search.errors import ProfileError


def test_every_shipped_profile_loads():
    names = available_profiles()
    assert "host" in names
    for name in names:
        p = load_profile(name)
        assert p.name == name and "kind" in p.tvm_target


def test_host_profile_measures_locally():
    p = load_profile("host")
    assert p.backend == "local" and get_backend(p).provenance == "measured"


@pytest.mark.parametrize(
    "text, message",
    [("just a string", "YAML mapping"),
     ("name: x\nbackend: local\n", "field 'tvm_target' is required"),
     ("name: x\nbackend: quantum\ntvm_target: {kind: llvm}\n", "field 'backend' must be one of"),
     ("name: x\nbackend: local\ntvm_target: {kind: llvm}\ncores: two\n", "field 'cores' must be int"),
     ("name: x\nbackend: local\ntvm_target: {mcpu: a}\n", "must have a 'kind'"),
     ("name: [unclosed\n", "not valid YAML")],
)
def test_malformed_profiles_name_file_and_field(tmp_path, text, message):
    path = tmp_path / "board.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path)
    assert "board.yaml" in str(info.value)


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(ProfileError, match="Known targets: .*host"):
        load_profile("toaster")
