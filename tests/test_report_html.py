"""report.html: the page builder, and the page of a real experiment opened in headless Chromium.

The browser is driven over the Chrome DevTools Protocol on ``--remote-debugging-pipe``
(requests on fd 3, replies on fd 4, each message JSON ended by a NUL byte). The test fails,
never skips, when Chromium is missing or cannot start: ``.ci/run`` installs it.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time

import numpy as np
import pytest
from PIL import Image as PILImage

from deadzone.cli import main
from deadzone.errors import DeadzoneError
from deadzone.experiments.crystallize import CrystallizeConfig, crystallize
from deadzone.models.presets import get_preset
from deadzone.models.pretraining import build_model, train_tokenizer
from deadzone.report import html
from deadzone.training.train import SFTConfig

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-debugging-pipe",
]  # fmt: skip
TIMEOUT = 30.0


def prompt_rows(n: int) -> list[dict]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]
    return [
        {"prompt": f"Say {words[i % 9]} then {words[(2 * i) % 9]}:",
         "completion": f" {words[i % 9]} {words[(2 * i) % 9]}."}
        for i in range(n)
    ]  # fmt: skip


def run_experiment(root, strategies: tuple[str, ...]):
    """A real crystallize experiment of a micro GPT-2 (2 steps, 2 seeds) in ``root/exp``."""
    data = prompt_rows(40)
    tokenizer = train_tokenizer([r["prompt"] + r["completion"] for r in data], 300)
    model = build_model(get_preset("micro"), tokenizer)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    config = CrystallizeConfig(
        model=str(root / "model"), targets="L1.attn.c_proj", strategies=strategies, seeds=2,
        data=str(root / "data.jsonl"), max_length=48,
        sft=SFTConfig(steps=2, lr=3e-3, batch_size=4, eval_every=2),
    )  # fmt: skip
    crystallize(config, root / "exp", show_progress=False)
    return root / "exp"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = run_experiment(tmp_path_factory.mktemp("report"), ("full", "frozen", "crystal", "random"))
    assert main(["report", str(out)]) == 0
    return out


# --- a small CDP client over a pipe ------------------------------------------------------------


def above_9(fd: int) -> int:
    """``fd`` moved to a number of 10 or more."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """Headless Chromium and its DevTools pipe; every message it sends is kept in ``log``."""

    def __init__(self, profile):
        ours_r, its_w = os.pipe()  # Chromium writes replies on its fd 4
        its_r, ours_w = os.pipe()  # and reads requests on its fd 3
        its_r, its_w = (above_9(fd) for fd in (its_r, its_w))  # clear of 3 and 4
        self.stderr = profile / "chromium.log"
        if not os.access(CHROMIUM, os.X_OK):
            pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)")
        # bash puts the pipe ends at fds 3 and 4, then becomes Chromium.
        at_3_and_4 = f'exec "$0" "$@" 3<&{its_r} 4>&{its_w} {its_r}<&- {its_w}>&-'
        args = [*FLAGS, f"--user-data-dir={profile / 'profile'}", "about:blank"]
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                ["bash", "-c", at_3_and_4, CHROMIUM, *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                pass_fds=(its_r, its_w),
            )  # fmt: skip
        os.close(its_r)
        os.close(its_w)
        self.rfd, self.wfd = ours_r, ours_w
        self.buffer, self.pending, self.log, self.next_id = b"", [], [], 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.wfd, json.dumps(message).encode() + b"\0")
        reply = self.wait(lambda m, i=self.next_id: m.get("id") == i)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait(self, match, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.pending):
                if match(message):
                    return self.pending.pop(i)
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                tail = self.stderr.read_text(errors="replace")[-2000:]
                pytest.fail(f"chromium did not answer (exit {self.proc.poll()}): {tail}")
            if select.select([self.rfd], [], [], left)[0]:
                chunk = os.read(self.rfd, 1 << 20)
                if not chunk:
                    continue  # the pipe closed: poll() tells on the next turn
                *messages, self.buffer = (self.buffer + chunk).split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    self.log.append(message)
                    self.pending.append(message)

    def open(self, url: str, width: int, height: int) -> str:
        """A new tab showing ``url`` at a ``width`` × ``height`` viewport, once it has loaded."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        session = session["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.resize(session, width, height)
        self.send("Page.navigate", {"url": url}, session)
        loaded = {"method": "Page.loadEventFired", "sessionId": session}
        self.wait(lambda m: loaded.items() <= m.items())
        return session

    def resize(self, session: str, width: int, height: int) -> None:
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}
        self.send("Emulation.setDeviceMetricsOverride", metrics, session)

    def evaluate(self, session: str, expression: str):
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        result = self.send("Runtime.evaluate", params, session)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"]["value"]

    def problems(self, session: str) -> list[str]:
        """Console errors, uncaught exceptions, failed or non-local requests of a tab."""
        found = []
        for m in self.log:
            method, p = m.get("method"), m.get("params", {})
            if m.get("sessionId") != session:
                continue
            if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                found.append(f"console.{p['type']}: {p['args']}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                found.append(f"log: {p['entry']['text']}")
            elif method == "Network.loadingFailed":
                found.append(f"failed request: {p.get('errorText')}")
            elif method == "Network.requestWillBeSent":
                url = p["request"]["url"]
                if not url.startswith(("file:", "data:")):
                    found.append(f"request: {url}")
        return found

    def close(self) -> None:
        try:
            os.write(self.wfd, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self.rfd)
        os.close(self.wfd)


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path)
    yield b
    b.close()


PAGE_FACTS = """(async () => {
  const images = [...document.images];
  await Promise.all(images.map(i => i.decode()));
  return {
    images: images.map(i => i.naturalWidth),
    claims: [...document.querySelectorAll('#claims table tbody tr td:nth-child(3)')]
      .map(td => td.textContent),
    tables: document.querySelectorAll('table').length,
    pageWidth: document.scrollingElement.scrollWidth,
    innerWidth: innerWidth,
    scrollingTables: [...document.querySelectorAll('.scroll')]
      .filter(d => d.scrollWidth > d.clientWidth).length,
  };
})()"""


def screenshot(browser: Browser, session: str) -> np.ndarray:
    data = browser.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
    return np.asarray(PILImage.open(io.BytesIO(base64.b64decode(data))).convert("L"), dtype=float)


def test_report_opens_in_chromium_whole_and_readable_on_a_phone(experiment, browser):
    page = experiment / "report.html"
    session = browser.open(page.as_uri(), 1280, 900)
    facts = browser.evaluate(session, PAGE_FACTS)
    assert browser.problems(session) == []
    assert facts["images"] and all(width > 0 for width in facts["images"]), facts
    assert facts["claims"] and set(facts["claims"]) <= {"confirmed", "refuted", "undetermined"}
    assert len(facts["claims"]) == 3  # frozen, crystal, random: the study's three claims
    assert facts["tables"] >= 2
    pixels = screenshot(browser, session)
    assert pixels.shape == (900, 1280)
    assert pixels.std() > 5 and (pixels < 128).mean() > 0.005  # text and lines, not blank

    browser.resize(session, 390, 844)  # a phone: the page never scrolls sideways, tables do
    phone = browser.evaluate(session, PAGE_FACTS)
    assert phone["innerWidth"] == 390
    assert phone["pageWidth"] <= phone["innerWidth"], phone
    assert phone["scrollingTables"] >= 1
    assert screenshot(browser, session).std() > 5
    assert browser.problems(session) == []


def test_the_browser_check_sees_a_broken_page(tmp_path, browser):
    """The checks above can fail: a script error, an external request, a broken image."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<html><body><img src="missing.png"><img src="http://127.0.0.1:9/x.png">'
        "<script>console.error('boom')</script></body></html>"
    )
    session = browser.open(bad.as_uri(), 800, 600)
    problems = " ".join(browser.problems(session))
    assert "boom" in problems and "http://127.0.0.1:9/x.png" in problems
    assert "failed request" in problems
    widths = browser.evaluate(session, "[...document.images].map(i => i.naturalWidth)")
    assert widths == [0, 0]


# --- the page builder --------------------------------------------------------------------------


def png(path, width=3, height=2) -> None:
    image = PILImage.new("RGB", (width, height), (200, 10, 10))
    image.save(path, format="PNG")


def test_page_escapes_text_embeds_images_and_is_deterministic(tmp_path):
    png(tmp_path / "a.png")
    page = html.Page(
        'Title <&> "quoted"',
        claims=[html.Claim("A < B", "study 1%", "refuted", "here `x` & y")],
        sections=[
            html.Section(
                "S <1>",
                [
                    html.Paragraph("<script>alert(1)</script> and `code <b>`"),
                    html.Table(["h<", "v"], [["a&b", html.Cell("worse", "worse")]], "cap>"),
                    html.Image(tmp_path / "a.png", 'alt "x"'),
                    html.Section("Sub", [html.Paragraph("deeper")]),
                ],
            )
        ],
    )
    text = html.render(page)
    assert text == html.render(page)
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<code>code &lt;b&gt;</code>" in text and "<title>Title &lt;&amp;&gt;" in text
    assert (
        '<td class="refuted" data-label="On this model">refuted</td>' in text
        and '<td class="worse">worse</td>' in text
    )
    assert "<th>h&lt;</th>" in text and "<caption>cap&gt;</caption>" in text
    assert 'width="3" height="2"' in text and 'alt="alt &quot;x&quot;"' in text
    encoded = base64.b64encode((tmp_path / "a.png").read_bytes()).decode()
    assert f'src="data:image/png;base64,{encoded}"' in text
    assert "<h3>Sub</h3>" in text and "http" not in text.replace("http-equiv", "")
    assert "overflow-x:auto" in text and "max-width:100%" in text

    path = html.write(page, tmp_path / "out" / "report.html")
    assert path.read_text(encoding="utf-8") == text
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left


def test_page_refuses_bad_parts(tmp_path):
    with pytest.raises(ValueError, match="claim verdict 'maybe'"):
        html.Claim("c", "s", "maybe", "n")
    with pytest.raises(ValueError, match="not a CSS class name"):
        html.Cell("x", 'a" onclick="b')
    with pytest.raises(ValueError, match="a row has 1 cells for 2 headers"):
        html.Table(["a", "b"], [["only"]])
    (tmp_path / "fake.png").write_text("not a png")
    for image, message in [("fake.png", "is not a PNG file"), ("gone.png", "cannot read image")]:
        page = html.Page("t", sections=[html.Section("s", [html.Image(tmp_path / image, "x")])])
        with pytest.raises(DeadzoneError, match=message):
            html.render(page)
