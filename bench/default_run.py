"""The default command (`python -m pipeline.train_and_export --variant small`: synthetic data, 64 px, 12 float + 3 QAT
epochs) in a fresh output folder: wall time (start-up included), peak RSS, float / int8 accuracy. Issue #3 must-show:
<= 15 minutes, int8 >= 90%, int8 within 1 point of float.

    nice -n 10 python -m bench.default_run [--json OUT]
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys

from bench import _common
from pipeline.schema import to_json_dict
from tflite_export.command import Command, run_command, setting


@dataclasses.dataclass(frozen=True)
class Options:
    """The flags of `python -m bench.default_run`."""

    output_dir: str = setting(os.path.join(_common.CACHE, "runs", "default"), "The run folder (emptied first).")
    json: str | None = setting(None, "Write the results as JSON here ('-': to stdout).")


def default_run(options: Options, args: list[str]) -> None:
    if os.path.exists(options.output_dir):
        shutil.rmtree(options.output_dir)  # a rerun would resume/skip stages: always measure from scratch
    machine = _common.machine()
    run = _common.run_pipeline(["--variant", "small"], options.output_dir)
    report = _common.load_report(options.output_dir)
    if run["exit_code"] or report is None:
        sys.exit(f"pipeline failed (exit {run['exit_code']}); see {run['log']}")
    fl = report.accuracy.float_keras
    q8 = report.export.accuracy.int8_top1
    t = report.throughput
    print(f"\ndefault command, {report.data.num_train} train / {report.data.num_eval} eval synthetic images")
    rows = _common.accuracy_rows(report)
    rows += [["wall time incl. start-up", f"{run['wall_seconds'] / 60:.2f} min"],
             ["pipeline time (report)", f"{report.seconds_total:.0f} s (float "
                                        f"{report.stage('float').seconds:.0f} s, QAT {report.qat_seconds:.0f} s)"],
             ["peak RSS", f"{run['peak_rss_gib']:.2f} GiB"],
             ["input pipeline / float / QAT img/s", f"{t.input_pipeline_images_per_s:.0f} / "
                                                   f"{t.float_train_images_per_s or 0:.0f} / "
                                                   f"{t.qat_train_images_per_s or 0:.0f}"]]
    print(_common.table(["quantity", "value"], rows))
    checks = [("wall time <= 15 min", run["wall_seconds"] <= 900), ("int8 >= 90%", q8 >= 0.90),
              ("int8 within 1 point of float", fl - q8 <= 0.01)]
    print("issue #3: " + "; ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks))
    print(f"machine: {machine['cpu']}, {machine['nproc']} cores, load average at start "
          f"{machine.get('loadavg_at_start')}, "
          f"{machine['date']}")
    _common.write_json(options.json, {"machine": machine, "revision": _common.git_revision(), "run": run,
                                   "float_top1": fl, "int8_top1": q8, "report": to_json_dict(report),
                                   "checks": {n: ok for n, ok in checks}})


main = Command("bench.default_run", Options, default_run)

if __name__ == "__main__":
    run_command(main)
