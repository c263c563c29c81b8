"""Headless Chromium over the DevTools protocol on a pipe, and the page shots taken with it (stdlib only)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Chromium reads DevTools messages on fd 3 and writes replies on fd 4 (--remote-debugging-pipe): the shell
# moves our pipe ends there and points stdin/stdout at /dev/null, so no log line reaches the protocol.
MOVE_PIPES_AND_EXEC = 'exec "$@" 3<&0 4>&1 </dev/null >/dev/null'


class ShotError(RuntimeError):
    """A page did not render what the shot needs, or the browser failed; the message names the page."""


@dataclass(frozen=True)
class Shot:
    """One PNG: the page, the texts that prove its data has rendered, the clicks that tidy it up."""

    file_name: str
    url: str
    must_show: tuple[str, ...]
    clicks: tuple[str, ...] = ()
    height: int | None = None  # the page's own viewport height: less for short pages, more for long ones


@dataclass
class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe: no extra package, no debug port."""

    executable: str
    width: int
    height: int
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _to_browser: int = field(default=-1, init=False)
    _from_browser: int = field(default=-1, init=False)
    _buffer: bytes = field(default=b"", init=False)
    _last_id: int = field(default=0, init=False)

    def start(self, profile_dir: Path) -> Chromium:
        browser_reads, self._to_browser = os.pipe()
        self._from_browser, browser_writes = os.pipe()
        flags = [
            "--headless=new",
            "--no-sandbox",  # runs as root in containers, where the sandbox cannot start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--hide-scrollbars",
            f"--window-size={self.width},{self.height}",
            f"--user-data-dir={profile_dir}",
            "--remote-debugging-pipe",
        ]
        self.process = subprocess.Popen(
            ["sh", "-c", MOVE_PIPES_AND_EXEC, "sh", self.executable, *flags],
            stdin=browser_reads,
            stdout=browser_writes,
            stderr=subprocess.DEVNULL,
        )
        os.close(browser_reads)
        os.close(browser_writes)
        return self

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout_s: float = 30,
    ) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are not needed here."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._next_message(deadline, method)
            if reply.get("id") == self._last_id:
                if "error" in reply:
                    raise ShotError(f"Chromium refused {method}: {reply['error'].get('message')}")
                return dict(reply.get("result", {}))

    def _next_message(self, deadline: float, method: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise ShotError(f"Chromium did not answer {method} in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ShotError(f"Chromium exited while answering {method}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return dict(json.loads(raw))

    def open_tab(self, url: str, height: int | None = None) -> tuple[str, str]:
        """A new tab on `url`, as wide as the window and `height` (default: the window's) high; returns
        (target id, session id)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        viewport = {
            "width": self.width,
            "height": height or self.height,
            "deviceScaleFactor": 1,
            "mobile": False,
        }
        self.call("Emulation.setDeviceMetricsOverride", viewport, session)
        self.call("Page.navigate", {"url": url}, session)
        return target, session

    def evaluate(self, session: str, expression: str) -> Any:
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self.call("Runtime.evaluate", params, session)
        return None if "exceptionDetails" in result else result["result"].get("value")

    def wait_for(self, session: str, expression: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.evaluate(session, expression) is True:
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ShotError, OSError):  # already gone: the wait below still reaps it
            self.call("Browser.close", timeout_s=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self.process = None


@contextmanager
def chromium(executable: str, width: int, height: int) -> Iterator[Chromium]:
    with tempfile.TemporaryDirectory(prefix="screenshots-chromium-") as profile:
        browser = Chromium(executable, width, height).start(Path(profile))
        try:
            yield browser
        finally:
            browser.stop()


def set_local_storage(browser: Chromium, origin: str, items: dict[str, Any]) -> None:
    """UI preferences the pages read at start-up (the profile keeps them for every later tab)."""
    target, session = browser.open_tab(origin + "/")
    if not browser.wait_for(session, 'document.readyState === "complete"', 30):
        raise ShotError(f"{origin} did not load")
    for key, value in items.items():
        browser.evaluate(session, f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(value))})")
    browser.call("Target.closeTarget", {"targetId": target})


def take(browser: Chromium, shot: Shot, out_dir: Path, timeout_s: float) -> Path:
    target, session = browser.open_tab(shot.url, shot.height)
    rendered = f"{json.dumps(list(shot.must_show))}.every(t => document.body.innerText.includes(t))"
    if not browser.wait_for(session, rendered, timeout_s):
        failed = out_dir / f"{Path(shot.file_name).stem}.failed.png"
        failed.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot", {}, session)["data"]))
        raise ShotError(
            f"{shot.file_name}: {shot.url} did not show {list(shot.must_show)} in {timeout_s:.0f} s "
            f"(what it showed: {failed})"
        )
    for selector in shot.clicks:
        browser.evaluate(session, f"document.querySelector({json.dumps(selector)})?.click()")
    time.sleep(2.0)  # let charts and transitions settle: the texts appear before the layout is final
    data = browser.call("Page.captureScreenshot", {"format": "png"}, session)["data"]
    browser.call("Target.closeTarget", {"targetId": target})
    path = out_dir / shot.file_name
    path.write_bytes(base64.b64decode(data))
    return path
