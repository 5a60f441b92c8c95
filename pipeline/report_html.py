"""report.html: the run's report as one self-contained page a person can open (no network, no other files).

Training curves (loss and accuracy, train and held-out, per epoch) of every stage as inline SVG drawn by matplotlib;
the int8 model's confusion matrix and per-class accuracy on the held-out split as HTML tables; its worst-classified
held-out images as inline PNG thumbnails with their true and predicted labels. Every class name and file name is
HTML-escaped: they come from the user's folder names.
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

from pipeline.report import Report, StageSummary
from pipeline.transfer import TransferChoice
from tflite_export.demo import try_it

# Above this many classes the confusion matrix is listed as its largest off-diagonal cells (a 1000 x 1000 table is
# neither readable nor small).
MAX_MATRIX_CLASSES = 40
_THUMBNAIL_SIDE = 128  # larger held-out images are shrunk to this; smaller ones are shown enlarged, pixelated

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: right; }
th { background: #f4f4f4; } th.label, td.label { text-align: left; }
table.matrix td { min-width: 2em; text-align: center; }
.summary td { text-align: left; }
.curves { display: flex; flex-wrap: wrap; gap: 1em; } .curves figure { margin: 0; }
.worst { display: flex; flex-wrap: wrap; gap: 1em; }
.worst figure { margin: 0; width: 10em; font-size: 0.8em; }
.worst img { width: 128px; height: 128px; object-fit: contain; image-rendering: pixelated; background: #eee; }
.wrong { color: #b00; } .note { color: #666; font-size: 0.85em; }
"""


def render(report: Report, thumbnails: dict[int, bytes]) -> str:
    """The page; `thumbnails`: PNG bytes of the worst-classified images, by their index in the held-out split."""
    title = f"{report.model.name}: {report.data.spec}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{_esc(title)}</title>",
        f"<style>{_STYLE}</style></head><body>", f"<h1>{_esc(title)}</h1>",
        _summary(report),
        *(("<h2>Transfer recipe: what was chosen, and on what</h2>", _transfer(report.transfer))
          if report.transfer is not None else ()),
        "<h2>Training curves</h2>", _curves(report.stages),
        "<h2>int8 model on the held-out split: confusion matrix</h2>", _confusion(report),
        "<h2>int8 model: accuracy per class</h2>", _per_class(report),
        "<h2>int8 model: worst-classified held-out images</h2>", _worst(report, thumbnails),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def thumbnail_png(pixels: np.ndarray) -> bytes:
    """float [H, W, 3] pixels in [0, 255] as a PNG at most _THUMBNAIL_SIDE on its longer side."""
    from PIL import Image

    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    image.thumbnail((_THUMBNAIL_SIDE, _THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _summary(report: Report) -> str:
    acc, export = report.export.accuracy, report.export
    rows = [
        ("model", f"{report.model.name}, {report.model.params:,} parameters, {report.model.madds / 1e6:.1f}M MAdds at "
                  f"{report.config.image_size} px"),
        ("data", f"{report.data.spec}: {report.data.num_train} training / {report.data.num_eval} held-out images "
                 f"({report.data.eval_split}), {len(report.data.classes)} classes"),
        ("float top-1 (Keras)", _pct(report.accuracy.float_keras)),
    ]
    if report.accuracy.qat_keras is not None:
        rows.append(("QAT top-1 (Keras, fake-quant)", _pct(report.accuracy.qat_keras)))
    rows += [
        ("int8 top-1 (LiteRT)", f"{_pct(acc.int8_top1)} of {acc.images} images; same top-1 as the float model on "
                                f"{_pct(acc.agreement)}"),
        ("file", f"{export.model_file}, {export.size_bytes / 1024:.0f} KiB, {export.io_dtype} I/O"),
    ]
    rows += [(f"latency, {row.threads} thread(s)", f"median {row.median_ms:.2f} ms") for row in report.latency]
    rows.append(("time", f"{report.seconds_total:.0f} s in this run"))
    rows.append(("try it in a browser", try_it(report.config.output_dir, export.io_dtype)))
    body = "".join(f'<tr><th class="label">{_esc(k)}</th><td>{_esc(v)}</td></tr>' for k, v in rows)
    return f'<table class="summary">{body}</table>'


def _transfer(choice: TransferChoice) -> str:
    """The transfer recipe's choice with the held-out figures behind it (pipeline/transfer.py)."""
    head = choice.head
    rows = [("chosen", "fine-tune everything but BatchNorm" if choice.fine_tune == "all" else
             "head only: the backbone and its int8 arithmetic are the start file's"),
            ("why", choice.reason),
            ("head", f"logistic regression on the features of {head.images} training images (float and int8 "
                     f"arithmetic), L2 C = {head.l2_c:g}"
                     + (f", chosen by {head.cv_folds}-fold cross-validation: {_pct(head.cv_top1)}"
                        if head.cv_top1 is not None else ""))]
    trial = choice.trial
    if trial is not None:
        epochs = ", ".join(f"{100 * v:.1f}" for v in trial.epoch_top1)
        rows += [("held-out slice", f"{trial.holdout_images} training images (never the evaluation split)"),
                 ("probe on it", f"{_pct(trial.probe_top1)} (int8 arithmetic), {_pct(trial.probe_float_top1)} "
                                 "(float)"),
                 ("fine-tuned on it", f"best {_pct(trial.best_top1)} at epoch {trial.best_epoch}; per epoch: "
                                      f"{epochs}%")]
    if choice.final_head is not None:
        final = choice.final_head
        rows.append(("head after QAT", f"refit on the fine-tuned backbone's float and int8 features of "
                                       f"{final.images} training images, L2 C = {final.l2_c:g}"))
    body = "".join(f'<tr><th class="label">{_esc(k)}</th><td>{_esc(v)}</td></tr>' for k, v in rows)
    return f'<table class="summary">{body}</table>'


def _curves(stages: list[StageSummary]) -> str:
    figures = []
    for stage in stages:
        if stage.epochs <= 0:
            continue
        if not stage.curves.epochs:
            figures.append(f'<figure><figcaption>{_esc(stage.name)}: {stage.epochs} epoch(s)</figcaption>'
                           '<p class="note">no per-epoch log in this folder (the stage was trained before the logs '
                           'were kept)</p></figure>')
            continue
        figures.append(f'<figure class="stage" data-stage="{_esc(stage.name)}">{_stage_svg(stage)}</figure>')
    if not figures:
        return '<p class="note">no training stage ran</p>'
    return '<div class="curves">' + "".join(figures) + "</div>"


def _stage_svg(stage: StageSummary) -> str:
    """Loss and accuracy panels of one stage (train solid, held-out dashed) as an inline SVG element."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    figure = Figure(figsize=(7, 2.6), layout="constrained")
    figure.suptitle(f"{stage.name}: {stage.epochs} epoch(s)")
    epochs = stage.curves.epochs
    for axes, metric in zip(figure.subplots(1, 2), ("loss", "accuracy")):
        for name, style, label in ((metric, "-", "train"), (f"val_{metric}", "--", "held-out")):
            if name in stage.curves.metrics:
                axes.plot(epochs, stage.curves.metrics[name], style, marker="o", markersize=3, label=label)
        axes.set_title(metric)
        axes.set_xlabel("epoch")
        if len(epochs) <= 15:
            axes.set_xticks(epochs)
        else:
            axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    buffer = io.StringIO()
    # Text as <text> elements (searchable, small); ids salted per stage so two inline SVGs never share one.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"stage-{stage.name}"}):
        # No RDF metadata block (date, creator): the page is reproducible and names no outside resource.
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Format": None, "Type": None, "Creator": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _confusion(report: Report) -> str:
    classes = report.data.classes
    matrix = np.asarray(report.int8_evaluation.confusion)
    if len(classes) > MAX_MATRIX_CLASSES:
        off = matrix.copy()
        np.fill_diagonal(off, 0)
        cells = sorted(((int(off[t, p]), t, p) for t, p in zip(*np.nonzero(off))), reverse=True)[:30]
        rows = "".join(f'<tr><td class="label">{_esc(classes[t])}</td><td class="label">{_esc(classes[p])}</td>'
                       f"<td>{n}</td></tr>" for n, t, p in cells)
        return (f'<p class="note">{len(classes)} classes: the 30 most frequent confusions instead of the matrix</p>'
                f'<table><tr><th class="label">true</th><th class="label">predicted</th><th>images</th></tr>{rows}'
                "</table>")
    head = "".join(f'<th class="label">{_esc(name)}</th>' for name in classes)
    body = []
    for t, name in enumerate(classes):
        total = max(int(matrix[t].sum()), 1)
        cells = []
        for p in range(len(classes)):
            count = int(matrix[t, p])
            share = count / total
            # Row-normalized shade: green on the diagonal, red off it.
            colour = f"rgba(30,140,60,{share:.2f})" if p == t else f"rgba(200,40,40,{share:.2f})"
            cells.append(f'<td style="background:{colour}" title="{_esc(name)} as {_esc(classes[p])}">{count}</td>')
        body.append(f'<tr><th class="label">{_esc(name)}</th>{"".join(cells)}</tr>')
    return ('<p class="note">rows: true class; columns: the int8 model\'s top-1; cells: images</p>'
            f'<table class="matrix"><tr><th class="label">true \\ predicted</th>{head}</tr>{"".join(body)}</table>')


def _per_class(report: Report) -> str:
    matrix = report.int8_evaluation.confusion
    rows = []
    accuracies = report.int8_evaluation.per_class_accuracy()
    for index, (name, row, accuracy) in enumerate(zip(report.data.classes, matrix, accuracies)):
        rows.append(f'<tr><td class="label">{_esc(name)}</td><td>{sum(row)}</td><td>{row[index]}</td>'
                    f"<td>{_pct(accuracy)}</td></tr>")
    return ('<table><tr><th class="label">class</th><th>held-out images</th><th>correct</th><th>top-1</th></tr>'
            + "".join(rows) + "</table>")


def _worst(report: Report, thumbnails: dict[int, bytes]) -> str:
    worst = report.int8_evaluation.worst
    if not worst:
        return '<p class="note">no held-out images</p>'
    classes = report.data.classes
    mistakes = sum(w.predicted_class != w.true_class for w in worst)
    figures = []
    for w in worst:
        wrong = w.predicted_class != w.true_class
        image = thumbnails.get(w.index)
        img = (f'<img alt="held-out image {w.index}" src="data:image/png;base64,{base64.b64encode(image).decode()}">'
               if image else '<p class="note">(image not available)</p>')
        file = f"<br><span class=\"note\">{_esc(w.file)}</span>" if w.file else ""
        figures.append(
            f'<figure class="{"wrong" if wrong else "right"}">{img}<figcaption>'
            f"true: <b>{_esc(classes[w.true_class])}</b> ({w.true_class_score:.2f})<br>"
            f'predicted: <b class="{"wrong" if wrong else ""}">{_esc(classes[w.predicted_class])}</b> '
            f"({w.confidence:.2f}){file}</figcaption></figure>")
    note = (f"{mistakes} most confident mistakes" if mistakes == len(worst) else
            f"{mistakes} mistake(s), most confident first, then the correct images the model was least sure of")
    return (f'<p class="note">{note}; in brackets the int8 model\'s output for the class</p>'
            f'<div class="worst">{"".join(figures)}</div>')
