"""`python -m tflite_export.inspect MODEL.tflite [--json OUT.json|-] [--allow_hard_swish] [--io uint8] [--strict]`

Reports the op histogram, I/O details, the integer-only/export-rules check (tflite_export.verify), the XNNPACK
partition count, the metadata summary and which runtimes can run the file (tflite_export.clients: LiteRT, the
browser, MediaPipe Tasks, the project's Android app). Exit code 0 for any readable model (it reports, it does not
judge; use `--strict` to exit 1 when the export rules fail); 2 with a one-line error for a missing or malformed file.
`--json -` prints the report as JSON instead of text (`Inspection.to_dict()`), `--json FILE` writes it there too.
"""

from __future__ import annotations

import dataclasses

from tflite_export.cli import EXIT_FAIL, EXIT_OK
from tflite_export.clients import Client, clients
from tflite_export.command import JSON_HELP, Command, check_json_target, emit, positional, run_command, setting
from tflite_export.metadata import read_metadata
from tflite_export.verify import ModelAnalysis, analyze, problems_of


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What `inspect_model` found in a .tflite file."""

    model: str  # the path
    analysis: ModelAnalysis  # ops, I/O tensors, float tensors, XNNPACK partitions (tflite_export.verify)
    problems: list[str]  # the export rules it breaks; empty when the integer-only export check passes
    metadata: dict | None  # name, normalization, label count, first labels; {"error": ...} if unreadable; None if none
    clients: list[Client]  # which runtimes can run the file, and why not (tflite_export.clients)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        """The JSON the CLI prints with --json."""
        report = {"model": self.model, **self.analysis.to_dict(),
                  "check": {"passed": self.passed, "problems": list(self.problems)},
                  "clients": [{"name": c.name, "runs": c.runs, "reasons": list(c.reasons)} for c in self.clients]}
        report.pop("op_sequence", None)
        report["metadata"] = self.metadata
        return report


def inspect_model(path, *, allow_hard_swish: bool = False, io_dtype: str | None = "uint8") -> Inspection:
    """Everything the CLI shows (`Inspection.to_dict()` is its JSON)."""
    analysis = analyze(path)
    problems = problems_of(analysis, allow_hard_swish=allow_hard_swish, io_dtype=io_dtype)
    metadata: dict | None = None
    if analysis.has_metadata:
        try:
            metadata = read_metadata(path)
            metadata.pop("raw", None)
            labels = metadata.pop("labels", None) or []
            metadata["num_labels"] = len(labels)
            metadata["first_labels"] = labels[:5]
        except ValueError as exc:  # MetadataError (incl. missing schema package) or corrupt metadata
            metadata = {"error": str(exc)}
    return Inspection(model=str(path), analysis=analysis, problems=list(problems), metadata=metadata,
                      clients=list(clients(analysis)))


def _fmt_tensor(t: dict) -> str:
    quant = f" scale={t['scale']:.6g} zero_point={t['zero_point']}" if t.get("scale") is not None else ""
    sig = "" if t["shape_signature"] == t["shape"] else f" (signature {t['shape_signature']})"
    return f"{t['name']!r}: {t['dtype']} {t['shape']}{sig}{quant}"


def format_report(r: dict) -> str:
    lines = [f"Model: {r['model']} ({r['size_bytes'] / 1024:.1f} KiB, {r['num_subgraphs']} subgraph(s), "
             f"{r['num_ops']} ops)"]
    lines.append("Ops:")
    for name, count in r["op_histogram"].items():
        lines.append(f"  {name:<24} {count}")
    lines.append("Inputs:")
    lines += [f"  {_fmt_tensor(t)}" for t in r["inputs"]]
    lines.append("Outputs:")
    lines += [f"  {_fmt_tensor(t)}" for t in r["outputs"]]
    lines.append(f"Float tensors: {len(r['float_tensors'])}"
                 + (f" (e.g. {', '.join(r['float_tensors'][:3])})" if r["float_tensors"] else ""))
    if r["xnnpack_error"]:
        lines.append(f"XNNPACK: {r['xnnpack_error']}")
    else:
        und = ", ".join(f"{k} x{v}" for k, v in r["xnnpack_undelegated"].items()) or "none"
        lines.append(f"XNNPACK: {r['xnnpack_partitions']} delegated partition(s); not delegated: {und}")
    check = r["check"]
    lines.append("Integer-only export check: " + ("PASS" if check["passed"] else "FAIL"))
    lines += [f"  - {p}" for p in check["problems"]]
    md = r["metadata"]
    if md is None:
        lines.append("Metadata: none")
    elif "error" in md:
        lines.append(f"Metadata: present but unreadable: {md['error']}")
    else:
        lines.append(f"Metadata: name={md.get('name')!r} version={md.get('version')!r} author={md.get('author')!r} "
                     f"license={md.get('license')!r}")
        lines.append(f"  normalization mean={md.get('mean')} std={md.get('std')}; input range "
                     f"{(md.get('input') or {}).get('min')}..{(md.get('input') or {}).get('max')}")
        lines.append(f"  labels: {md.get('num_labels')} in {md.get('label_file')!r} (first: {md.get('first_labels')}); "
                     f"packed files: {md.get('associated_files')}")
    lines.append("Runs on:")
    lines += [f"  {c['name']}: " + ("yes" if c["runs"] else "no: " + "; ".join(c["reasons"])) for c in r["clients"]]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class InspectOptions:
    """The flags of `python -m tflite_export.inspect`."""

    json: str | None = setting(None, JSON_HELP)
    allow_hard_swish: bool = setting(False, "Do not count HARD_SWISH as a problem.")
    io: str = setting("uint8", "Expected input/output dtype ('any' to skip the check).")
    strict: bool = setting(False, "Exit 1 when the export check fails.")


def inspect_command(options: InspectOptions, args: list[str]) -> int:
    check_json_target(options.json)
    (model,) = positional(args, "MODEL: a .tflite file")
    io_dtype = None if options.io in ("any", "", "none") else options.io
    inspection = inspect_model(model, allow_hard_swish=options.allow_hard_swish, io_dtype=io_dtype)
    emit(format_report(inspection.to_dict()), inspection, options.json)
    if options.strict and not inspection.passed:
        return EXIT_FAIL
    return EXIT_OK


main = Command("tflite_export.inspect", InspectOptions, inspect_command, renamed={"io_dtype": "io"},
               switches_now_paths=("json",))

if __name__ == "__main__":
    run_command(main)
