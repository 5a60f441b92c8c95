"""`python -m tflite_export.demo [MODEL_OR_RUN_DIR] [--port 8000]`

Serves the web demo (web_demo/: the camera and your photos classified in the browser by LiteRT.js, offline) with a
model on http://127.0.0.1 and prints the address; Ctrl-C stops it. MODEL_OR_RUN_DIR is a pipeline run folder, an
export folder (model.tflite, model_card.json, labels.txt) or a .tflite file with those beside it; without it, the
Android app's bundled ImageNet model. Only this server is contacted: the page and LiteRT.js's wasm come from the
repository and its npm packages (scripts/setup.sh installs them), and the model runs on one thread, so no
cross-origin isolation headers are needed.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import pathlib
import shlex
import sys

from tflite_export.clients import browser_problems
from tflite_export.command import Command, positional, run_command, setting
from tflite_export.verify import analyze

REPO = pathlib.Path(__file__).resolve().parents[1]
WEB_DIR = REPO / "web_demo"
BUNDLED_MODEL = REPO / "android_demo" / "app" / "src" / "main" / "assets"
HOST = "127.0.0.1"
DEFAULT_PORT = 8000
PAGE_FILES = ("index.html", "app.js", "classifier.js", "style.css")
NPM_PACKAGES = ("@litertjs/core", "@litertjs/wasm-utils")  # the only node_modules the page may load
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".json": "application/json", ".txt": "text/plain; charset=utf-8",
                 ".wasm": "application/wasm", ".tflite": "application/octet-stream", ".map": "application/json"}
CARD, LABELS, REPORT = "model_card.json", "labels.txt", "report.json"


def model_files(target: str | pathlib.Path | None = None) -> dict[str, pathlib.Path]:
    """The files the page reads, by the names it asks for: model.tflite and, when present, model_card.json,
    labels.txt and report.json. A card is taken only when it names the model file it sits beside."""
    path = pathlib.Path(target) if target is not None else BUNDLED_MODEL
    if not path.exists():
        raise ValueError(f"{path} does not exist: give a .tflite file, or a folder holding model.tflite")
    if path.is_dir():
        folder, model = path, path / "model.tflite"
        card = _read_card(folder / CARD)
        if card and isinstance(card.get("model_file"), str):
            model = folder / card["model_file"]
        if not model.is_file():
            raise ValueError(f"no model.tflite in {path}: give a run folder, an export folder or a .tflite file")
    else:
        if path.suffix != ".tflite":
            raise ValueError(f"{path} is not a .tflite file")
        folder, model = path.parent, path
    files = {"model.tflite": model}
    card = _read_card(folder / CARD)
    if card is not None and card.get("model_file", model.name) == model.name:
        files[CARD] = folder / CARD
        labels = folder / str(card.get("labels_file") or LABELS)
        if labels.is_file():
            files[LABELS] = labels
    elif (folder / LABELS).is_file():
        files[LABELS] = folder / LABELS
    if (folder / REPORT).is_file():
        files[REPORT] = folder / REPORT
    return files


def _read_card(path: pathlib.Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON: {exc}") from None
    return card if isinstance(card, dict) else None


def warnings_for(files: dict[str, pathlib.Path]) -> list[str]:
    """What the page will refuse or work around, said before the browser is opened."""
    notes = []
    problems = browser_problems(analyze(files["model.tflite"], xnnpack=False))
    if problems:
        notes.append("browsers cannot run this model: " + "; ".join(problems))
    if CARD not in files:
        notes.append(f"no {CARD} beside {files['model.tflite']}: the page needs it (input size, quantization)")
    elif LABELS not in files:
        notes.append(f"no {LABELS} beside {files['model.tflite']}: class names come from the model card")
    return notes


def command_for(run_dir: str | pathlib.Path) -> str:
    """The command that serves a run folder, as a user types it from the repository root."""
    return f".venv/bin/python -m tflite_export.demo {shlex.quote(str(run_dir))}"


def try_it(run_dir: str | pathlib.Path, io_dtype: str) -> str:
    """How to see a run's model in the browser, for the pipeline's summary and report: the command, or why not."""
    if io_dtype == "int8":
        return "not in a browser: LiteRT.js takes no int8 input (export with --io uint8 for the web demo)"
    return f"{command_for(run_dir)}  (camera and photos in the browser, offline)"


def web_root_problem() -> str | None:
    if not (WEB_DIR / "node_modules" / "@litertjs" / "core" / "wasm").is_dir():
        return (f"LiteRT.js is not installed in {WEB_DIR / 'node_modules'}: run bash scripts/setup.sh (it runs npm ci "
                "in web_demo/)")
    return None


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, pathlib.Path] = {}
    quiet = True

    def do_GET(self):
        self._serve(send_body=True)

    def do_HEAD(self):
        self._serve(send_body=False)

    def _resolve(self, url_path: str) -> pathlib.Path | None:
        path = url_path.split("?", 1)[0].split("#", 1)[0]
        if path in ("/", ""):
            return WEB_DIR / "index.html"
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") or "\\" in p for p in parts):
            return None
        if len(parts) == 1 and parts[0] in PAGE_FILES:
            return WEB_DIR / parts[0]
        if len(parts) == 2 and parts[0] == "model":
            return self.files.get(parts[1])
        if len(parts) >= 4 and parts[0] == "npm" and "/".join(parts[1:3]) in NPM_PACKAGES:
            return WEB_DIR / "node_modules" / pathlib.Path(*parts[1:])
        return None

    def _serve(self, *, send_body: bool) -> None:
        target = self._resolve(self.path)
        if target is None or not target.is_file():
            self.send_error(404)
            return
        body = target.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES.get(target.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # another model may be served at the same address next time
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        if not self.quiet:
            super().log_message(format, *args)


def make_server(files: dict[str, pathlib.Path], port: int = DEFAULT_PORT, *, quiet: bool = True):
    handler = type("Handler", (_Handler,), {"files": dict(files), "quiet": quiet})
    try:
        return http.server.ThreadingHTTPServer((HOST, port), handler)
    except OSError as exc:
        raise OSError(f"cannot listen on {HOST}:{port} ({exc.strerror}): pass another --port") from None


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """The flags of `python -m tflite_export.demo` (the positional argument: a run folder, an export folder or a
    .tflite file; default: the Android app's bundled ImageNet model)."""

    port: int = setting(DEFAULT_PORT, "Port on 127.0.0.1 (0: any free port).")
    log: bool = setting(False, "Print every request.")


def demo_command(options: DemoOptions, args: list[str]) -> int:
    target = positional(args, "MODEL_OR_RUN_DIR", least=0)
    problem = web_root_problem()
    if problem:
        raise ValueError(problem)
    files = model_files(target[0] if target else None)
    for note in warnings_for(files):
        print(f"warning: {note}", file=sys.stderr)
    server = make_server(files, options.port, quiet=not options.log)
    print(f"serving {files['model.tflite']} at http://{HOST}:{server.server_address[1]}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


main = Command("tflite_export.demo", DemoOptions, demo_command)

if __name__ == "__main__":
    run_command(main)
