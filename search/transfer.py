"""Files that travel by value with Ray tasks: a node of the cluster may share nothing with the driver but the network.

A worker writes a candidate's files (ONNX, libraries, ``result.json``) under the runs folder the driver named, on its
own disk, and returns them in a ``Bundle`` beside the result; the driver writes them at the same places in its runs
folder. Tasks that read a finished candidate (re-timing, shipping) get its bundle the same way. On one machine, or
a cluster that shares the runs folder, every file is already in place and nothing is written.

MetaSchedule records are merged, not copied: a record database's tuning records point into its own workload list,
so two databases are combined record by record (``merge_records``).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

RECORD_FILES = ("database_workload.json", "database_tuning_record.json")
MARKS = ".edgesearch-drivers"  # under the runs folder: one file per running driver, named by its token


def mark_driver_disk(root: Path) -> str:
    """Leave a fresh token in the driver's runs folder: a node that finds it there shares the driver's disk."""
    token = secrets.token_hex(16)
    folder = Path(root) / MARKS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / token).touch()
    return token


def unmark_driver_disk(root: Path, token: str) -> None:
    (Path(root) / MARKS / token).unlink(missing_ok=True)


def shares_disk(root: Path, token: str) -> bool:
    return (Path(root) / MARKS / token).is_file()


@dataclass
class Bundle:
    """Files under a runs folder, by value: path relative to the folder -> bytes."""

    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(map(len, self.files.values()))


def pack(root: Path, *paths: Path) -> Bundle:
    """The files among ``paths`` (a folder stands for every file in it, recursively) that lie under ``root``."""
    root = Path(root).resolve()
    files = {}
    for path in map(Path, paths):
        path = path.resolve()
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
        for p in found:
            if not p.name.endswith(".lock"):  # a lock is the node's own
                files[str(p.relative_to(root))] = p.read_bytes()
    return Bundle(files)


def unpack(bundle: Bundle | None, root: Path, *, skip: tuple[str, ...] = ()) -> int:
    """Write the bundle's files under ``root`` where they are missing or differ; returns the bytes written.

    Each file is written to a temporary name and renamed, so a reader never sees half a library. Names with a
    part in ``skip`` are left out (record databases, which are merged instead)."""
    written = 0
    for rel, data in (bundle.files.items() if bundle else ()):
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ValueError(f"a bundled file must lie under the runs folder: {rel!r}")
        if any(part in skip for part in Path(rel).parts):
            continue
        dest = Path(root) / rel
        if dest.is_file() and dest.stat().st_size == len(data) and dest.read_bytes() == data:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o755 if dest.suffix == ".so" else 0o644)
        os.replace(tmp, dest)
        written += len(data)
    return written


def record_folders(bundle: Bundle) -> dict[str, dict[str, bytes]]:
    """The record databases in a bundle: folder (relative) -> file name -> bytes."""
    out: dict[str, dict[str, bytes]] = {}
    for rel, data in bundle.files.items():
        path = Path(rel)
        if path.name in RECORD_FILES:
            out.setdefault(str(path.parent), {})[path.name] = data
    return out


def merge_records(bundle: Bundle | None, root: Path) -> int:
    """Add the bundle's MetaSchedule records to the databases of the same target under ``root``; returns how many
    records were new there. A workload already tuned keeps its best record either way (MetaSchedule reads the
    fastest record of a workload)."""
    if not bundle:
        return 0
    from hardware_targets.compile import merge_databases

    added = 0
    for rel, files in record_folders(bundle).items():
        dest = Path(root) / rel
        if set(files) != set(RECORD_FILES) or all(
                (dest / n).is_file() and (dest / n).read_bytes() == data for n, data in files.items()):
            continue  # incomplete, or the same database: nothing to add
        if not any((dest / n).is_file() for n in RECORD_FILES):  # none here yet: the bundle's is the database
            unpack(Bundle({f"{rel}/{n}": data for n, data in files.items()}), Path(root))
            added += sum(1 for line in files[RECORD_FILES[1]].splitlines() if line.strip())
            continue
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            added += merge_databases(Path(tmp), dest)
    return added


def receive(bundle: Bundle | None, root: Path) -> tuple[int, int]:
    """Land a bundle under ``root``: its files where missing or different, its tuning records merged; returns the
    bytes written and the records added."""
    return unpack(bundle, root, skip=RECORD_FILES), merge_records(bundle, root)
