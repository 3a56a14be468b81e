"""The spawn as a user sees it: headless Chromium through the real proxy to a real JupyterHub,
berthspawner, berthd and the single-user image. One spawn, to keep CI time small.

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
from conftest import IMAGE, REPO, Berthd, Hub, wait_for
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
return [m.textContent.trim(), b.getAttribute('aria-valuenow') || '', b.style.width || ''];
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
            browser.get(f"{hub.url}/hub/login")
            element(browser, "#username_input").send_keys(user)
            element(browser, "#password_input").send_keys("any")
            shots.take("login")
            element(browser, "#login_submit").click()
            start = element(browser, "#start")
            shots.take("home-stopped")

            clicked = time.monotonic()
            start.click()
            # The spawn page: every distinct (message, bar) seen, until the browser leaves it.
            seen, shot_messages = [], set()
            while time.monotonic() - clicked < 90:
                if browser.find_elements(By.CSS_SELECTOR, ".jp-Launcher"):
                    break
                try:
                    state = browser.execute_script(PROGRESS_JS)
                except Exception:  # noqa: BLE001 - the page is navigating away
                    state = None
                if state and (not seen or seen[-1][1:] != tuple(state)):
                    seen.append((round(time.monotonic() - clicked, 2), *state))
                    if state[0] and state[0] not in shot_messages:
                        shot_messages.add(state[0])
                        shots.take(f"spawn-{len(shot_messages)}")
                time.sleep(0.05)
            element(browser, ".jp-Launcher", timeout=60)
            lab_s = time.monotonic() - clicked
            shots.take("lab-launcher")
            for t, message, aria, width in seen:
                print(f"  +{t:5.2f}s  bar {aria or '-':>3} ({width or '-'})  {message}")

            messages = [m for _, m, _, _ in seen if m]
            assert len(set(messages)) >= 2, f"fewer than two progress messages on the spawn page: {seen}"
            bars = [float(a) for _, _, a, _ in seen if a]
            assert len(set(bars)) >= 2 and bars == sorted(bars), f"the bar did not move forward: {seen}"
            assert 0 < max(bars) < 100 or len(set(bars)) >= 3, f"the bar only jumped to the end: {seen}"
            for m in messages:
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
