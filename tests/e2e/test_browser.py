"""The spawn as a user sees it: headless Chromium through the real proxy to a real JupyterHub,
berthspawner, berthd and the single-user image. One spawn to JupyterLab, to keep CI time small,
and one page of spawns as the user reads them: a pull (the bar moves), a failed pull and a server
that crashes while booting (one sentence each), with the Event log at one line per phase or few
seconds.

Screenshots of each step land in target/e2e-screenshots/ (kept after a failed run), with
timings.txt: click on "Start" → JupyterLab's launcher rendered, beside the hub's own spawn time.
"""

import os
import re
import secrets
import shutil
import subprocess
import time

import pytest
from conftest import IMAGE, REPO, TINY, Berthd, Hub, docker, wait_for
from registry import Registry, SlowProxy, push_image
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

SHOTS = os.path.join(REPO, "target", "e2e-screenshots")

# Read in one call so a redirect between two reads cannot mix two pages.
PROGRESS_JS = """
const m = document.querySelector('#progress-message');
const b = document.querySelector('#progress-bar');
if (!m || !b) return null;
const log = Array.from(document.querySelectorAll('#progress-log .progress-log-event'), e => e.textContent.trim());
return [m.textContent.trim(), b.getAttribute('aria-valuenow') || '', b.style.width || '', log];
"""


@pytest.fixture
def browser():
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


class Shots:
    def __init__(self, driver):
        shutil.rmtree(SHOTS, ignore_errors=True)
        os.makedirs(SHOTS)
        print(f"screenshots: {SHOTS}")
        self.driver, self.n = driver, 0

    def take(self, name):
        self.n += 1
        path = os.path.join(SHOTS, f"{self.n:02d}-{name}.png")
        self.driver.save_screenshot(path)
        return path


def element(driver, css, timeout=30):
    return wait_for(f"{css} on {driver.current_url}", lambda: _first(driver, css), timeout, 0.1)


def _first(driver, css):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0] if found and found[0].is_displayed() else None


# The first cell's editor text, its prompt and output, the kernel's status and any open dialog.
NOTEBOOK_JS = """
const text = (css) => { const e = document.querySelector(css); return e ? e.textContent.trim() : null; };
const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
return {
  kernel: ind ? ind.getAttribute('data-status') : null,
  source: text('.jp-Notebook .jp-Cell .cm-content'),
  prompt: text('.jp-Notebook .jp-Cell .jp-InputPrompt'),
  output: text('.jp-Notebook .jp-Cell .jp-OutputArea-output'),
  dialog: text('.jp-Dialog'),
  kernelName: text('.jp-NotebookPanel-toolbar .jp-KernelName, .jp-NotebookPanel-toolbar .jp-Toolbar-kernelName'),
  status: text('.jp-StatusBar-Widget'),
};
"""


def notebook_state(driver):
    return driver.execute_script(NOTEBOOK_JS) or {}


def type_cell(driver, code, tries=3):
    """Types `code` into the first cell's editor, again if the text did not land."""
    for _ in range(tries):
        cell = element(driver, ".jp-Notebook .jp-Cell .cm-content", timeout=60)
        cell.click()
        active = driver.switch_to.active_element
        active.send_keys(Keys.CONTROL, "a")
        active.send_keys(Keys.DELETE)
        active.send_keys(code)
        try:
            wait_for("the cell to hold the code", lambda: notebook_state(driver)["source"] == code, 5, 0.1)
            return
        except AssertionError:
            continue
    raise AssertionError(f"could not type into the cell: {notebook_state(driver)}")


def run_cell(driver, tries=12):
    """Runs the first cell (Ctrl+Enter in its editor: run, stay on the cell), again while the cell
    was not queued (its prompt still "[ ]:"): until the notebook's session has its kernel,
    JupyterLab drops a run without a word, whatever the status shows."""
    for _ in range(tries):
        element(driver, ".jp-Notebook .jp-Cell .cm-content").click()
        driver.switch_to.active_element.send_keys(Keys.CONTROL, Keys.ENTER)
        try:
            wait_for("the cell to run", lambda: notebook_state(driver)["prompt"] != "[ ]:", 10, 0.1)
            return
        except AssertionError:
            continue
    raise AssertionError(f"the cell did not run: {notebook_state(driver)}")


def hub_spawn_seconds(hub, user):
    """The hub's own measure of the spawn, from its log ("User x took 2.345 seconds to start")."""
    with open(os.path.join(hub.dir, "hub.log")) as f:
        found = re.findall(rf"User {re.escape(user)} took ([0-9.]+) seconds to start", f.read())
    return float(found[-1]) if found else None


def start_to_lab(driver, hub_url, user, shots=None):
    """Logs `user` in, clicks Start and samples the spawn page until JupyterLab's launcher
    shows: returns every distinct (seconds, message, bar, width) seen, the longest Event log
    and the seconds from the click to the launcher. The page may open after the first phases:
    berthd replays them, in a burst, so the message line shows only the last of them but the
    Event log keeps every line. `shots` takes a screenshot of each new message."""
    driver.get(f"{hub_url}/hub/login")
    element(driver, "#username_input").send_keys(user)
    element(driver, "#password_input").send_keys("any")
    if shots:
        shots.take("login")
    element(driver, "#login_submit").click()
    start = element(driver, "#start")
    if shots:
        shots.take("home-stopped")
    clicked = time.monotonic()
    start.click()
    seen, shot_messages, event_log = [], set(), []
    while time.monotonic() - clicked < 90:
        if driver.find_elements(By.CSS_SELECTOR, ".jp-Launcher"):
            break
        try:
            state = driver.execute_script(PROGRESS_JS)
        except Exception:  # noqa: BLE001 - the page is navigating away
            state = None
        if state:
            *state, log = state
            event_log = max(event_log, log, key=len)
        if state and (not seen or seen[-1][1:] != tuple(state)):
            seen.append((round(time.monotonic() - clicked, 2), *state))
            if shots and state[0] and state[0] not in shot_messages:
                shot_messages.add(state[0])
                shots.take(f"spawn-{len(shot_messages)}")
        time.sleep(0.05)
    element(driver, ".jp-Launcher", timeout=60)
    return seen, event_log, time.monotonic() - clicked


def test_browser_login_spawn_progress_lab_cell_and_stop(workdir, browser):
    base = os.path.join(workdir, f"browser-{secrets.token_hex(2)}")
    user = f"browser-{secrets.token_hex(3)}"
    # One image: no image picker, so Start goes straight to the spawn page (the shared hub
    # config allows two images, which makes a "Server Options" form; test_profiles tests it).
    extra = (
        'c.Spawner.default_url = "/lab"\nc.JupyterHub.redirect_to_server = False\n'
        f'c.BerthSpawner.allowed_images = ["{IMAGE}"]'
    )
    with Berthd("n", base) as node, Hub(base, [node], extra=extra) as hub:
        shots = Shots(browser)
        try:
            seen, event_log, lab_s = start_to_lab(browser, hub.url, user, shots)
            shots.take("lab-launcher")
            for t, message, aria, width in seen:
                print(f"  +{t:5.2f}s  bar {aria or '-':>3} ({width or '-'})  {message}")

            messages = [m for _, m, _, _ in seen if m]
            print("  Event log:\n" + "\n".join(f"    {line}" for line in event_log))
            assert len(set(messages) | set(event_log)) >= 2, (
                f"fewer than two progress messages on the spawn page: {seen}; Event log {event_log}"
            )
            bars = [float(a) for _, _, a, _ in seen if a]
            assert len(set(bars)) >= 2 and bars == sorted(bars), f"the bar did not move forward: {seen}"
            assert 0 < max(bars) < 100 or len(set(bars)) >= 3, f"the bar only jumped to the end: {seen}"
            for m in messages + event_log:
                assert "127.0.0.1" not in m and ":" + str(hub.port) not in m, f"an internal address on the page: {m}"

            # A notebook, one cell: typed only once the kernel is idle and the editor holds the
            # text (on a loaded machine the editor may render, or the kernel start, late).
            element(browser, '.jp-LauncherCard[data-category="Notebook"]').click()
            wait_for(
                "the notebook's kernel to be idle",
                lambda: notebook_state(browser)["kernel"] == "idle",
                180,  # the kernel's first start, on a loaded CI machine
                0.2,
            )
            type_cell(browser, "print(6*7)")
            try:
                run_cell(browser)
                wait_for("the cell's output 42", lambda: notebook_state(browser)["output"] == "42", 120, 0.2)
            except AssertionError as e:
                raise AssertionError(f"{e}; the notebook then: {notebook_state(browser)}") from None
            shots.take("cell-42")

            # Stop from the home page.
            browser.get(f"{hub.url}/hub/home")
            element(browser, "#stop").click()
            element(browser, "#start", timeout=60)
            wait_for("the hub to see the server stopped", lambda: not hub.server(user), 30)
            assert not node.containers(user), "the stopped server left a container"
            shots.take("home-after-stop")

            hub_s = hub_spawn_seconds(hub, user)
            assert hub_s is not None, "the hub logged no spawn time"
            timings = (
                f"click -> JupyterLab launcher rendered: {lab_s:.2f} s\n"
                f"hub's own spawn time (hub log):       {hub_s:.2f} s\n"
                f"outside the spawner (redirects, OAuth, Lab load): {lab_s - hub_s:.2f} s\n"
                "spawn page (seconds after the click, bar, message):\n"
                + "".join(f"  +{t:5.2f}s  {a or '-':>3}  {m}\n" for t, m, a, _ in seen)
            )
            with open(os.path.join(SHOTS, "timings.txt"), "w") as f:
                f.write(timings)
            print(timings)
        finally:
            shots.take("last")
            with open(os.path.join(SHOTS, "browser-console.log"), "w") as f:
                for entry in browser.get_log("browser"):
                    f.write(f"{entry['timestamp']} {entry['level']} {entry['message']}\n")
            # What the page does not say is in these, next to the screenshots.
            for log in (os.path.join(hub.dir, "hub.log"), node.log.name):
                shutil.copy(log, SHOTS)
            for cid in node.containers(user):
                with open(os.path.join(SHOTS, f"container-{cid[:12]}.log"), "w") as f:
                    subprocess.run(["docker", "logs", cid], stdout=f, stderr=subprocess.STDOUT, check=False)


TINY_CMD = ["sh", "-c", "exec httpd -f -p 8888 -h /www"]
CRASH_CMD = ["sh", "-c", "echo 'first line of output'; echo 'second line of output'; sleep 6; exit 3"]
# The Event log's lines, as the user sees them once they open it (innerText: a <br> is a line
# break; the log is a collapsed <details> until opened).
# The progress page in one read: its message, the bar, whether the bar turned red (the hub's
# failed event) and the Event log. One script, so no event lands between its parts (the page's
# event handler and this script run on the same thread).
WATCH_JS = """
document.querySelectorAll('details').forEach(d => { d.open = true; });
const m = document.querySelector('#progress-message');
const b = document.querySelector('#progress-bar');
const log = Array.from(document.querySelectorAll('#progress-log .progress-log-event')).map(e => e.innerText);
if (!m || !b) return [null, log];
return [[m.textContent.trim(), b.getAttribute('aria-valuenow') || '', b.classList.contains('bg-danger')], log];
"""
# A spawn that failed before the progress page loaded: the spawn form again with the hub's
# "Error: <message>" (a spawn from a link), or the hub's "Spawn failed" page with the sentence
# in the paragraph after "The latest attempt ... has failed."
FAILED_PAGE_JS = """
const err = document.querySelector('.spawn-error-msg');
if (err) return err.textContent.trim().replace(/^Error: /, '');
const h = document.querySelector('h1');
if (!h || h.textContent.trim() !== 'Spawn failed') return null;
const ps = Array.from(document.querySelectorAll('.container p')).map(p => p.textContent.trim()).filter(t => t);
return ps.length > 1 ? ps[1] : '';
"""
# What a user must never read on the page: exception classes, Docker's or the network's words.
INTERNALS = (
    "SpawnException",
    "reason=",
    "Error:",
    "127.0.0.1",
    "manifest",
    "dial tcp",
    "lookup",
    "exit code",
    "docker",
    "Docker",
    "rpc",
    "grpc",
)


def watch_spawn(driver, url, timeout=90):
    """Opens `url` (a /hub/spawn/... link) and samples the spawn page until it fails or leaves:
    returns ([(seconds, message, bar)], [(seconds, Event log line)], how it ended)."""
    t0 = time.monotonic()
    driver.get(url)
    samples, lines, ended = [], [], "timeout"
    while time.monotonic() - t0 < timeout:
        if "/spawn-pending/" not in driver.current_url and "/hub/spawn" not in driver.current_url:
            ended = "left"
            break
        try:
            state, log = driver.execute_script(WATCH_JS) or (None, [])
        except Exception:  # noqa: BLE001 - the page is navigating away
            state, log = None, []
        now = round(time.monotonic() - t0, 2)
        for line in (log or [])[len(lines) :]:
            lines.append((now, line))
        red = bool(state and state[2])
        if state and not red and (not samples or samples[-1][1:] != (state[0], state[1])):
            samples.append((now, state[0], state[1]))
        if red:
            # The hub's failed event: the bar turns red, the message is the exception's
            # jupyterhub_html_message (else "Spawn failed: <message>").
            text = state[0] if state[0].startswith("Spawn failed: ") else f"Spawn failed: {state[0]}"
            samples.append((now, text, state[1]))
            ended = "failed"
            break
        try:
            page = driver.execute_script(FAILED_PAGE_JS)
        except Exception:  # noqa: BLE001 - the page is navigating away
            page = None
        if page is not None:
            samples.append((now, f"Spawn failed: {page}", ""))
            ended = "failed"
            break
        time.sleep(0.05)
    if ended == "timeout":
        body = driver.find_elements(By.TAG_NAME, "body")
        print(f"  still on {driver.current_url}: {body[0].text if body else ''!r}")
    for t, m, a in samples:
        print(f"  +{t:5.2f}s  bar {a or '-':>3}  {m}")
    for t, line in lines:
        print(f"  +{t:5.2f}s  log  {line!r}")
    return samples, lines, ended


def assert_log_is_terse(lines):
    """At most one line per phase or few seconds: two lines of the same kind (their words before
    the first colon) come at least 4 s apart, and no line repeats the one before it."""
    last = {}
    for (t, line), (_, before) in zip(lines[1:], lines[:-1], strict=True):
        assert line != before, f"a line twice: {line!r}"
    for t, line in lines:
        kind = line.split(":")[0].rstrip(".")
        if kind in last:
            assert t - last[kind] >= 4, f"{line!r} {t - last[kind]:.1f} s after the last {kind!r} line: {lines}"
        last[kind] = t


def one_sentence_failure(samples):
    text = samples[-1][1]
    assert text.startswith("Spawn failed: "), text
    sentence = text[len("Spawn failed: ") :]
    assert sentence[:1].isupper() and sentence.endswith(".") and ". " not in sentence, sentence
    assert "try again" in sentence or "administrator" in sentence, f"says what to do: {sentence}"
    for word in INTERNALS:
        assert word not in sentence, f"{word!r} on the page: {text}"
    return sentence


def test_browser_a_pull_a_failed_pull_and_a_crash_as_the_user_reads_them(workdir, browser):
    base = os.path.join(workdir, f"browser-fail-{secrets.token_hex(2)}")
    user = f"reader-{secrets.token_hex(3)}"
    with Registry() as reg:
        # On top of the tiny image, which is on the node: its layers "Already exist".
        _, repo, sizes = push_image(reg, TINY, layers=2, mib=4)
        proxy = SlowProxy(reg.port, 2_000_000)
        image = f"127.0.0.1:{proxy.port}/{repo}:1"
        missing = f"127.0.0.1:{proxy.port}/{repo}:no-such-tag"
        profiles = [
            {
                "display_name": "pull",
                "slug": "pull",
                "berth_override": {"image": image, "cmd": TINY_CMD, "pull_policy": "always"},
            },
            {
                "display_name": "bad pull",
                "slug": "badpull",
                "berth_override": {"image": missing, "cmd": TINY_CMD, "pull_policy": "always"},
            },
            {"display_name": "crash", "slug": "crash", "berth_override": {"image": TINY, "cmd": CRASH_CMD}},
        ]
        extra = (
            f"c.BerthSpawner.profile_list = {profiles!r}\n"
            f'c.BerthSpawner.allowed_images = ["{IMAGE}", "{TINY}", "{image}", "{missing}"]\n'
            # Always the progress page, however fast the spawn fails.
            "c.JupyterHub.slow_spawn_timeout = 0\nc.JupyterHub.redirect_to_server = False\n"
        )
        try:
            with Berthd("reader", base) as node, Hub(base, [node], extra=extra) as hub:
                try:
                    browser.get(f"{hub.url}/hub/login")
                    element(browser, "#username_input").send_keys(user)
                    element(browser, "#password_input").send_keys("any")
                    element(browser, "#login_submit").click()
                    element(browser, "#start")
                    spawn = f"{hub.url}/hub/spawn/{user}?profile="

                    # A pull of an image sharing its base with one on the node: the bar moves with it.
                    samples, lines, ended = watch_spawn(browser, spawn + "pull")
                    assert ended == "left", f"the pulled server did not start: {samples}"
                    pulling = [int(a) for _, m, a in samples if a and m.startswith("Pulling")]
                    assert len(set(pulling)) >= 3, f"the bar did not move during the pull: {samples}"
                    assert max(pulling) - min(pulling) >= 20, f"the pull filled little of the bar: {samples}"
                    bars = [int(a) for _, _, a in samples if a]
                    assert bars == sorted(bars), f"the bar went back: {samples}"
                    worded = sum(1 for _, line in lines if line.startswith("Pulling"))
                    assert worded < len(set(pulling)), f"a log line per bar step: {lines}"
                    assert_log_is_terse(lines)
                    wait_for("the server to run", lambda: (hub.server(user) or {}).get("ready"), 30)
                    hub.api("DELETE", f"/users/{user}/server")
                    wait_for("the server to stop", lambda: not hub.server(user), 60)

                    # A pull that fails: one sentence, the detail in the Event log only.
                    samples, lines, ended = watch_spawn(browser, spawn + "badpull")
                    assert ended == "failed", samples
                    one_sentence_failure(samples)
                    if lines:  # the progress page saw it fail (not only the hub's failure page)
                        assert any("no-such-tag" in line for _, line in lines), f"the detail, for admins: {lines}"
                    assert_log_is_terse(lines)

                    # A server that crashes while booting: one sentence; its last output in the
                    # Event log, line by line.
                    samples, lines, ended = watch_spawn(browser, spawn + "crash")
                    assert ended == "failed", samples
                    one_sentence_failure(samples)
                    output = [line for _, line in lines if "first line of output" in line]
                    assert output and "first line of output\nsecond line of output" in output[0], lines
                    assert_log_is_terse(lines)
                    assert not node.containers(user), "a failed spawn left a container"
                except BaseException:
                    os.makedirs(SHOTS, exist_ok=True)
                    for log in (os.path.join(hub.dir, "hub.log"), node.log.name):
                        shutil.copy(log, os.path.join(SHOTS, "reader-" + os.path.basename(log)))
                    raise
        finally:
            proxy.close()
            docker("rmi", "-f", image)
