"""``shmpiped console-screenshot``: the web console in headless Chromium, written to a PNG.

Owns driving a real browser at the console: starting Debian's chromium through
its chromedriver (selenium, offline: no driver or browser is ever downloaded),
waiting until the page shows what a person would look at (every worker in the
table, a preview drawn), reading the browser's console log, and the command
itself, which starts the demo (or PIPELINE) as a daemon on a free loopback
port, or uses a running daemon's ``--url``.  The console tests use the same
functions.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import click

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1")
EXIT_UNAVAILABLE = 69


class BrowserUnavailable(RuntimeError):
    """No headless browser can be driven here (what to install is in the message)."""


def browser_problem() -> str | None:
    """Why the console cannot be driven here (None when it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium, or the package's [test] extra)"
    if not os.access(CHROMEDRIVER, os.X_OK):
        return f"{CHROMEDRIVER} is missing (apt-get install chromium chromium-driver; .ci/install-browser.sh)"
    if chromium_binary() is None:
        return "chromium is missing (apt-get install chromium; .ci/install-browser.sh)"
    return None


def chromium_binary() -> str | None:
    return next((path for path in CHROMIUM_CANDIDATES if os.access(path, os.X_OK)), None)


@contextmanager
def headless_chromium(width: int = 1400, height: int = 900):
    """A selenium driver of headless Chromium with a fresh profile (removed afterwards), its viewport
    exactly ``width`` x ``height`` CSS pixels, and the page's console log kept (``driver.get_log``)."""
    problem = browser_problem()
    if problem:
        raise BrowserUnavailable(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="shmpiped-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
    driver = None
    try:
        driver = webdriver.Chrome(options=options, service=service)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """The page's console messages of level SEVERE (errors, failed loads) since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def wait_until_shown(driver, timeout: float = 30.0) -> dict:
    """Wait until the worker table has every worker of /status with its health and the preview shows
    an image or a value; returns what the page shows ({"workers": {name: health}, "preview": ...})."""
    script = """
        const rows = [...document.querySelectorAll('#workers tbody tr[data-worker]')];
        const workers = Object.fromEntries(rows.map(r => [r.getAttribute('data-worker'),
            r.querySelector('.badge').textContent]));
        const img = document.getElementById('preview-image');
        const value = document.getElementById('preview-value');
        const image = !img.hidden && img.complete && img.naturalWidth > 0;
        return {workers, image, value: value.hidden ? null : value.textContent,
                stream: img.getAttribute('data-stream'), count: img.getAttribute('data-count'),
                graphNodes: document.querySelectorAll('#graph g.node').length};
    """
    deadline = time.monotonic() + timeout
    shown = {}
    while time.monotonic() < deadline:
        shown = driver.execute_script(script)
        if shown["workers"] and "?" not in shown["workers"].values() and (shown["image"] or shown["value"]):
            return shown
        time.sleep(0.2)
    raise TimeoutError(f"the console did not show its workers and a preview within {timeout} s: {shown}")


# -- a daemon for the command ----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the daemon exited with status {process.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}/readyz did not answer 200 within {timeout} s")


@contextmanager
def daemon_for(pipeline: str | None, namespace: str | None, log_path: str):
    """``shmpiped run PIPELINE`` (default: the demo) on a free loopback port; yields its URL, stops it after."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="shmpiped-screenshot-")
    command = [sys.executable, "-m", "shmpiped.cli", "run", *([pipeline] if pipeline else []),
               "--http-address", f"127.0.0.1:{port}", "--control-socket", os.path.join(workdir, "control.sock")]
    if namespace:
        command += ["--namespace", namespace]
    env = {k: v for k, v in os.environ.items() if k not in ("SHMPIPED_TOKEN_FILE", "SHMPIPED_HTTP_ADDRESS")}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, process, timeout=60)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def capture(url: str, output: str, width: int, height: int, stream: str | None, settle_s: float,
            timeout: float = 60.0) -> dict:
    """Open the console at ``url``, wait until it shows, optionally pick ``stream`` to preview, settle, and
    write the viewport to ``output`` (PNG); returns what was shown and the console errors."""
    with headless_chromium(width, height) as driver:
        driver.get(url.rstrip("/") + "/")
        shown = wait_until_shown(driver, timeout)
        if stream:
            found = driver.execute_script(
                "const s = document.getElementById('preview-stream');"
                "if (![...s.options].some(o => o.value === arguments[0])) return false;"
                "s.value = arguments[0]; s.dispatchEvent(new Event('change')); return true;", stream)
            if not found:
                raise click.UsageError(f"the pipeline has no stream {stream!r} to preview")
            deadline = time.monotonic() + timeout
            while driver.execute_script("return document.getElementById('preview-image')"
                                        ".getAttribute('data-stream')") != stream:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the preview of {stream!r} did not show within {timeout} s")
                time.sleep(0.1)
        time.sleep(settle_s)
        shown = wait_until_shown(driver, timeout)
        driver.save_screenshot(output)
        shown["errors"] = console_errors(driver)
    return shown


@click.command("console-screenshot")
@click.argument("pipeline", required=False, type=click.Path(dir_okay=False, exists=True))
@click.option("--url", default=None, help="A running daemon's HTTP address (http://HOST:PORT) instead of "
                                          "starting PIPELINE.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, writable=True),
              help="The PNG file to write.")
@click.option("--width", type=click.IntRange(320, 4096), default=1400, show_default=True)
@click.option("--height", type=click.IntRange(240, 4096), default=900, show_default=True)
@click.option("--stream", default=None, help="The stream to preview [default: the console's choice].")
@click.option("--namespace", default=None, help="Run PIPELINE in this namespace (not with --url).")
@click.option("--settle", type=float, default=3.0, show_default=True,
              help="Seconds to let rates and latencies fill in before the picture is taken.")
def console_screenshot(pipeline, url, output, width, height, stream, namespace, settle) -> None:
    """Write a screenshot of the web console to OUTPUT: of a running daemon (--url), or of PIPELINE
    (default: the demo) started as a daemon on a free loopback port for the purpose.

    Needs headless Chromium (apt-get install chromium chromium-driver) and selenium. Exit status: 0
    written, 1 the page did not show, 69 no browser here.
    """
    if url and (pipeline or namespace):
        raise click.UsageError("give either --url or PIPELINE (with --namespace), not both")
    problem = browser_problem()
    if problem:
        click.echo(f"shmpiped console-screenshot: {problem}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    log_path = os.path.join(tempfile.gettempdir(), f"shmpiped-console-screenshot-{os.getpid()}.log")
    try:
        if url:
            wait_http(url.rstrip("/"), None, timeout=30)
            shown = capture(url, output, width, height, stream, settle)
        else:
            with daemon_for(pipeline, namespace, log_path) as started:
                shown = capture(started, output, width, height, stream, settle)
    except (RuntimeError, TimeoutError, OSError) as exc:
        detail = f" (daemon log: {log_path})" if not url and os.path.exists(log_path) else ""
        click.echo(f"shmpiped console-screenshot: {exc}{detail}", err=True)
        sys.exit(1)
    if not url and os.path.exists(log_path):
        os.unlink(log_path)
    for message in shown["errors"]:
        click.echo(f"console error: {message}", err=True)
    preview = shown.get("stream") or "value"
    click.echo(f"wrote {output} ({width}x{height}): {len(shown['workers'])} workers, preview of {preview}")
