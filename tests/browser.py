"""A real Chromium the tests drive: the command line's one-shot `headless` runs (a DOM dump, a
screenshot) and a `Browser` session that opens a page at a laptop's size and measures its layout
boxes, over Chrome's DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages ended by a
NUL byte, commands on the child's fd 3, answers on its fd 4), so it needs nothing beyond the stdlib.

`layout_problems` is what a person sees at a glance and the DOM alone does not say: a title cut
off, a legend drawn over a chart's data, a picture shrunk below a readable size, a page wider than
the window, or MLflow's GenAI pages where its classic runs view was meant.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

LAPTOP = (1366, 768)  # the width issue 31 judges pages at


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--hide-scrollbars")


def headless(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)


class Browser:
    """One Chromium with one tab of a fixed size; `open` a page, `wait_for` a condition in it,
    `evaluate` JavaScript, `screenshot`. A context manager: the browser ends with the block."""

    def __init__(self, profile: Path, size: tuple[int, int] = LAPTOP):
        commands_r, self._commands = os.pipe()  # we write, the browser reads on its fd 3
        self._answers, answers_w = os.pipe()  # the browser writes on its fd 4, we read
        # Both child ends sit above 4 first, so that placing them on 3 and 4 cannot close one of them.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_r, answers_w)]
        for fd in (commands_r, answers_w):
            os.close(fd)

        def place() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
                                         f"--window-size={size[0]},{size[1]}", "about:blank"],
                                        pass_fds=(3, 4, *high), preexec_fn=place, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fds 3 and 4: kept past subprocess's closing
        for fd in high:
            os.close(fd)
        self._next, self._buffer = 0, b""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                  mobile=False, session=True)
        self.send("Page.enable", session=True)

    def send(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that arrive meanwhile are dropped)."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read()
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._answers, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}...: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.send("Page.navigate", session=True, url=url)
        self.wait_for("document.readyState === 'complete'")

    def wait_for(self, expression: str, seconds: float = 60) -> None:
        """Until the expression is true in the page; fails with the page's text if it never is."""
        deadline = time.monotonic() + seconds
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText.slice(0, 600) : ''")
                raise AssertionError(f"not true after {seconds:g} s: {expression}\nthe page shows: {text}")
            time.sleep(0.5)

    def text(self) -> str:
        return self.evaluate("document.body.innerText")

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        """The window as shown; `full_page`: the whole page, as tall as it is, at the window's width."""
        clip = {}
        if full_page:
            width, height = self.evaluate("[document.documentElement.clientWidth, document.documentElement.scrollHeight]")
            clip = {"clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}
        shot = self.send("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=full_page, **clip)
        path.write_bytes(base64.b64decode(shot["data"]))

    def layout_problems(self, min_picture_px: int = 0) -> list[str]:
        """What is wrong with the page as laid out at this size (an empty list: nothing)."""
        return self.evaluate(layout_checks(min_picture_px))

    def scroll_through(self, expression: str, pause: float = 1.0, stops: int = 20) -> list[Any]:
        """The expression's value at each stop while the page's tallest scrolling pane is scrolled a
        screen at a time, top to bottom: MLflow draws a chart only once it is scrolled into view."""
        seen = [self.evaluate(expression)]
        for _ in range(stops):
            if not self.evaluate(SCROLL_A_SCREEN):
                break
            time.sleep(pause)
            seen.append(self.evaluate(expression))
        return seen

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._answers)


SCROLL_A_SCREEN = r"""
(() => {
  const panes = [document.scrollingElement, ...document.querySelectorAll('*')].filter(e => e
    && e.scrollHeight > e.clientHeight + 10 && (e === document.scrollingElement || /auto|scroll/.test(getComputedStyle(e).overflowY)));
  if (!panes.length) return false;
  const pane = panes.reduce((a, b) => (b.scrollHeight > a.scrollHeight ? b : a));
  if (pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 2) return false;
  pane.scrollTop += Math.round(pane.clientHeight * 0.8);
  return true;
})()
"""


def layout_checks(min_picture_px: int = 0) -> str:
    """The JavaScript expression whose value is the list `Browser.layout_problems` returns."""
    return LAYOUT_CHECKS.replace("MIN_PICTURE_PX", str(int(min_picture_px)))


# The checks, in the page, on its own layout boxes (getBoundingClientRect, scroll and client sizes):
# - a title cut off: a heading, caption, table header, or a chart card's title (MLflow's cards end a
#   long title with an ellipsis) whose text is wider than its box or runs past the window's right edge;
# - a legend over data: a plotly legend (MLflow's charts) whose box overlaps a plotted point, bar or
#   line of its own chart;
# - a picture below a readable size: an <img> marked data-faces (faces per row) and data-min-px shown
#   narrower than that many CSS pixels a face, or a figure's picture (not an icon) shown below
#   min_picture_px wide, or below its own width where that is less;
# - a page wider than the window (it scrolls sideways);
# - MLflow's GenAI pages (its trace overview), which a runs link must never open.
LAYOUT_CHECKS = r"""
(() => {
  const problems = [];
  const width = document.documentElement.clientWidth;
  const name = el => (el.innerText || el.textContent || el.getAttribute('alt') || el.tagName).trim().slice(0, 60);
  const shown = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0
                        && getComputedStyle(el).visibility !== 'hidden'; };
  const titles = 'h1, h2, h3, h4, caption, th, figcaption, [class*="title" i], [data-testid*="title" i]';
  for (const el of document.querySelectorAll(titles)) {
    if (!shown(el) || !el.innerText || !el.innerText.trim()) continue;
    const r = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    const cut = el.scrollWidth > el.clientWidth + 1 && (style.overflow !== 'visible' || style.textOverflow === 'ellipsis');
    if (cut || r.right > width + 1) problems.push(`title cut off: "${name(el)}" (${Math.round(r.width)} px box)`);
  }
  for (const plot of document.querySelectorAll('.js-plotly-plot, .plot-container')) {
    for (const legend of plot.querySelectorAll('g.legend')) {
      const l = legend.getBoundingClientRect();
      if (!l.width) continue;
      const marks = plot.querySelectorAll('.point, path.point, .bars path, .scatterlayer path.js-line, .trace path');
      for (const mark of marks) {
        const m = mark.getBoundingClientRect();
        if (m.width + m.height > 0 && m.left < l.right && l.left < m.right && m.top < l.bottom && l.top < m.bottom) {
          problems.push('a legend drawn over the chart\'s data'); break;
        }
      }
    }
  }
  for (const img of document.querySelectorAll('img')) {
    if (!shown(img)) continue;
    const r = img.getBoundingClientRect();
    const faces = Number(img.dataset.faces || 0), least = Number(img.dataset.minPx || 0);
    if (faces && least && r.width / faces < least)
      problems.push(`picture too small: "${name(img)}" shows ${Math.round(r.width / faces)} px per face, under ${least}`);
    if (MIN_PICTURE_PX && img.closest('figure') && r.width < Math.min(MIN_PICTURE_PX, img.naturalWidth))
      problems.push(`picture too small: "${name(img)}" is ${Math.round(r.width)} px wide`);
  }
  if (document.documentElement.scrollWidth > width + 1)
    problems.push(`the page is ${document.documentElement.scrollWidth} px wide in a ${width} px window`);
  const text = document.body ? document.body.innerText : '';
  if (/\bTraces\b/.test(text) && /(Overview|No data available|Detect Issues)/.test(text))
    problems.push('MLflow\'s GenAI pages (traces overview), not the classic runs view');
  return problems;
})()
"""
