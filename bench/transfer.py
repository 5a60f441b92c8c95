"""Transfer learning from Google's V3-Small: the pipeline's recipe against a linear probe on the same frozen features,
on data the recipe was not tuned on.

    nice -n 5 python -m bench.transfer                          # every data set, 5 seeds of hymenoptera
    python -m bench.transfer --datasets hymenoptera --seeds 1   # one run
    python -m bench.transfer --old_revision f65f2e4             # also the recipe of an earlier revision

Per data set:
- **probe**: scikit-learn's logistic regression on the backbone's pre-logits features (float, evaluation
  preprocessing, no augmentation) with C chosen by 5-fold cross-validation on the training split, scored on the
  evaluation split. The anchor a seasoned engineer tries first; float only (it makes no int8 file).
- **recipe**: the README's command, `python -m pipeline.train_and_export --dataset D --image_size S --weights
  FILE.tflite --output_dir OUT --seed K`, nothing else; float, QAT and int8 top-1 from its report.json, and its
  wall time.
- **old recipe** (`--old_revision REV`): the command of that revision's README (`--float_epochs 24`), run from a git
  worktree of it.

Data: hymenoptera_data (245 train / 153 val photos) over `--seeds` seeds; CIFAR-10 subsets of 50 and 500 training
images per class (a seeded choice from ../shared's JPEG folders, linked into a cache folder) at 96 px, scored on the
10,000 test images (one seed: the test set is 65x hymenoptera's). Everything runs one after another on this machine;
the CPU and load average are recorded.
"""

from __future__ import annotations

import dataclasses
import os
import random
import statistics
import subprocess
import sys
import time

import numpy as np

from bench import _common
from pipeline.schema import to_json_dict
from tflite_export.command import Command, run_command, setting

DATASETS = {"hymenoptera": 224, "cifar50": 96, "cifar500": 96}  # name -> image size
OLD_README_FLAGS = ["--float_epochs", "24"]


def dataset_folder(name: str) -> str:
    if name == "hymenoptera":
        return _common.shared_path("datasets", "hymenoptera_data")
    per_class = int(name.removeprefix("cifar"))
    root = _common.unpack_once(_common.shared_path("datasets", "cifar10-jpeg.tar.gz"), "cifar10-jpeg")
    folder = os.path.join(_common.CACHE, f"cifar10-{per_class}-per-class")
    if not os.path.exists(os.path.join(folder, ".linked")):
        for split in ("train", "test"):
            for cls in sorted(os.listdir(os.path.join(root, split))):
                files = sorted(os.listdir(os.path.join(root, split, cls)))
                if split == "train":
                    files = random.Random(cls).sample(files, per_class)
                os.makedirs(os.path.join(folder, split, cls), exist_ok=True)
                for name_ in files:
                    link = os.path.join(folder, split, cls, name_)
                    if not os.path.lexists(link):
                        os.symlink(os.path.join(root, split, cls, name_), link)
        open(os.path.join(folder, ".linked"), "w").close()
    return folder


def probe(folder: str, image_size: int) -> dict:
    """The logistic-regression anchor on frozen float features (see the module docstring)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    import keras_models
    from keras_models.backend import keras
    from pipeline import transfer
    from pipeline.data import load_dataset

    started = time.perf_counter()
    data = load_dataset(folder, image_size=image_size, batch_size=64, seed=0)
    model = keras_models.build("small", input_shape=(image_size, image_size, 3), num_classes=len(data.class_names),
                               weights=_common.reference_v3_small())
    body = keras.Model(model.input, transfer.classifier(model).input)

    def features(batches):
        rows, labels = [], []
        for images, batch_labels in batches:
            rows.append(body(images, training=False).numpy().reshape(len(images), -1))
            labels.append(batch_labels.numpy())
        return np.concatenate(rows), np.concatenate(labels)

    x_train, y_train = features(data.train_plain())
    x_eval, y_eval = features(data.eval)
    fit = LogisticRegressionCV(Cs=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0], max_iter=2000, scoring="accuracy",
                               cv=StratifiedKFold(5, shuffle=True, random_state=0)).fit(x_train, y_train)
    return {"float_top1": float(np.mean(fit.predict(x_eval) == y_eval)), "C": float(fit.C_[0]),
            "seconds": time.perf_counter() - started, "eval_images": len(y_eval)}


def recipe_run(folder: str, image_size: int, seed: int, output_dir: str, repo: str = _common.REPO,
               extra: tuple[str, ...] = ()) -> dict:
    """One run of the pipeline's command from `repo` (this checkout, or a worktree of an older revision)."""
    os.makedirs(output_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "pipeline.train_and_export", "--dataset", folder, "--image_size", str(image_size),
           "--weights", _common.reference_v3_small(), "--seed", str(seed), "--benchmark_runs", "0", "--verbose", "0",
           *extra, "--output_dir", output_dir]
    print("command:", " ".join(cmd), flush=True)
    started = time.perf_counter()
    with open(os.path.join(output_dir, "run.log"), "w") as log:
        code = subprocess.run(cmd, cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": repo}).returncode
    seconds = time.perf_counter() - started
    if code:
        raise SystemExit(f"error: the pipeline failed (exit {code}); see {os.path.join(output_dir, 'run.log')}")
    report = _common.load_report(output_dir)
    row = {"seed": seed, "seconds": seconds, "float_top1": report.accuracy.float_keras,
           "qat_top1": report.accuracy.qat_keras, "int8_top1": report.export.accuracy.int8_top1}
    transfer = getattr(report, "transfer", None)
    if transfer is not None:
        row["choice"] = to_json_dict(transfer)
    return row


def old_checkout(revision: str) -> str:
    path = os.path.join(_common.CACHE, f"worktree-{revision}")
    if not os.path.exists(path):
        subprocess.run(["git", "worktree", "add", "--detach", path, revision], cwd=_common.REPO, check=True,
                       capture_output=True)
    return path


def mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.mean(values) if values else None


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


@dataclasses.dataclass(frozen=True)
class Options:
    """The flags of `python -m bench.transfer`."""

    datasets: str = setting(",".join(DATASETS), f"Comma-separated: {', '.join(DATASETS)}.")
    seeds: int = setting(5, "Seeds of the hymenoptera runs (CIFAR subsets: seed 0).")
    old_revision: str | None = setting(None, "Also run the recipe of this git revision.")
    json: str | None = setting(None, "Write the results as JSON here ('-': to stdout).")


def transfer(options: Options, args: list[str]) -> None:
    names = [n.strip() for n in options.datasets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        raise ValueError(f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    results = {"machine": _common.machine(), "revision": _common.git_revision(), "command": _common.command_line(),
               "datasets": {}}
    runs = os.path.join(_common.CACHE, "runs", f"transfer-{results['revision']}")
    for name in names:
        size, folder = DATASETS[name], dataset_folder(name)
        seeds = range(options.seeds if name == "hymenoptera" else 1)
        entry = {"image_size": size, "probe": probe(folder, size),
                 "recipe": [recipe_run(folder, size, s, os.path.join(runs, f"{name}-seed{s}")) for s in seeds]}
        if options.old_revision:
            repo = old_checkout(options.old_revision)
            entry["old_recipe"] = {"revision": options.old_revision, "runs": [
                recipe_run(folder, size, s, os.path.join(runs, f"{name}-old-seed{s}"), repo, OLD_README_FLAGS)
                for s in seeds]}
        results["datasets"][name] = entry
        _common.write_json(options.json, results)
        print_table(name, entry)


def print_table(name: str, entry: dict) -> None:
    rows = [["probe (logistic regression, frozen float features)", pct(entry["probe"]["float_top1"]), "-", "-",
             f"{entry['probe']['seconds']:.0f}"]]
    recipes = [("recipe", entry["recipe"])]
    if "old_recipe" in entry:
        recipes.insert(0, (f"old recipe ({entry['old_recipe']['revision']})", entry["old_recipe"]["runs"]))
    for label, runs in recipes:
        rows.append([f"{label}, mean of {len(runs)}", pct(mean(runs, "float_top1")), pct(mean(runs, "qat_top1")),
                     pct(mean(runs, "int8_top1")), f"{mean(runs, 'seconds'):.0f}"])
        if len(runs) > 1:
            rows += [[f"  seed {r['seed']}" + (f" ({r['choice']['fine_tune']})" if "choice" in r else ""),
                      pct(r["float_top1"]), pct(r["qat_top1"]), pct(r["int8_top1"]), f"{r['seconds']:.0f}"]
                     for r in runs]
    print(f"\n{name} ({entry['probe']['eval_images']} evaluation images, {entry['image_size']} px)")
    print(_common.table(["", "float %", "QAT %", "int8 %", "seconds"], rows))


main = Command("bench.transfer", Options, transfer)

if __name__ == "__main__":
    run_command(main)
