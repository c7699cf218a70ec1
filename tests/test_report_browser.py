"""The nightly's report (index.html) opened in a real browser: headless Chromium.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages ended by NUL on file descriptors 3 and 4), with the standard
library only.  The test checks that the page logs no console error and throws
nothing, that every image (the trend plots, PNG data URIs) decodes, and that the
latest run's verdict is visible; it keeps a screenshot of the whole page in its
``tmp_path`` (the path is printed, and kept as the test's ``screenshot``
property in a JUnit XML report).

Chromium comes from the distribution: ``chromium-headless-shell`` (or
``chromium``).  Where neither is installed the test installs
``chromium-headless-shell`` with apt-get (as root; so does ``.ci/run`` on a
fresh machine, through this test); it skips only where that is impossible (not
root, no apt-get, or the install fails).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmharness.tools.nightly import history, records
from kvmharness.tools.nightly.page import html_report

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus" / "mutants"
BROWSERS = ("chromium-headless-shell", "chromium")
APT_PACKAGE = "chromium-headless-shell"


def _find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = _find_browser()
    if exe is None:
        why = _install_browser()
        exe = _find_browser()
        if exe is None:
            pytest.skip(f"headless Chromium is not installed and cannot be installed here: {why}")
    return exe


def _install_browser() -> str:
    """apt-get install chromium-headless-shell; why it failed, or ''."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"needs root and apt-get (apt-get install {APT_PACKAGE})"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", APT_PACKAGE],
    ):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(cmd)}: {exc}"
        if r.returncode != 0:
            return f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()[-300:]}"
    return ""


class Browser:
    """Headless Chromium over the DevTools protocol on a pipe."""

    def __init__(self, exe: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds() -> None:  # in the child: the pipe ends where Chromium expects them
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--remote-debugging-pipe",
                "--no-sandbox",  # root in a container has no user namespace for it
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,900",
                f"--user-data-dir={profile}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,
            close_fds=False,  # the dup2'd 3 and 4 are inheritable; Python's own fds are not
            start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> Any:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            e = self._read(deadline)
            self.events.append(e)
            if e.get("method") == method:
                return e

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the pipe (exit {self.proc.poll()})")
                self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        r = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and errors the browser logged."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params") or {}
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value")) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails"))[:300])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + p["entry"].get("text", ""))
        return out

    def screenshot(self) -> bytes:
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": size["height"],
                    "scale": 1,
                },
            },
        )
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    b = Browser(chromium, tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


#: every image decoded (img.decode()), with its natural size
IMAGES_JS = """Promise.all([...document.images].map(img => img.decode().then(
    () => ({alt: img.alt, width: img.naturalWidth, height: img.naturalHeight, ok: true}),
    err => ({alt: img.alt, width: img.naturalWidth, height: 0, ok: false, why: String(err)}))))"""

#: the latest run's verdict: its text, and whether it is rendered where one looks
VERDICT_JS = """(() => {
    const el = document.querySelector('.verdict');
    if (!el) return null;
    const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return {text: el.innerText, visible: r.width > 0 && r.height > 0 && r.top >= 0
            && r.bottom <= window.innerHeight && s.visibility === 'visible'
            && s.display !== 'none' && s.opacity !== '0'};
})()"""


def corpus_history(path: Path) -> None:
    """A history of two real runs: the control build, then a steal mutant's."""
    for n, name in enumerate(("control.steal", "steal-not-accounted.steal")):
        run_doc = json.loads(gzip.decompress((CORPUS / f"{name}.json.gz").read_bytes()))
        code = run_doc.get("exit_code", 0)
        rec = records.make_record(
            {"run_doc": run_doc, "run_rc": code, "pytest_rc": None},
            host_name="corpus",
            date=f"2026-12-0{n + 1}T03:00:00Z",
            exit_code=code,
        )
        history.append_record(path, rec)


def check_page(b: Browser, page: Path) -> dict[str, Any]:
    b.open(page.resolve().as_uri())
    return {"images": b.evaluate(IMAGES_JS), "verdict": b.evaluate(VERDICT_JS)}


@pytest.mark.timeout(1200)  # the first test may install Chromium (apt-get)
def test_the_nightly_report_in_headless_chromium(
    browser: Browser, tmp_path: Path, record_property: Any
) -> None:
    hist = tmp_path / "history.jsonl"
    corpus_history(hist)
    recs, problems = history.read_history(hist)
    assert problems == [] and recs[-1]["exit_code"] == 1
    page = tmp_path / "index.html"
    page.write_text(html_report(recs, problems, last=10))

    seen = check_page(browser, page)
    shot = tmp_path / "nightly-report.png"
    shot.write_bytes(browser.screenshot())
    record_property("screenshot", str(shot))
    print(f"screenshot of the report: {shot}")

    assert browser.errors() == []
    images = seen["images"]
    assert len(images) >= 2, images  # the trend plots
    bad = [i for i in images if not i["ok"] or i["width"] < 100 or i["height"] < 100]
    assert bad == [], bad
    verdict = seen["verdict"]
    assert verdict is not None and verdict["visible"], verdict
    assert verdict["text"].startswith("latest run: exit 1"), verdict
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.timeout(1200)
def test_the_browser_check_sees_a_broken_page(browser: Browser, tmp_path: Path) -> None:
    """Negative control: an image that does not decode, a console error, a
    thrown exception and a hidden verdict are each seen."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body>"
        "<p style='margin-top:3000px'><span class='verdict'>latest run: exit 0</span></p>"
        "<img alt='plot' src='data:image/png;base64,iVBORw0KGgoAAAA='>"
        "<script>console.error('a console error'); null.x;</script>"
        "</body></html>"
    )
    seen = check_page(browser, page)
    assert [i["ok"] for i in seen["images"]] == [False]
    assert seen["verdict"]["visible"] is False  # below the fold
    errors = browser.errors()
    assert any("a console error" in e for e in errors), errors
    assert any(e.startswith("exception:") for e in errors), errors
