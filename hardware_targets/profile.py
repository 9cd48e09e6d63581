"""Target profiles: one YAML file per device, loaded and validated by one function.

Adding a device means adding ``profiles/<name>.yaml``; nothing in code names a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from search.errors import ProfileError

PROFILE_DIR = Path(__file__).parent / "profiles"
BACKENDS = ("local", "remote", "emulated")


@dataclass(frozen=True)
class TargetProfile:
    name: str
    backend: str
    tvm_target: dict[str, Any]
    description: str = ""
    cores: int | None = None
    clock_mhz: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # device figures the backend may use
    source: str = ""  # the file it came from


# field -> (accepted types, required)
_SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "backend": ((str,), True),
    "tvm_target": ((dict,), True),
    "description": ((str,), False),
    "cores": ((int,), False),
    "clock_mhz": ((int, float), False),
}


def available_profiles(directory: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in Path(directory).glob("*.yaml"))


def load_profile(name_or_path: str | Path, directory: Path = PROFILE_DIR) -> TargetProfile:
    """Load a shipped profile by name, or any profile file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(directory) / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ProfileError(
                f"Unknown target {str(name_or_path)!r}. Known targets: {', '.join(available_profiles(directory))} "
                "(or pass the path of a profile .yaml file)."
            )
    elif not path.is_file():
        raise ProfileError(f"Profile file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML ({exc}).") from exc
    return _validate(data, path)


def _validate(data: Any, path: Path) -> TargetProfile:
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile must be a YAML mapping of fields; got {type(data).__name__}.")
    for key, (types, required) in _SCHEMA.items():
        value = data.get(key)
        if value is None:
            if required:
                raise ProfileError(f"{path}: field '{key}' is required ({' or '.join(t.__name__ for t in types)}).")
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            raise ProfileError(
                f"{path}: field '{key}' must be {' or '.join(t.__name__ for t in types)}; "
                f"got {type(value).__name__} {value!r}."
            )
    if data["backend"] not in BACKENDS:
        raise ProfileError(f"{path}: field 'backend' must be one of {list(BACKENDS)}; got {data['backend']!r}.")
    if "kind" not in data["tvm_target"]:
        raise ProfileError(f"{path}: field 'tvm_target' must have a 'kind' (e.g. llvm).")
    known = {k: data[k] for k in _SCHEMA if k in data}
    extra = {k: v for k, v in data.items() if k not in _SCHEMA}
    return TargetProfile(**known, extra=extra, source=str(path))
