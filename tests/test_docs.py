"""The results pages read as results: BENCHMARKS.md and the docs beside it speak of the product alone, and every
command they name exists.

BENCHMARKS.md carries each figure's revision in a table row, never in prose; no page tells how it was written (no
"session", no names of who did what) or where on some machine it was run (no `cd` into an absolute path). Every
`python -m bench.NAME` of BENCHMARKS.md and of the benchmark index (bench/README.md) is a module in bench/, every
`python -m experiments.NAME` one in experiments/, every benchmark and experiment is listed in its index, and every
link into a page's section finds the heading. experiments/ is not installed, so nothing installed may import it.
"""

from __future__ import annotations

import ast
import re
import tomllib

import pytest

from tests.conftest import REPO

BENCHMARKS = REPO / "BENCHMARKS.md"
BENCH_INDEX = REPO / "bench" / "README.md"
EXPERIMENTS_INDEX = REPO / "experiments" / "README.md"
PAGES = [BENCHMARKS, BENCH_INDEX, EXPERIMENTS_INDEX, *sorted((REPO / "docs").glob("*.md"))]

# Benchmarks the index lists whose scripts are being written on other branches (the transfer-learning comparison and
# the browser latency); a name here may be absent from bench/. Remove it once its script is merged.
PENDING: set[str] = set()

# A git revision as the pages write them: 7-40 hex digits with at least one digit and one letter (so that neither a
# number nor a word such as "defaced" counts).
COMMIT = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
CD_ABSOLUTE = re.compile(r"\bcd\s+[\"']?(/|~|\$HOME)")
MACHINE_PATH = re.compile(r"(?<![\w.~])/(work|home|root|Users|tmp)/")
# Who did what: first-person narration and the roles of the people who built the project.
WHO = re.compile(r"\b(we|my|the lead|helpers?|engineers?)\b", re.IGNORECASE)


def _modules(package: str) -> set[str]:
    return {path.stem for path in (REPO / package).glob("*.py") if not path.stem.startswith("_")}


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line that is not a table row."""
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if not line.lstrip().startswith("|")]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", path.read_text(encoding="utf-8"), re.MULTILINE)}


def test_benchmarks_names_revisions_only_in_table_rows():
    found = [f"BENCHMARKS.md:{n}: {line.strip()}" for n, line in _prose_lines(BENCHMARKS.read_text(encoding="utf-8"))
             if COMMIT.search(line)]
    assert not found, "revisions belong in a results row:\n" + "\n".join(found)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_page_speaks_of_the_product_alone(page):
    found = []
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        for name, pattern in [("session", re.compile("session", re.IGNORECASE)), ("cd into an absolute path",
                              CD_ABSOLUTE), ("machine path", MACHINE_PATH), ("who did what", WHO)]:
            if pattern.search(line):
                found.append(f"{page.relative_to(REPO)}:{n}: {name}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("page", "package", "allowed"), [
    (BENCHMARKS, "bench", PENDING), (BENCH_INDEX, "bench", PENDING), (BENCHMARKS, "experiments", set()),
    (EXPERIMENTS_INDEX, "experiments", set()), (REPO / "docs" / "findings.md", "experiments", set()),
], ids=lambda v: v.name if hasattr(v, "name") else None)
def test_every_command_named_is_a_module(page, package, allowed):
    named = set(re.findall(rf"python -m {package}\.([a-z_][a-z0-9_]*)", page.read_text(encoding="utf-8")))
    missing = named - _modules(package) - allowed
    assert not missing, f"{page.relative_to(REPO)} names python -m {package}.X for X in {sorted(missing)}"


@pytest.mark.parametrize(("index", "package"), [(BENCH_INDEX, "bench"), (EXPERIMENTS_INDEX, "experiments")],
                         ids=["bench", "experiments"])
def test_every_script_is_in_its_index(index, package):
    listed = set(re.findall(rf"`python -m {package}\.([a-z_][a-z0-9_]*)", index.read_text(encoding="utf-8")))
    assert _modules(package) <= listed, f"not in {index.relative_to(REPO)}: {sorted(_modules(package) - listed)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_section_link_finds_its_heading(page):
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", page.read_text(encoding="utf-8")):
        path = (page.parent / target).resolve() if target else page
        if path.suffix == ".md" and (not path.exists() or anchor not in _anchors(path)):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{page.relative_to(REPO)}: no such section: {broken}"


def test_experiments_are_not_installed_and_nothing_installed_imports_them():
    with open(REPO / "pyproject.toml", "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    assert "experiments" not in packages and "bench" in packages
    offending = []
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                offending += [f"{path.relative_to(REPO)}:{node.lineno}" for name in names
                              if name.split(".")[0] == "experiments"]
    assert not offending, f"installed code imports experiments: {offending}"


def test_the_checks_see_what_they_forbid():
    """Each pattern finds the form it is meant to find, and lets the page's ordinary text through."""
    assert COMMIT.search("measured at 660337b plus edits") and COMMIT.search("e5914a3")
    assert not COMMIT.search("a defaced 1234567 avx512f run of 2026-11-30")
    assert CD_ABSOLUTE.search("cd /srv/repo && python -m bench.latency") and CD_ABSOLUTE.search("cd ~/repo")
    assert not CD_ABSOLUTE.search("python -m bench.latency --runs 300")
    assert MACHINE_PATH.search("the file /home/someone/x")
    assert not MACHINE_PATH.search("../shared/datasets and ~/.cache/mobilenet-bench")
    assert WHO.search("then we reran it") and not WHO.search("ours int8 as exported")
    assert [n for n, _ in _prose_lines("text\n| row | 660337b |\nmore")] == [1, 3]
    assert _slug("Re-exporting Google's V3-Small: the gap is rounding, not weights") == \
        "re-exporting-googles-v3-small-the-gap-is-rounding-not-weights"
    assert _slug("Browser (LiteRT.js)") == "browser-litertjs"
