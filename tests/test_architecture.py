"""Dependencies point one way: keras_models <- tflite_export <- pipeline <- bench.

`keras_models` knows nothing of export or training, and `tflite_export` is a library that never imports `pipeline`
(what both need, the preprocessing contract, the quantization scheme, the file helpers and the model card, lives at or
below `tflite_export`). Checked two ways: statically, every import statement of every source file (including imports
inside functions, which run only on some paths); and at run time, importing every module of a package in a fresh
interpreter and looking at what got loaded (which also catches an import hidden behind a third module).

Also: project imports sit at the top of a module unless a comment says why, no module of `pipeline` or `tflite_export`
is over 500 lines, importing the command modules defines no absl flag (each command defines its own when it runs),
and every command runs through the shared entry (tflite_export.command: absl flags, one error line).
"""

from __future__ import annotations

import ast
import pkgutil
import re
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


# ------------------------------------------------------------------------------------------- imports, sizes, flags
PACKAGES = ("keras_models", "tflite_export", "pipeline")
PROJECT = (*PACKAGES, "bench")
MAX_LINES = 500
# Every `python -m` command of the project: the modules of pipeline/, tflite_export/ and bench/ that run as a program,
# and their packages with a __main__.py.
COMMANDS = tuple(sorted(
    [f"{package}.{path.stem}" for package in ("pipeline", "tflite_export", "bench")
     for path in (REPO / package).glob("*.py")
     if re.search(r'^if __name__ == "__main__":', path.read_text(encoding="utf-8"), re.M)
     and path.stem != "xnnpack_child"]  # a child process of tflite_export.verify, not a command
    + [f"{package}.{path.parent.name}" for package in ("pipeline", "tflite_export", "bench")
       for path in (REPO / package).glob("*/__main__.py")]))


def _function_level_imports(path) -> list[tuple[int, str]]:
    """(line, statement) of every import of a project module inside a function that no comment explains: one on the
    statement's first line or a comment line right above it (a cycle, or a heavy import only one path needs)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = set()
    for function in ast.walk(ast.parse("\n".join(lines), filename=str(path))):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            explained = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].lstrip().startswith("#")
            if any(m.split(".")[0] in PROJECT for m in modules) and not explained:
                found.add((node.lineno, lines[node.lineno - 1].strip()))
    return sorted(found)


@pytest.mark.parametrize("package", PACKAGES)
def test_project_imports_sit_at_module_top_unless_a_comment_says_why(package):
    offending = [f"{path.relative_to(REPO)}:{line}: {statement}"
                 for path in sorted((REPO / package).rglob("*.py"))
                 for line, statement in _function_level_imports(path)]
    assert not offending, "imports inside functions without a comment saying why:\n" + "\n".join(offending)


def test_the_import_check_sees_an_unexplained_import(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("def a():\n    from pipeline.data import load_dataset\n\n\n"
                      "def b():\n    import numpy  # not a project module\n"
                      "    from pipeline.report import Report  # pipeline.report imports this module\n"
                      "    # TensorFlow-heavy, only on this path\n    import keras_models\n")
    assert _function_level_imports(source) == [(2, "from pipeline.data import load_dataset")]


@pytest.mark.parametrize("package", ["pipeline", "tflite_export"])
def test_no_module_is_longer_than_500_lines(package):
    lengths = {str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8").splitlines())
               for path in sorted((REPO / package).rglob("*.py"))}
    too_long = [f"{name}: {lines} lines" for name, lines in lengths.items() if lines > MAX_LINES]
    assert not too_long, f"modules over {MAX_LINES} lines (one job each):\n" + "\n".join(too_long)


def test_importing_every_command_module_defines_no_flag():
    """Commands define their flags when they run (in `__main__`), not on import: any of them can be imported beside
    any other (a test, the Python API, a notebook) without two definitions of --dataset or --image_size colliding."""
    code = (
        "import importlib\n"
        "from absl import flags\n"
        "import keras_models.backend\n"
        "before = set(flags.FLAGS)\n"
        f"for name in {COMMANDS!r}:\n"
        "    importlib.import_module(name)\n"
        "print(' '.join(sorted(set(flags.FLAGS) - before)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [], f"flags defined on import: {result.stdout.split()}"


def test_the_command_list_sees_every_kind_of_command():
    assert {"pipeline.train_and_export", "pipeline.import_tflite", "pipeline.android", "tflite_export.export",
            "tflite_export.inspect", "tflite_export.evaluate", "tflite_export.benchmark", "tflite_export.demo",
            "bench.cifar10", "bench.latency", "bench.web_demo"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_runs_through_the_shared_entry(name):
    """One command-line style: the module's `main` is a tflite_export.command.Command named after the module, run by
    `run_command` (absl, one error line, aliases of old spellings), and nothing parses arguments with argparse."""
    module = REPO / f"{name.replace('.', '/')}.py"  # a module, or a package with a __main__.py
    paths = [module] if module.exists() else sorted((REPO / name.replace(".", "/")).glob("*.py"))
    source = "\n".join(path.read_text(encoding="utf-8") for path in paths)
    imports = [alias.name for path in paths for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.Import) for alias in node.names]
    assert "argparse" not in imports, f"{name} imports argparse"
    assert f'main = Command("{name}",' in source, f"{name}: main is not a Command named {name!r}"
    assert "run_command(main)" in source, name
