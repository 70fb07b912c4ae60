"""``agentctl report``: the HTML file, checked in a real headless chromium.

The browser is Debian's chromium, installed by the session fixture when it is missing (CI
runs as root on a clean Debian machine); where it cannot be installed the browser tests skip
and say why. It is driven over the Chrome DevTools protocol with websocket-client.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

AGENTCTL = [sys.executable, "-m", "agentctl"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_TIMEOUT_S = 1200


# --------------------------------------------------------------------------- runs


def agentctl(*args: str, cwd: Path, state: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTCTL_STATE_DIR": str(state), "AGENTCTL_PLAIN": "1"}
    p = subprocess.run([*AGENTCTL, *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=120)
    if check and p.returncode not in (0, 1):
        raise AssertionError(f"agentctl {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)></pre></details>&amp;"

PIPELINE = """\
name: mixed
defaults: {retries: 1}
tasks:
  fetch:
    command: [sh, -c, "echo fetched"]
  write-note:
    skill: writer
    needs: fetch
    command: [sh, -c, 'cat >/dev/null; cp "$AGENTCTL_WORKSPACE/report.json" "$AGENTCTL_OUTPUT"']
  flaky:
    needs: fetch
    command: [sh, -c, "echo 'disk on fire' >&2; exit 3"]
  slow:
    needs: fetch
    timeout: 1s
    retries: 0
    command: [sleep, "30"]
  stuck:
    needs: fetch
    command: [sh, -c, 'printf "{\\"status\\":\\"BLOCKED\\",\\"summary\\":\\"no key\\",\\"blockers\\":[\\"no API key\\"]}" > "$AGENTCTL_OUTPUT"']
  publish:
    needs: [write-note, flaky]
    command: [sh, -c, "echo never"]
"""


def make_mixed_run(root: Path) -> tuple[Path, Path, str]:
    """A real run with every kind of lane: complete, retried then failed, timed out,
    blocked, skipped; one report carries markup that must stay text."""
    proj = root / "proj"
    (proj / "skills" / "writer").mkdir(parents=True)
    (proj / "skills" / "writer" / "SKILL.md").write_text(
        "---\nname: writer\ndescription: Writes a note. Use in tests.\n---\nWrite the note.\n")
    (proj / "p.yaml").write_text(PIPELINE)
    (proj / "report.json").write_text(json.dumps(
        {"status": "COMPLETE", "summary": f"note written {HOSTILE}", "output": {"words": 3}}))
    state = root / "state"
    p = agentctl("run", "p.yaml", "--run-id", "mixed-1", cwd=proj, state=state)
    assert p.returncode == 1, p.stderr  # the run fails: flaky, slow and stuck do
    return proj, state, "mixed-1"


def make_big_run(root: Path, waves: int = 5, width: int = 100) -> tuple[Path, Path, str]:
    proj = root / "big"
    proj.mkdir(parents=True)
    lines = ["name: big", "limits: {concurrency: 128}", "tasks:"]
    for w in range(waves):
        for j in range(width):
            lines += [f"  w{w}-t{j:03d}:", "    runner: noop"]
            if w:
                lines.append(f"    needs: [w{w - 1}-t{j:03d}]")
    (proj / "p.yaml").write_text("\n".join(lines) + "\n")
    state = root / "state"
    p = agentctl("run", "p.yaml", "--run-id", "big-1", cwd=proj, state=state)
    assert p.returncode == 0, p.stderr
    return proj, state, "big-1"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    return make_mixed_run(tmp_path_factory.mktemp("mixed"))


# --------------------------------------------------------------------------- the file


def test_report_writes_one_self_contained_file(mixed: tuple[Path, Path, str], tmp_path: Path) -> None:
    proj, state, rid = mixed
    p = agentctl("report", rid, cwd=proj, state=state)
    assert p.returncode == 0, p.stderr
    default = state / "runs" / rid / "report.html"
    assert p.stdout.strip() == str(default)
    page = default.read_text()
    # self-contained: no external fetch of any kind, and a CSP that forbids one
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.I)
    assert "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page
    assert page.count("<script") == 1
    # agent output is escaped, never markup
    assert "<script>alert(1)" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for tid in ("fetch", "write-note", "flaky", "slow", "stuck", "publish"):
        assert f'id="task-{tid}"' in page

    out = tmp_path / "r.html"
    p = agentctl("report", rid, "-o", str(out), cwd=proj, state=state)
    assert p.returncode == 0 and p.stdout.strip() == str(out) and out.stat().st_size > 0


def test_report_of_newest_run_and_unknown_run(mixed: tuple[Path, Path, str]) -> None:
    proj, state, rid = mixed
    p = agentctl("report", cwd=proj, state=state)
    assert p.returncode == 0 and p.stdout.strip().endswith(f"{rid}/report.html")
    p = agentctl("report", "nope", cwd=proj, state=state, check=False)
    assert p.returncode == 3 and p.stdout == ""
    assert p.stderr.startswith("agentctl: error: no run 'nope'")


def test_report_survives_record_types_it_does_not_know(mixed: tuple[Path, Path, str], tmp_path: Path) -> None:
    proj, state, rid = mixed
    from agentctl import store

    copy = tmp_path / "state"
    shutil.copytree(state, copy)
    run = store.StateDir(copy).run(rid)
    scan = store.scan_wal(run.wal)
    journal = store.Journal(run, next_seq=scan.records[-1]["seq"] + 1)
    journal.append([{"type": "from_the_future", "task": "flaky", "payload": HOSTILE},
                    {"type": "run_note", "text": "no task field"}])
    journal.close()
    p = agentctl("report", rid, cwd=proj, state=copy)
    assert p.returncode == 0, p.stderr
    assert "<img" not in (run.path / "report.html").read_text()


# --------------------------------------------------------------------------- the browser


def _find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium_exe() -> str:
    """Debian's chromium: found, or installed with apt-get (root only), or the test skips."""
    exe = _find_browser()
    if exe:
        return exe
    if not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and this machine has no apt-get to install it")
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it needs root (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    started = time.monotonic()
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.skip(f"chromium could not be installed: `{' '.join(cmd)}` took over {INSTALL_TIMEOUT_S}s")
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"chromium could not be installed: `{' '.join(cmd)}` exited {p.returncode}: {last}")
    exe = _find_browser()
    if not exe:
        pytest.skip("apt-get installed chromium but no chromium binary is on PATH")
    sys.stderr.write(f"\n[chromium installed in {time.monotonic() - started:.1f}s]\n")
    return exe


class CDP:
    """A small Chrome DevTools protocol client: one page, over the browser's websocket."""

    def __init__(self, exe: str, profile: Path) -> None:
        websocket = pytest.importorskip("websocket", reason="websocket-client (a dev dependency) is not installed")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--disable-dev-shm-usage", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                self.close()
                raise AssertionError(f"chromium did not start: {err}")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=60,
                                              suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=True)

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: bool = False) -> Any:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 60) -> dict[str, Any]:
        self.ws.settimeout(timeout)
        while True:
            for e in self.events:
                if e["method"] == event:
                    self.events.remove(e)
                    return e
            reply = json.loads(self.ws.recv())
            if "method" in reply:
                self.events.append(reply)

    def eval(self, expr: str) -> Any:
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                           "awaitPromise": True}, session=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def load(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_for("Page.loadEventFired")

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, log errors, dialogs."""
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                out.append(f"console.{p['type']}: {p.get('args')}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails')}")
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                out.append(f"log: {p['entry'].get('text')}")
            elif m == "Page.javascriptDialogOpening":
                out.append(f"dialog: {p.get('message')}")
        return out

    def click(self, selector: str) -> None:
        box = self.eval(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();"
            " return [r.left + Math.min(60, r.width / 2), r.top + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1],
                                                   "button": "left", "clickCount": 1}, session=True)

    def screenshot(self, dest: Path, *, full: bool = False) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full:
            w, h = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": w, "height": min(h, 4000), "scale": 1})
        dest.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", params, session=True)["data"]))

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def browser(chromium_exe: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CDP]:
    cdp = CDP(chromium_exe, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield cdp
    finally:
        cdp.close()


def test_report_in_a_real_browser(mixed: tuple[Path, Path, str], browser: CDP, tmp_path: Path) -> None:
    proj, state, rid = mixed
    out = tmp_path / "report.html"
    assert agentctl("report", rid, "-o", str(out), cwd=proj, state=state).returncode == 0
    browser.load(out.as_uri())
    assert browser.problems() == []

    # a lane for every task, grouped by wave
    lanes = browser.eval("[...document.querySelectorAll('details.lane')].map(d => d.dataset.task)")
    assert sorted(lanes) == sorted(["fetch", "write-note", "flaky", "slow", "stuck", "publish"])
    waves = browser.eval("[...document.querySelectorAll('section.wave')].map(s =>"
                         " [...s.querySelectorAll('details.lane')].map(d => d.dataset.task))")
    assert waves == [["fetch"], ["write-note", "flaky", "slow", "stuck"], ["publish"]]

    # each attempt a bar, coloured by outcome; the timeout is hatched; the retry wait shows
    bars = browser.eval("""Object.fromEntries([...document.querySelectorAll('details.lane')].map(d =>
        [d.dataset.task, [...d.querySelectorAll('summary .bar')].map(b => b.className)]))""")
    assert bars["fetch"] == ["bar complete"]
    assert bars["flaky"] == ["bar failed", "bar failed"]
    assert bars["slow"] == ["bar failed hatched"]
    assert bars["stuck"] == ["bar blocked"]
    assert bars["publish"] == []
    assert "repeating-linear-gradient" in browser.eval(
        "getComputedStyle(document.querySelector('#task-slow .bar')).backgroundImage")
    assert browser.eval(
        "getComputedStyle(document.querySelector('#task-fetch .bar')).backgroundImage") == "none"
    assert browser.eval("document.querySelectorAll('#task-flaky .gap').length") == 1
    assert browser.eval("document.querySelectorAll('#task-publish .mark.skip').length") == 1
    colour = browser.eval("getComputedStyle(document.querySelector('#task-fetch .bar')).backgroundColor")
    assert colour != browser.eval("getComputedStyle(document.querySelector('#task-flaky .bar')).backgroundColor")

    # the hostile report stayed text: one script on the page, no image, no dialog
    assert browser.eval("document.scripts.length") == 1
    assert browser.eval("document.images.length") == 0

    # expanding a task (a real click) shows its report and what it received
    assert browser.eval("document.getElementById('task-write-note').open") is False
    assert browser.eval("document.querySelector('#task-write-note .report pre').checkVisibility()") is False
    browser.click("#task-write-note > summary")
    assert browser.eval("document.getElementById('task-write-note').open") is True
    report = browser.eval("document.querySelector('#task-write-note .report pre').innerText")
    assert "note written <script>alert(1)</script>" in report
    assert '"words": 3' in report
    assert browser.eval("document.querySelector('#task-write-note .report pre').checkVisibility()") is True
    panel = browser.eval("document.querySelector('#task-write-note .panel').innerText")
    assert "context packet" in panel.lower() and '"fetched"' in panel
    browser.click("#task-flaky > summary")
    assert "disk on fire" in browser.eval("document.querySelector('#task-flaky .panel').innerText")

    # totals by skill and by model
    tables = browser.eval("[...document.querySelectorAll('.totals table')].map(t => t.innerText)")
    assert "writer" in tables[0] and "(no skill: command)" in tables[0]
    assert "(no model: command)" in tables[1]

    # the filter hides lanes without errors
    browser.eval("(() => { const q = document.getElementById('q'); q.value = 'fla';"
                 " q.dispatchEvent(new Event('input')); })()")
    assert browser.eval("[...document.querySelectorAll('details.lane')].filter(d => !d.hidden).length") == 1
    browser.eval("(() => { const q = document.getElementById('q'); q.value = '';"
                 " q.dispatchEvent(new Event('input')); })()")

    browser.eval("window.scrollTo(0, 0)")  # the time axis is sticky: take it at the top
    browser.screenshot(tmp_path / "report.png", full=True)
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert browser.problems() == []


def test_report_of_500_tasks_stays_readable(browser: CDP, tmp_path: Path) -> None:
    proj, state, rid = make_big_run(tmp_path)
    out = tmp_path / "big.html"
    assert agentctl("report", rid, "-o", str(out), cwd=proj, state=state).returncode == 0
    size = out.stat().st_size
    assert size < 3 * 1024 * 1024, f"{size} bytes for 500 tasks"
    browser.load(out.as_uri())
    assert browser.problems() == []
    assert browser.eval("document.querySelectorAll('details.lane').length") == 500
    assert browser.eval("document.querySelectorAll('section.wave').length") == 5
    # every lane is one row: the page is not pushed around by its content
    heights = browser.eval("[...new Set([...document.querySelectorAll('details.lane > summary')]"
                           ".map(s => Math.round(s.getBoundingClientRect().height)))]")
    assert heights == [22]
    browser.click("#task-w4-t099 > summary")
    assert "w4-t099: no-op" in browser.eval("document.querySelector('#task-w4-t099 .report pre').innerText")
    browser.screenshot(tmp_path / "big.png")
    assert browser.problems() == []


def test_a_crash_shows_as_a_driver_gap_and_a_cut_off_attempt(tmp_path: Path, browser: CDP) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "p.yaml").write_text("""\
name: crashy
tasks:
  first:
    runner: noop
  long:
    needs: first
    effects: read-only
    command: [sh, -c, 'if [ -f "$AGENTCTL_WORKSPACE/again" ]; then echo ok; else touch "$AGENTCTL_WORKSPACE/again"; echo $$ > "$AGENTCTL_WORKSPACE/agent.pid"; exec sleep 60; fi']
""")
    state = tmp_path / "state"
    env = {**os.environ, "AGENTCTL_STATE_DIR": str(state), "AGENTCTL_PLAIN": "1"}
    driver = subprocess.Popen([*AGENTCTL, "run", "p.yaml", "--run-id", "c-1"], cwd=proj, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    pid_file = proj / "agent.pid"  # the agent's own (sh's $$, kept by exec)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline and driver.poll() is None, "the attempt never started"
            time.sleep(0.02)
        driver.kill()  # the driver dies mid-attempt; its agent is left running
        driver.wait()
        p = agentctl("resume", "c-1", cwd=proj, state=state)
        assert p.returncode == 0, p.stderr
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        agent = int(pid_file.read_text()) if pid_file.exists() else 0
        if agent and Path(f"/proc/{agent}").exists():  # resume should have stopped it
            os.killpg(agent, signal.SIGKILL)
    out = tmp_path / "c.html"
    assert agentctl("report", "c-1", "-o", str(out), cwd=proj, state=state).returncode == 0
    browser.load(out.as_uri())
    assert browser.problems() == []
    bars = browser.eval("[...document.querySelectorAll('#task-long .bar')].map(b => b.className)")
    assert bars == ["bar abandoned hatched", "bar complete"]
    assert browser.eval("document.querySelectorAll('.overlay .band.down').length") == 1
    title = browser.eval("document.querySelector('.axis .band.down').title")
    assert title.startswith("the driver stopped (crash or kill): nothing logged for ")


def test_the_time_axis_folds_long_idle_stretches() -> None:
    from agentctl.report_html import Axis

    # a run paused for a day between two bursts of work
    axis = Axis.build(0.0, 86_410.0, [(0.0, 5.0), (86_400.0, 86_410.0)])
    assert axis.folds == [(5.0, 86_400.0)]
    assert axis.x(5.0) == pytest.approx(5 / 15 * 97)
    assert axis.x(86_400.0) == pytest.approx(5 / 15 * 97 + 3)
    assert axis.x(86_410.0) == pytest.approx(100.0)
    labels = [label for _x, label in axis.ticks()]
    assert labels[0] == "+0" and len(labels) < 20
    # a short run has no fold
    assert Axis.build(0.0, 10.0, [(0.0, 2.0), (8.0, 10.0)]).folds == []


def test_fan_out_instances_sit_under_their_group(tmp_path: Path, browser: CDP) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "p.yaml").write_text("""\
name: fan
tasks:
  plan:
    command: [sh, -c, 'cp "$AGENTCTL_WORKSPACE/plan.json" "$AGENTCTL_OUTPUT"']
  work:
    needs: plan
    foreach: ${{ tasks.plan.output }}
    runner: noop
  publish:
    needs: work
    runner: noop
""")
    (proj / "plan.json").write_text('{"status": "COMPLETE", "summary": "p", "output": [1, 2, 3]}')
    state = tmp_path / "state"
    assert agentctl("run", "p.yaml", "--run-id", "fan-1", cwd=proj, state=state).returncode == 0
    out = tmp_path / "fan.html"
    assert agentctl("report", "fan-1", "-o", str(out), cwd=proj, state=state).returncode == 0
    browser.load(out.as_uri())
    assert browser.problems() == []
    lanes = browser.eval("[...document.querySelectorAll('details.lane')].map(d => [d.dataset.task, d.className])")
    assert lanes == [["plan", "lane"], ["work", "lane"], ["work.0", "lane child1"],
                     ["work.1", "lane child1"], ["work.2", "lane child1"], ["publish", "lane"]]
    assert browser.eval("document.getElementById('task-work').querySelectorAll('.groupbar').length") == 1
    browser.click("[id='task-work.1'] > summary")
    assert "no-op" in browser.eval("document.getElementById('task-work.1').querySelector('.report pre').innerText")
