"""Dependencies point one way: keras_models <- tflite_export <- pipeline <- bench.

`keras_models` knows nothing of export or training, and `tflite_export` is a library that never imports `pipeline`
(what both need, the preprocessing contract, the quantization scheme, the file helpers and the model card, lives at or
below `tflite_export`). Checked two ways: statically, every import statement of every source file (including imports
inside functions, which run only on some paths); and at run time, importing every module of a package in a fresh
interpreter and looking at what got loaded (which also catches an import hidden behind a third module).
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

# package -> the project's packages it must never import
FORBIDDEN = {"keras_models": ("tflite_export", "pipeline", "bench"), "tflite_export": ("pipeline", "bench")}


def _modules(package: str) -> list[str]:
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(REPO / package)])]


def _imported_packages(path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in the file, wherever it is."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_statement_points_up(package):
    offending = [f"{path.relative_to(REPO)}:{line} imports {imported}"
                 for path in sorted((REPO / package).rglob("*.py"))
                 for line, imported in _imported_packages(path) if imported in FORBIDDEN[package]]
    assert not offending, "\n".join(offending)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_importing_every_module_loads_nothing_above(package):
    code = (
        "import importlib, sys\n"
        f"for name in {_modules(package)!r}:\n"
        "    importlib.import_module(name)\n"
        f"print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN[package]!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [], f"importing {package} loaded: {result.stdout.split()}"


def test_the_checks_see_an_upward_import(tmp_path):
    """The static scan finds an import inside a function, the form the old upward imports took."""
    source = tmp_path / "module.py"
    source.write_text("def load():\n    from pipeline.data import load_dataset\n    import bench.latency\n")
    assert _imported_packages(source) == [(2, "pipeline"), (3, "bench")]
