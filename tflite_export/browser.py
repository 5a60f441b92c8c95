"""A headless Chromium running the web demo, for tests/test_web_demo.py and bench/web_demo.py.

`Browser` drives web_demo/browser_driver.mjs (playwright-core from web_demo/node_modules) over JSON lines; `serving`
runs `tflite_export.demo`'s server for a model on a free port of 127.0.0.1 in a thread. Both come from
scripts/setup.sh: Debian's chromium and the npm packages of web_demo/package.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import threading
from typing import Any, Iterator

import numpy as np

from tflite_export import demo

DRIVER = demo.WEB_DIR / "browser_driver.mjs"
PLAYWRIGHT = demo.WEB_DIR / "node_modules" / "playwright-core"


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def missing() -> list[str]:
    """What is not installed for a browser run (empty when everything is)."""
    gone = [] if chromium_path() else ["chromium (apt-get install chromium)"]
    if shutil.which("node") is None:
        gone.append("node")
    if not PLAYWRIGHT.is_dir() or demo.web_root_problem():
        gone.append(f"npm packages in {demo.WEB_DIR} (npm ci)")
    return gone


def write_y4m(path: str | os.PathLike, rgb: np.ndarray, frames: int = 2) -> None:
    """A video of one still RGB picture for Chromium's fake camera (--use-file-for-fake-video-capture): I420, BT.601
    limited range, cropped to even sides; Chromium loops it."""
    rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2].astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    planes = [y] + [(c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]) / 4 for c in (u, v)]
    frame = b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in planes)
    header = f"YUV4MPEG2 W{rgb.shape[1]} H{rgb.shape[0]} F30:1 Ip A1:1 C420jpeg\n".encode()
    pathlib.Path(path).write_bytes(header + b"".join(b"FRAME\n" + frame for _ in range(frames)))


class BrowserError(RuntimeError):
    pass


class Browser:
    """One Chromium for many pages; `fake_video` (a .y4m) becomes its camera."""

    def __init__(self, fake_video: str | os.PathLike | None = None, timeout: float = 120):
        self._timeout = timeout
        self._next_id = 0
        self._proc = subprocess.Popen(["node", str(DRIVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=demo.WEB_DIR)
        self.version = self.call("launch", chromium=chromium_path(),
                                 fakeVideo=str(fake_video) if fake_video else None)

    def call(self, op: str, **kwargs) -> Any:
        self._next_id += 1
        self._proc.stdin.write(json.dumps({"id": self._next_id, "op": op, **kwargs}) + "\n")
        self._proc.stdin.flush()
        result: dict = {}
        reader = threading.Thread(target=lambda: result.update(line=self._proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self._timeout)
        line = result.get("line")
        if not line:
            self.close()
            raise BrowserError(f"browser driver gave no answer to {op!r}: {self._proc.stderr.read()[-2000:]}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise BrowserError(f"{op}: {answer['error']}\npage log: {answer.get('logs')}")
        return answer.get("value")  # JSON has no undefined

    def open(self, url: str, *, camera: bool = True) -> str:
        return self.call("open", url=url, camera=camera)

    def eval(self, fn: str, arg: Any = None) -> Any:
        return self.call("eval", fn=fn, arg=arg)

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self._proc.stdin.write(json.dumps({"id": 0, "op": "close"}) + "\n")
                self._proc.stdin.flush()
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


@contextlib.contextmanager
def serving(model: str | os.PathLike | None = None) -> Iterator[str]:
    """The demo server for `model` (see tflite_export.demo.model_files) on a free port; yields its URL."""
    server = demo.make_server(demo.model_files(model), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{demo.HOST}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def wait_ready(browser: Browser) -> str:
    """Waits for the page to load its model; returns 'ready' or the message the page shows."""
    return browser.eval("() => window.demo.ready")
