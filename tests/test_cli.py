"""One command-line style for every `python -m` command (tflite_export.command): absl flags, `--help` exiting 0, one
error line with exit code 2 for bad input, old spellings accepted with a notice, and `--json PATH` (`-`: stdout)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, error_line
from tests.test_architecture import COMMANDS
from tflite_export import benchmark, export, inspect
from tflite_export.cli import run_main
from tflite_export.command import STDOUT

# Each command run as `python -m` would run it, in a child forked from one interpreter that has imported TensorFlow
# once (a process per command would take 5 s each): (name, arguments) -> (exit code, stdout, stderr).
_FORKED_RUNS = textwrap.dedent("""
    import importlib, json, os, sys, tempfile
    cases = json.loads(sys.argv[1])
    modules = {name: importlib.import_module(name) for name, _ in cases}
    results = []
    for name, args in cases:
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        pid = os.fork()
        if pid == 0:
            os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
            sys.argv = [modules[name].__file__, *args]
            sys.modules["__main__"] = modules[name]
            from tflite_export.command import run_command
            code = 3
            try:
                run_command(modules[name].main)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            finally:
                sys.stdout.flush(); sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0); err.seek(0)
        results.append([os.waitstatus_to_exitcode(status), out.read(), err.read()])
    print(json.dumps(results))
""")


def _run_forked(cases: list[tuple[str, list[str]]]) -> list[tuple[int, str, str]]:
    proc = subprocess.run([sys.executable, "-c", _FORKED_RUNS, json.dumps(cases)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


@pytest.fixture(scope="module")
def help_and_bad_flag():
    """--help, and an unknown flag, of every command on the shared entry; the pipeline's --helpfull."""
    cases = [(name, ["--help"]) for name in COMMANDS] + [(name, ["--no_such_flag"]) for name in COMMANDS]
    results = _run_forked([*cases, ("pipeline.train_and_export", ["--helpfull"])])
    count = len(COMMANDS)
    return (dict(zip(COMMANDS, results[:count])), dict(zip(COMMANDS, results[count:2 * count])),
            results[-1])


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_exits_zero_in_absl_style(help_and_bad_flag, name):
    code, out, err = help_and_bad_flag[0][name]
    assert code == 0, err[-2000:]
    options = importlib.import_module(name).main.options
    assert "\nflags:\n" in out, out  # absl's usage: the module's docstring, then the command's flags
    for field in dataclasses.fields(options):
        spelled = f"--[no]{field.name}:" if field.type in ("bool", bool) else f"--{field.name}:"
        assert spelled in out, (name, spelled)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_refuses_an_unknown_flag_in_one_line(help_and_bad_flag, name):
    code, out, err = help_and_bad_flag[1][name]
    line = error_line(code, err, name)
    assert "no_such_flag" in line and "--help" in line
    assert out == ""


def test_pipeline_helpfull_lists_every_flag_in_the_same_style(help_and_bad_flag):
    code, out, err = help_and_bad_flag[2]
    assert code == 0, err[-2000:]
    assert "--float_epochs:" in out and "--[no]qat:" in out and "--verbosity:" in out  # absl's own flags too


def test_old_spellings_work_for_one_release_with_a_notice(tmp_path, capsys):
    """`--out` and `--calibration-images` are export's old spellings: accepted, each announced in one line."""
    code = run_main(export.main, [str(tmp_path / "model.h5"), "--dataset", str(tmp_path), "--out",
                                  str(tmp_path / "out"), "--calibration-images", "0"], prog="tflite_export.export")
    err = capsys.readouterr().err
    assert "note: --out is now --output_dir" in err.splitlines()
    assert "note: --calibration-images is now --calibration_images" in err.splitlines()
    # The values reached the new flags: the count is refused by its new name, before the model is read.
    assert "--calibration_images must be at least 1, got 0" in error_line(code, err, "tflite_export.export")


def test_argparse_negations_become_absl_ones():
    from absl import flags

    from pipeline.config import RunConfig, define_flags
    from pipeline.train_and_export import main
    from tflite_export.command import upgrade_spellings

    values = flags.FlagValues()
    define_flags(RunConfig, values)
    assert upgrade_spellings(main, ["prog", "--no-qat", "--image-size=64", "--", "--no-qat"], values) == [
        "prog", "--noqat", "--image_size=64", "--", "--no-qat"]  # after `--`: positional arguments, untouched


@pytest.mark.parametrize("args,needle", [
    (["--runs", "many"], "--runs=many"),
    (["--runs", "5", "--threads", "1,x"], "comma-separated list of integers"),
    ([], "missing MODEL"),
])
def test_a_bad_value_is_one_line_exit_2(tmp_path, capsys, args, needle):
    model = [str(tmp_path / "a.tflite")] if args else []
    code = run_main(benchmark.main, [*model, *args], prog="tflite_export.benchmark")
    captured = capsys.readouterr()
    assert needle in error_line(code, captured.err, "tflite_export.benchmark")
    assert captured.out == ""


def test_json_dash_is_the_json_alone_on_stdout(capsys):
    """`--json -`: stdout holds the JSON and nothing else (the text report goes to stderr)."""
    model = str(REPO / "android_demo" / "app" / "src" / "main" / "assets" / "model.tflite")
    assert run_main(inspect.main, [model, "--json", STDOUT, "--io", "any"], prog="tflite_export.inspect") == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["model"] == model and report["check"]["passed"] is True


def test_inspect_old_json_switch_means_stdout_and_never_overwrites_the_model(tmp_path, capsys):
    model = tmp_path / "model.tflite"
    model.write_bytes((REPO / "android_demo" / "app" / "src" / "main" / "assets" / "model.tflite").read_bytes())
    assert run_main(inspect.main, [str(model), "--json"], prog="tflite_export.inspect") == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["model"] == str(model)
    assert "note: --json takes a path now: --json - writes to stdout" in captured.err
    before = model.read_bytes()
    code = run_main(inspect.main, ["--json", str(model)], prog="tflite_export.inspect")  # the switch before the model
    assert "not a .json file" in error_line(code, capsys.readouterr().err, "tflite_export.inspect")
    assert model.read_bytes() == before


def _options(name: str) -> dict[str, dataclasses.Field]:
    return {field.name: field for field in dataclasses.fields(importlib.import_module(name).main.options)}


@pytest.mark.parametrize("name", [name for name in COMMANDS if "json" in _options(name)])
def test_json_means_a_path_everywhere(name):
    """A command's --json is an optional path (`-` for stdout) with the shared help text, never a switch."""
    fields = _options(name)
    assert fields["json"].type in ("str | None",) and fields["json"].default is None
    assert "'-': to stdout" in fields["json"].metadata["help"], name


DOCS = [REPO / "README.md", REPO / "BUILD.md", REPO / "BENCHMARKS.md", REPO / "RELIABILITY.md",
        REPO / "bench" / "README.md", REPO / "web_demo" / "README.md", REPO / "android_demo" / "BUILD_ANDROID.md",
        *sorted((REPO / "docs").glob("*.md"))]
ABSL_FLAGS = {"help", "helpfull", "helpshort", "v", "verbosity"}
# Flags of earlier revisions that a results page shows on purpose, with the page saying so.
GONE = {("pipeline.train_and_export", "head_epochs"): "BENCHMARKS' CIFAR-10 ImageNet start ran the previous recipe"}


def _documented_commands() -> list[tuple[str, str, list[str]]]:
    """(page:line, command, flags) of every `python -m COMMAND ...` the docs show, continuation lines joined; the
    flags after a lone `--` are the pipeline's (bench.cifar10 and bench.photos pass them on)."""
    found = []
    for page in DOCS:
        text = re.sub(r"\\\n\s*", " ", page.read_text(encoding="utf-8"))
        for number, line in enumerate(text.splitlines(), 1):
            for match in re.finditer(r"python -m ([\w.]+)((?: +[^\s`|#;&]+)*)", line):
                name, rest = match.group(1), match.group(2).split(" -- ")
                found.append((f"{page.relative_to(REPO)}:{number}", name, re.findall(r"(?<!\S)--(\w[\w-]*)", rest[0])))
                if len(rest) > 1:
                    found.append((f"{page.relative_to(REPO)}:{number}", "pipeline.train_and_export",
                                  re.findall(r"(?<!\S)--(\w[\w-]*)", rest[1])))
    return found


def test_the_docs_spell_every_flag_as_its_command_defines_it():
    """README, BUILD, BENCHMARKS and the other pages show each command with flags it has, in their new spellings (the
    old ones still work, with a notice, but the docs teach the new)."""
    wrong = []
    for where, name, flag_names in _documented_commands():
        if name not in COMMANDS:
            continue  # experiments, keras_models.profile
        fields = {field.name: field for field in dataclasses.fields(importlib.import_module(name).main.options)}
        booleans = {n for n, f in fields.items() if f.type in ("bool", bool)}
        for flag in flag_names:
            if not (flag in fields or flag in ABSL_FLAGS or (flag.startswith("no") and flag[2:] in booleans)
                    or (name, flag) in GONE):
                wrong.append(f"{where}: python -m {name} --{flag}")
    assert not wrong, "flags their commands do not define:\n" + "\n".join(wrong)
    assert len(_documented_commands()) > 20  # the docs were read
