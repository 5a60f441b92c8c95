"""Shared helpers for the bench scripts: machine description, shared-data lookup, JSON output, tables."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import tarfile
from typing import TYPE_CHECKING

from tflite_export import command

if TYPE_CHECKING:
    from pipeline.report import Report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("MOBILENET_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
CACHE = os.environ.get("MOBILENET_BENCH_CACHE", os.path.expanduser("~/.cache/mobilenet-bench"))


def shared_path(*parts: str) -> str:
    """A path under the shared data folder; exits with a clear message when it is missing."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        sys.exit(f"error: {path} not found. The benchmarks read shared data from {SHARED} "
                 "(set MOBILENET_SHARED to point elsewhere); it is not part of the repository.")
    return path


def reference_v3_small() -> str:
    """Google's published uint8 MobileNetV3-Small 224, the file our latency and accuracy are compared with."""
    return shared_path("reference_models", "mobilenet_v3", "v3-small_224_1.0_uint8.tflite")


def unpack_once(archive: str, top_dir: str) -> str:
    """Unpack `archive` into CACHE once (outside the repository); returns CACHE/top_dir."""
    target = os.path.join(CACHE, top_dir)
    marker = os.path.join(target, ".unpacked")
    if not os.path.exists(marker):
        os.makedirs(CACHE, exist_ok=True)
        print(f"unpacking {archive} into {CACHE} ...", flush=True)
        with tarfile.open(archive) as tar:
            tar.extractall(CACHE, filter="data")
        open(marker, "w").close()
    return target


def machine() -> dict:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "isa": isa_flags(), "nproc": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        import psutil

        info["mem_gib"] = round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:
        pass
    return info


# The instruction sets that decide XNNPACK's int8 and float kernels on x86 (8-bit dot products need VNNI).
ISA_FLAGS = ("avx512_vnni", "avx_vnni", "avx512f", "avx2", "fma")


def isa_flags() -> str:
    """Which of ISA_FLAGS the CPU has, e.g. "avx512_vnni avx512f avx2 fma" (every latency table records it)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "?"
    return " ".join(flag for flag in ISA_FLAGS if flag in flags) or "none of " + ", ".join(ISA_FLAGS)


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except OSError:
        return "?"


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (also readable on a terminal)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    def fmt(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([fmt(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in cells])


def write_json(path: str | None, payload: dict) -> None:
    """--json: the results to PATH, or to stdout for `-` (tflite_export.command's rule for every command)."""
    command.write_json(path, payload)
    if path and path != command.STDOUT:
        print(f"json: {path}")


def command_line() -> str:
    return " ".join([os.path.basename(sys.executable), "-m", __package__ + "." + os.path.basename(sys.argv[0])[:-3]]
                    + sys.argv[1:])


def run_pipeline(flags: list[str], output_dir: str, log_name: str = "run.log") -> dict:
    """Run `python -m pipeline.train_and_export FLAGS --output_dir OUTPUT_DIR` (stdout+stderr to OUTPUT_DIR/log_name).

    Returns the command, exit code, wall seconds (start-up included) and the child's peak RSS (os.wait4 rusage)."""
    import time

    os.makedirs(output_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "pipeline.train_and_export", *flags, "--output_dir", output_dir]
    log_path = os.path.join(output_dir, log_name)
    print("command:", " ".join(cmd), flush=True)
    print("log:", log_path, flush=True)
    started = time.perf_counter()
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"command": " ".join(cmd), "exit_code": proc.returncode, "wall_seconds": time.perf_counter() - started,
            "peak_rss_gib": usage.ru_maxrss / 1024**2, "log": log_path}


def load_report(output_dir: str) -> Report | None:
    """The report of a finished pipeline run in `output_dir` (None if unfinished); a report of another schema version
    stops the benchmark with one line saying so."""
    from pipeline.report import read_report
    from pipeline.schema import SchemaError

    try:
        return read_report(output_dir)
    except SchemaError as err:
        raise SystemExit(f"error: {err}") from None


def accuracy_rows(report: Report) -> list[list]:
    fl, acc = report.accuracy.float_keras, report.export.accuracy
    rows = [["float (Keras)", f"{100 * fl:.2f}"]]
    if report.accuracy.qat_keras is not None:
        rows.append(["QAT (Keras, fake-quant)", f"{100 * report.accuracy.qat_keras:.2f}"])
    rows += [["int8 (LiteRT)", f"{100 * acc.int8_top1:.2f}"],
             ["float - int8 (points)", f"{100 * (fl - acc.int8_top1):+.2f}"],
             ["int8/float agreement", f"{100 * acc.agreement:.2f}%"]]
    return rows
