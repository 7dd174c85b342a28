"""Open a local HTML file in headless Chromium and report what a person would see: console errors,
failed requests, values computed in the page, a screenshot.

Talks the DevTools protocol over ``--remote-debugging-pipe`` (Chromium reads commands on fd 3 and
writes replies and events on fd 4, NUL-separated JSON), so no port, no websocket library and no
network are involved. Used by the report's browser test and by ``neat report --screenshot``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
         "--hide-scrollbars", "--mute-audio"]


class BrowserError(RuntimeError):
    """Chromium is missing, died, or did not answer in time."""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary ($NEAT_CHROMIUM first), or None."""
    env = os.environ.get("NEAT_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


@dataclass
class PageCheck:
    """What loading the page produced. console: (level, text) of every console message; errors:
    uncaught exceptions, console errors and log entries of level error (failed loads, CSP
    violations); requests: every URL the page asked for; values: the results of ``evaluate``."""

    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    values: dict = field(default_factory=dict)
    screenshot: Path | None = None


class _Pipe:
    def __init__(self, binary: str, user_dir: str):
        r_cmd, w_cmd = os.pipe()  # we write commands -> chromium reads fd 3
        r_evt, w_evt = os.pipe()  # chromium writes fd 4 -> we read
        # In the child, fd 3 must be the read end of the command pipe and fd 4 the write end of the
        # event pipe. os.pipe's fds are not inheritable, so only these two copies survive the exec.
        def child_fds():
            a, b = os.dup(r_cmd), os.dup(w_evt)  # copies first: r_cmd / w_evt may themselves be 3 or 4
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={user_dir}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     close_fds=False, preexec_fn=child_fds)
        os.close(r_cmd)
        os.close(w_evt)
        self.w, self.r = w_cmd, r_evt
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time")
            ready, _, _ = select.select([self.r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                raise BrowserError(f"Chromium closed the pipe (exit {self.proc.poll()}): {err}")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def close(self) -> None:
        try:
            os.write(self.w, json.dumps({"id": 10 ** 9, "method": "Browser.close"}).encode() + b"\0")
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.w, self.r):
            try:
                os.close(fd)
            except OSError:
                pass


def check_page(html_file: str | Path, *, evaluate: dict[str, str] | None = None, screenshot: str | Path | None = None,
               width: int = 1280, height: int = 900, full_page: bool = True, binary: str | None = None,
               timeout: float = 60) -> PageCheck:
    """Load ``html_file`` in headless Chromium and collect console messages, errors and requests.

    ``evaluate``: {name: JavaScript expression}, evaluated after the page loaded (results in
    ``values``). ``screenshot``: write a PNG of the page (the whole page when ``full_page``)."""
    binary = binary or find_chromium()
    if binary is None:
        raise BrowserError("no Chromium found (install Debian's `chromium` package or set NEAT_CHROMIUM)")
    url = Path(html_file).resolve().as_uri()
    out = PageCheck()
    with tempfile.TemporaryDirectory(prefix="neat-chromium-") as user_dir:
        pipe = _Pipe(binary, user_dir)
        try:
            deadline = time.monotonic() + timeout
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
            pipe.send("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout=max(1.0, deadline - time.monotonic()))
            for name, expr in (evaluate or {}).items():
                r = pipe.send("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=session)
                if "exceptionDetails" in r:
                    raise BrowserError(f"evaluating {name}: {r['exceptionDetails'].get('text')}")
                out.values[name] = r["result"].get("value")
            if screenshot is not None:
                params = {"format": "png"}
                if full_page:
                    m = pipe.send("Page.getLayoutMetrics", session=session)
                    size = m.get("cssContentSize") or m["contentSize"]
                    params.update(captureBeyondViewport=True,
                                  clip={"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1})
                data = pipe.send("Page.captureScreenshot", params, session=session)["data"]
                Path(screenshot).write_bytes(base64.b64decode(data))
                out.screenshot = Path(screenshot)
            pipe.send("Runtime.evaluate", {"expression": "0"}, session=session)  # flush pending events
        finally:
            pipe.close()
    for e in pipe.events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            out.console.append((p.get("type", ""), text))
            if p.get("type") in ("error", "assert"):
                out.errors.append(f"console.{p.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.errors.append(f"uncaught: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Log.entryAdded":
            entry = p.get("entry", {})
            out.console.append((entry.get("level", ""), entry.get("text", "")))
            if entry.get("level") == "error":
                out.errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            out.requests.append(p.get("request", {}).get("url", ""))
    return out
