"""The packages form layers: the service (``search``) over ``objectives`` over ``hardware_targets``; a lower layer
never imports a higher one, not even inside a function, so each can be used and tested without the ones above."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABOVE = {"hardware_targets": {"objectives", "search", "benchmarks"}, "objectives": {"search", "benchmarks"},
         "search": {"benchmarks"}}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_no_layer_imports_one_above_it(package):
    wrong = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & ABOVE[package])
             for path in sorted((ROOT / package).rglob("*.py"))}
    assert {path: names for path, names in wrong.items() if names} == {}
