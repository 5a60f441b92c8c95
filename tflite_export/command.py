"""One command-line style for every `python -m` command of the project: absl flags (underscore spellings, as
TensorFlow's tools use), made from a typed options dataclass and defined only when the command runs.

    @dataclasses.dataclass(frozen=True)
    class Options:
        dataset: str = setting(REQUIRED, "Folder of images.")
        json: str | None = setting(None, JSON_HELP)

    def inspect(options: Options, args: list[str]) -> int: ...   # args: the positional arguments

    main = Command("tflite_export.inspect", Options, inspect)   # main(["model.tflite", "--json", "-"]) in a process
    if __name__ == "__main__":
        run_command(main)                                        # absl.app.run: --help, -v, one error line

What every command shares:
* bad input, a bad flag value or an unknown flag: one line `NAME: error: ...` on stderr, exit code 2, no traceback
  (`tflite_export.cli.run_main`); `--help` (the module's docstring and the command's flags) and `--helpfull` exit 0;
* `--json PATH` writes the command's typed result as JSON to PATH; `--json -` writes it to stdout, which then carries
  the JSON alone (the text the command prints goes to stderr);
* an output folder is `--output_dir`;
* old spellings (`--calibration-images`, `--no-qat`, a command's renamed flags such as `--out`) still work for one
  release: `upgrade_spellings` rewrites them before absl parses, with a one-line `note:` naming the new spelling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import types
import typing
from typing import Any, Callable, Mapping, NoReturn, Sequence

from absl import app, flags

from keras_models import backend
from tflite_export.cli import run_main
from tflite_export.files import atomic_write_json, check_writable_file, json_text

# The default of a setting that has none: the command's flag is required, the dataclass field too.
REQUIRED = dataclasses.MISSING
STDOUT = "-"  # --json - : the JSON goes to stdout
JSON_HELP = "Write the result as JSON to this file ('-': to stdout, instead of the text report)."
# absl's help flags (and argparse's -h): True for the command's flags, False for every flag (--helpfull).
HELP_FLAGS = {"--help": True, "-help": True, "--helpshort": True, "-?": True, "-h": True, "--helpfull": False,
              "-helpfull": False}


class UsageError(ValueError):
    """Bad command-line arguments: an unknown flag, a bad value, a missing positional argument (one line, exit 2)."""


def setting(default, help_text: str, choices: tuple[str, ...] | None = None):
    """A field of a command's options dataclass: its default, and the help text and choices of its flag
    (`define_flags`)."""
    return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})


def define_flags(options_class: type, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The absl flags of a command, one per field of its options dataclass (`setting`s): same name, default and help;
    fields without a default are required flags. Called when the command runs, never on import (the commands share
    flag names such as --dataset)."""
    hints = typing.get_type_hints(options_class)
    required = []
    for field in dataclasses.fields(options_class):
        kind = hints[field.name]
        if typing.get_origin(kind) is types.UnionType:  # X | None
            (kind,) = (t for t in typing.get_args(kind) if t is not type(None))
        name, default, help_text = field.name, field.default, field.metadata["help"]
        if default is REQUIRED:
            required.append(name)
            default = None
        if field.metadata["choices"]:
            flags.DEFINE_enum(name, default, list(field.metadata["choices"]), help_text, flag_values=flag_values)
        elif kind is bool:
            flags.DEFINE_boolean(name, default, help_text, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        elif kind is str:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
        else:  # a tuple such as synthetic_size: "train,test"
            flags.DEFINE_list(name, [str(v) for v in default], help_text, flag_values=flag_values)
    if required:
        flags.mark_flags_as_required(required, flag_values=flag_values)


def values_from_flags(options_class: type, flag_values: flags.FlagValues) -> dict:
    """The fields of `options_class` as the parsed flags `define_flags` defined give them."""
    return {field.name: flag_values[field.name].value for field in dataclasses.fields(options_class)}


def check_choices(options) -> None:
    """Refuse a value outside its field's choices (the flags refuse them when parsed; the Python API needs this)."""
    for field in dataclasses.fields(options):
        choices = field.metadata.get("choices")
        value = getattr(options, field.name)
        if choices and value not in choices:
            raise ValueError(f"--{field.name} must be one of {', '.join(choices)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Command:
    """A `python -m` command: its name (the module), its options (one flag per field) and what it does with them.

    Calling it runs it in this process on flags of its own (`main(["model.tflite", "--strict"])`): tests and scripts
    call any number of commands without their flags meeting; `run_command` is the `python -m` entry."""

    name: str  # the module run by `python -m`; prefixes the error line
    options: type  # a dataclass of `setting`s
    run: Callable[[Any, list[str]], int | None]  # (options, positional arguments) -> exit code
    # Old spelling -> flag name, accepted with a notice for one release (hyphenated spellings of flag names and
    # argparse's --no-X need no entry).
    renamed: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Flags that were switches and now take a path: given without a value they mean `STDOUT`, with a notice.
    switches_now_paths: tuple[str, ...] = ()

    def __call__(self, argv: Sequence[str] | None = None) -> int:
        flag_values = flags.FlagValues()
        define_flags(self.options, flag_values)
        return self.run_parsed(flag_values, parse(self, flag_values, [self.name, *(argv or [])]))

    def run_parsed(self, flag_values: flags.FlagValues, argv: list[str]) -> int:
        """Run on parsed flags; `argv`: the program name and the positional arguments absl left. With `--json -`,
        stdout carries the JSON alone: what the command prints goes to stderr meanwhile."""
        options = self.options(**values_from_flags(self.options, flag_values))
        if getattr(options, "json", None) != STDOUT:
            return int(self.run(options, list(argv[1:])) or 0)
        global _json_stdout
        _json_stdout = sys.stdout
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return int(self.run(options, list(argv[1:])) or 0)
        finally:
            _json_stdout = None


def upgrade_spellings(command: Command, argv: Sequence[str], flag_values: flags.FlagValues) -> list[str]:
    """`argv` with the old spellings of flags replaced by the new ones, each announced once on stderr as
    `note: --old is now --new`. Arguments after `--` are left alone."""
    argv, upgraded, noted = list(argv), [], set()
    booleans = {name for name in flag_values if isinstance(flag_values[name], flags.BooleanFlag)}
    for index, arg in enumerate(argv):
        if index == 0 or arg == "--":
            upgraded += argv[index:] if index else [arg]
            if arg == "--":
                break
            continue
        name, equals, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        new = _new_name(command, name, flag_values, booleans) if name else None
        if new is not None and new != name:
            if name not in noted:
                print(f"note: --{name} is now --{new}", file=sys.stderr)
                noted.add(name)
            arg = f"--{new}{equals}{value}"
            name = new
        upgraded.append(arg)
        following = argv[index + 1] if index + 1 < len(argv) else None
        if name in command.switches_now_paths and not equals and (
                following is None or (following.startswith("-") and following != STDOUT)):
            print(f"note: --{name} takes a path now: --{name} {STDOUT} writes to stdout", file=sys.stderr)
            upgraded.append(STDOUT)
    return upgraded


def _new_name(command: Command, name: str, flag_values: flags.FlagValues, booleans: set[str]) -> str | None:
    if name in command.renamed:
        return command.renamed[name]
    if "-" not in name:
        return None
    underscored = name.replace("-", "_")
    if underscored in command.renamed:
        return command.renamed[underscored]
    if underscored in flag_values:
        return underscored
    if underscored.startswith("no_") and underscored[3:] in booleans:  # argparse's --no-qat: absl's --noqat
        return "no" + underscored[3:]
    return None


def parse(command: Command, flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
    """Parse `argv` (program name first) into `flag_values`; returns the program name and the positional arguments.
    UsageError (one line) for an unknown flag or a bad value."""
    try:
        return flag_values(upgrade_spellings(command, argv, flag_values))
    except flags.Error as exc:
        missing = re.findall(r"Flag --(\w+) must have a value other than None", str(exc))
        if missing:  # absl's words for required flags not given
            raise UsageError(f"missing {', '.join('--' + name for name in missing)} (--help lists the flags)") from None
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        raise UsageError("; ".join(lines) + " (--help lists the flags)") from None


def run_command(command: Command) -> NoReturn:
    """The `python -m` entry of a command: absl.app.run (absl's own flags such as -v, and logging) with the command's
    flags defined now, `--help` exiting 0, and every expected failure as one line, exit 2 (`run_main`)."""

    def parse_flags(argv: list[str]) -> list[str]:
        before = set(flags.FLAGS)
        define_flags(command.options, flags.FLAGS)
        for name in set(flags.FLAGS) - before:  # --help lists them as the command's, wherever the dataclass lives
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
        requested = [HELP_FLAGS[arg] for arg in argv[1:argv.index("--") if "--" in argv else None] if arg in HELP_FLAGS]
        if requested:
            app.usage(shorthelp=all(requested), writeto_stdout=True)
            sys.exit(0)
        try:
            return parse(command, flags.FLAGS, argv)
        except UsageError as exc:
            print(f"{command.name}: error: {exc}", file=sys.stderr)
            sys.exit(2)

    def main(argv: list[str]) -> NoReturn:
        if flags.FLAGS.verbosity >= 1:  # -v 1: TensorFlow's own logs too
            backend.show_library_logs()
        sys.exit(run_main(lambda args: command.run_parsed(flags.FLAGS, args), argv, prog=command.name))

    app.run(main, flags_parser=parse_flags)
    raise AssertionError("unreachable: app.run exits")


def positional(args: Sequence[str], what: str, *, least: int = 1, most: int | None = 1) -> list[str]:
    """The positional arguments, refused (UsageError) when there are fewer than `least` or more than `most`."""
    if len(args) < least:
        raise UsageError(f"missing {what}")
    if most is not None and len(args) > most:
        raise UsageError(f"unexpected arguments: {' '.join(args[most:])} (this command takes {what})")
    return list(args)


def check_json_target(path: str | None) -> None:
    """Refuse, before any work is done, a --json path that cannot be written or is not a JSON file: `inspect --json
    model.tflite` (the old switch before the model) must not overwrite the model."""
    if not path or path == STDOUT:
        return
    if os.path.isfile(path) and not path.lower().endswith(".json"):
        raise UsageError(f"--json {path}: not a .json file, it would be overwritten; give a .json file, or - for "
                         "stdout")
    check_writable_file(path, "--json")


def as_json(result) -> Any:
    """A typed result as JSON data: dataclasses by their `to_dict()` when they have one, else `dataclasses.asdict`,
    in lists and dicts too."""
    if hasattr(result, "to_dict"):
        return result.to_dict()
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    if isinstance(result, dict):
        return {key: as_json(value) for key, value in result.items()}
    if isinstance(result, (list, tuple)):
        return [as_json(item) for item in result]
    return result


# Where `--json -` writes while a command runs (its own prints go to stderr meanwhile: Command.run_parsed).
_json_stdout = None


def write_json(json_path: str | None, result) -> None:
    """The result as JSON to --json's file (atomically), or to stdout for `-`; nothing without --json."""
    if json_path == STDOUT:
        (_json_stdout or sys.stdout).write(json_text(as_json(result)))
    elif json_path:
        atomic_write_json(json_path, as_json(result))


def emit(text: str | None, result, json_path: str | None) -> None:
    """A command's output: `text` (on stderr with `--json -`, whose JSON alone is on stdout) and the JSON."""
    if text:
        print(text)
    write_json(json_path, result)
