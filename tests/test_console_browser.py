"""The web console in a real headless Chromium (Debian's chromium + chromium-driver, selenium) against a
real daemon running the demo: the page loads with no console error, shows every worker with its health,
its preview image updates, a pause sent from the page (token typed in) pauses the pipeline, and a read
token protects the page's data.  Under CI=true a missing browser fails these tests."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from importlib import resources

import pytest

from shmpiped.cli_console import browser_problem, console_errors, headless_chromium, wait_until_shown

from .conftest import unavailable, wait_for
from .png_support import decode_png

ADMIN_TOKEN = "console-test-admin-7f3a"
READ_TOKEN = "console-test-reader-91c2"

BLOB_BYTES = """
const done = arguments[arguments.length - 1];
const img = document.getElementById('preview-image');
const stream = img.getAttribute('data-stream'), src = img.src;  // together: the page may switch meanwhile
fetch(src).then(r => r.arrayBuffer()).then(buffer => {
  let text = ''; for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
  done({stream: stream, png: btoa(text)});
}).catch(error => done({error: String(error)}));
"""


@pytest.fixture
def browser():
    problem = browser_problem()
    if problem:
        unavailable(problem, "web console browser tests")
    with headless_chromium(1400, 900) as driver:
        yield driver


def start_demo(daemons, namespace, tmp_path, token_lines):
    demo = resources.files("shmpiped.demo").joinpath("ao_loop.yaml").read_text()
    pipeline = tmp_path / "demo.yaml"
    pipeline.write_text(demo.replace("namespace: demo", f"namespace: {namespace}"))
    token_file = tmp_path / "tokens"
    token_file.write_text("\n".join(token_lines) + "\n")
    token_file.chmod(0o600)
    daemon = daemons(pipeline, namespace, tmp_path, "--token-file", str(token_file))
    daemon.wait_ready(timeout=60)
    return daemon


@pytest.fixture
def demo(daemons, namespace, tmp_path):
    daemon = start_demo(daemons, namespace, tmp_path, [ADMIN_TOKEN])
    yield daemon
    assert daemon.stop() == 0, daemon.output


def open_console(driver, daemon):
    driver.get(f"http://127.0.0.1:{daemon.port}/")
    return wait_until_shown(driver, timeout=30)


def choose_preview(driver, stream: str, rate_hz: str) -> None:
    driver.execute_script(
        "const s = document.getElementById('preview-stream'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('change'));"
        "const r = document.getElementById('preview-rate'); r.value = arguments[1];"
        "r.dispatchEvent(new Event('change'));", stream, rate_hz)


def preview_png(driver, stream: str) -> bytes:
    def shown():
        answer = driver.execute_async_script(BLOB_BYTES)
        return answer if answer.get("stream") == stream and "png" in answer else None

    return base64.b64decode(wait_for(shown, timeout=10, interval=0.2)["png"])


def test_page_shows_every_worker_and_the_graph_without_console_errors(browser, demo):
    shown = open_console(browser, demo)
    status = demo.status()
    assert set(shown["workers"]) == set(status["workers"]) == {"centroid", "flatten", "reconstruct",
                                                                 "integrate", "clip"}

    def all_active():
        workers = browser.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('#workers tbody tr[data-worker]')]"
            ".map(r => [r.getAttribute('data-worker'), r.querySelector('.badge').textContent]))")
        return workers if set(workers.values()) == {"active"} else None

    assert wait_for(all_active, timeout=20, interval=0.2)
    graph = status["graph"]
    expected_nodes = len(graph["shared_memory"]) + len(graph["kernels"]) + len(graph["sources"])
    assert shown["graphNodes"] == expected_nodes
    kernel_colours = browser.execute_script(
        "return [...document.querySelectorAll('#graph g.node.kernel')].map(g => g.getAttribute('data-health'))")
    assert sorted(kernel_colours) == ["active"] * 5
    latency = browser.find_element("css selector", "#latency tbody").text
    assert "dm_command" in latency and "clip" in latency
    assert wait_for(lambda: browser.find_element("id", "events-state").text == "live", timeout=10)
    time.sleep(2)  # a few status polls, preview refreshes and the event stream's first seconds
    assert console_errors(browser) == []
    with urllib.request.urlopen(f"http://127.0.0.1:{demo.port}/", timeout=5) as page:
        policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy  # nothing from elsewhere


def test_preview_image_updates_from_the_stream(browser, demo):
    open_console(browser, demo)
    choose_preview(browser, "wfs_frame", "10")
    first = preview_png(browser, "wfs_frame")
    pixels = decode_png(first)
    assert pixels.shape == (64, 64) and pixels.min() == 0 and pixels.max() == 255  # the camera, autoscaled

    def changed():
        return preview_png(browser, "wfs_frame") != first

    assert wait_for(changed, timeout=10, interval=0.3)  # random camera frames: new bytes each refresh
    choose_preview(browser, "dm_command", "5")
    plot = decode_png(preview_png(browser, "dm_command"))
    assert plot.shape[0] < plot.shape[1] and (plot == 0).any()  # a line plot of the 32 actuators
    assert browser.find_element("id", "preview-frame").get_attribute("class").split() == ["preview-frame", "plot"]
    info = browser.find_element("id", "preview-info").text
    assert "count" in info and "range" in info
    assert console_errors(browser) == []


def test_pause_from_the_page_pauses_the_pipeline(browser, demo):
    open_console(browser, demo)
    pause = browser.find_element("id", "cmd-pause")
    assert not pause.is_enabled()  # no token yet
    browser.find_element("id", "token-input").send_keys(ADMIN_TOKEN)
    browser.find_element("id", "token-apply").click()
    assert wait_for(pause.is_enabled, timeout=5)
    assert browser.find_element("id", "token-input").get_attribute("value") == ""  # not left in the field
    assert wait_for(lambda: browser.find_element("id", "events-state").text == "live", timeout=10)
    pause.click()
    assert wait_for(lambda: demo.status()["state"] == "paused", timeout=15)
    assert wait_for(lambda: browser.find_element("id", "pipeline-state").text == "paused", timeout=10)
    result = browser.find_element("id", "command-result")
    assert wait_for(lambda: result.text == "pause: done", timeout=10), result.text

    def state_event():
        return [e.text for e in browser.find_elements("css selector", "#events li")
                if "state" in e.text and "paused" in e.text]

    assert wait_for(state_event, timeout=10)  # the SSE stream delivered the change
    browser.find_element("id", "cmd-resume").click()
    assert wait_for(lambda: demo.status()["state"] == "running", timeout=15)
    cookies = browser.get_cookies()
    stored = browser.execute_script("return [localStorage.length, sessionStorage.length, document.cookie]")
    assert cookies == [] and stored == [0, 0, ""]  # the token lives in page memory only
    assert console_errors(browser) == []


def test_a_read_token_protects_the_page_data(browser, daemons, namespace, tmp_path):
    daemon = start_demo(daemons, namespace, tmp_path, [ADMIN_TOKEN, f"read {READ_TOKEN}"])
    try:
        assert daemon.get("/")[0] == 200  # the page itself never needs a token
        assert daemon.get("/preview/wfs_frame.png")[0] == 401
        browser.get(f"http://127.0.0.1:{daemon.port}/")
        banner = browser.find_element("id", "banner")
        assert wait_for(lambda: "read token" in banner.text, timeout=10)
        console_errors(browser)  # the refused requests before the token was typed are expected there
        browser.find_element("id", "token-input").send_keys(READ_TOKEN)
        browser.find_element("id", "token-apply").click()
        shown = wait_until_shown(browser, timeout=30)
        assert len(shown["workers"]) == 5 and not banner.is_displayed()
        assert wait_for(lambda: browser.find_element("id", "events-state").text == "live", timeout=10)
        browser.find_element("id", "cmd-pause").click()  # a read token cannot pause
        result = browser.find_element("id", "command-result")
        assert wait_for(lambda: "refused (403)" in result.text, timeout=10), result.text
        assert "control" in result.text and status_with(daemon, READ_TOKEN)["state"] == "running"
    finally:
        assert daemon.stop() == 0, daemon.output


def status_with(daemon, token: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.port}/status",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())


def test_a_single_value_stream_is_shown_as_a_number(browser, daemons, namespace, tmp_path):
    pipeline = tmp_path / "gain.yaml"
    pipeline.write_text(
        f"namespace: {namespace}\n"
        "shared_memory:\n"
        "  - {name: gain, shape: [1], dtype: float32}\n"
        "  - {name: doubled, shape: [1], dtype: float32}\n"
        "sources:\n"
        "  - {name: knob, kind: synthetic.array, stream: gain, parameters: {pattern: ramp, rate_hz: 50}}\n"
        "kernels:\n"
        "  - {name: double, kind: cpu.scale, input: gain, output: doubled, parameters: {factor: 2.0}}\n")
    daemon = daemons(pipeline, namespace, tmp_path)
    try:
        daemon.wait_ready(timeout=60)
        open_console(browser, daemon)
        choose_preview(browser, "doubled", "10")
        value = browser.find_element("id", "preview-value")

        def number_shown():
            if value.get_attribute("data-stream") != "doubled" or not value.is_displayed():
                return None
            return float(value.text)

        first = wait_for(number_shown, timeout=10, interval=0.1)
        assert wait_for(lambda: number_shown() not in (None, first), timeout=10, interval=0.1)  # a ramp moves
        assert not browser.find_element("id", "preview-image").is_displayed()
        answer = json.loads(daemon.get("/preview/doubled.json")[1])
        assert answer["shape"] == [1] and len(answer["values"]) == 1 and answer["count"] > 0
        assert console_errors(browser) == []
    finally:
        assert daemon.stop() == 0, daemon.output
