"""The control socket: real Unix sockets in tmp_path, real threads, a real client process."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import pytest

from shmpiped.service.control_socket import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    MAX_REQUEST_BYTES,
    ControlError,
    ControlServer,
    ControlUnavailable,
    ctl_main,
    default_socket_path,
    format_status,
    send_command,
)

from .conftest import run_python, wait_for

STATUS = {
    "state": "running",
    "namespace": "ao",
    "workers": {
        "centroid": {"health": "active", "throughput_hz": 499.7, "avg_exec_us": 12.34, "p99_exec_us": 20.0,
                     "restarts": 0, "pid": 4242},
        "reconstruct": {"health": "waiting-input", "restarts": 2, "pid": 4243},
    },
    "summary": {"workers_total": 2, "active_workers": 1, "waiting_workers": 1},
    "synthetic_sources": {"frames": {"pattern": "random", "rate_hz": 500.0, "effective_rate_hz": 499.9}},
    "failures": [{"kernel": "reconstruct", "error": "RuntimeError: boom"}],
}


class Recorder:
    """A handler that answers like a small daemon and remembers what it was asked."""

    known = ("status", "pause", "resume", "restart", "stop", "synthetic", "echo", "fail", "sleep")

    def __init__(self):
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, request: dict):
        with self.lock:
            self.requests.append(request)
        command = request["command"]
        if command == "status":
            return STATUS
        if command == "echo":
            return {k: v for k, v in request.items() if k != "command"}
        if command == "fail":
            raise RuntimeError(request.get("message", "handler exploded"))
        if command == "sleep":
            time.sleep(request["seconds"])
            return "slept"
        if command in ("pause", "resume", "stop"):
            return {"state": "paused" if command == "pause" else "running"}
        if command == "restart":
            return {"restarted": [request["worker"]] if request.get("worker") else ["a", "b"]}
        if command == "synthetic":
            if request.get("action") == "start" and request.get("pattern") not in ("random", "sine"):
                raise ValueError(f"unknown pattern {request.get('pattern')!r}")
            return {"stream_name": request["stream"]}
        raise ValueError(f"unknown command {command!r}; known commands: {', '.join(self.known)}")


@pytest.fixture
def handler():
    return Recorder()


@pytest.fixture
def server(tmp_path, handler):
    srv = ControlServer(str(tmp_path / "run" / "ctl.sock"), handler, read_timeout=2.0)
    srv.start()
    yield srv
    srv.close()


def raw_exchange(path: str, payload: bytes, timeout: float = 5.0) -> list[dict]:
    """Send raw bytes, half-close, and return every answer line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


# --------------------------------------------------------------------------- framing


def test_round_trip_passes_arguments_and_peer_credentials(server, handler):
    result = send_command(server.path, "echo", worker="centroid", rate_hz=2.5, nested={"a": [1, 2]})
    assert result["worker"] == "centroid" and result["rate_hz"] == 2.5 and result["nested"] == {"a": [1, 2]}
    assert result["_peer"] == {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid()}


def test_client_cannot_forge_peer_credentials(server, handler):
    result = send_command(server.path, "echo", _peer={"pid": 1, "uid": 0, "gid": 0})
    assert result["_peer"]["pid"] == os.getpid() and result["_peer"]["uid"] == os.getuid()


def test_several_requests_on_one_connection_answered_in_order(server):
    lines = b"".join(json.dumps({"command": "echo", "n": n}).encode() + b"\n" for n in range(5))
    answers = raw_exchange(server.path, lines)
    assert [a["result"]["n"] for a in answers] == list(range(5))
    assert all(a["ok"] for a in answers)


def test_last_request_without_newline_is_still_answered(server):
    answers = raw_exchange(server.path, b'{"command": "echo", "x": 1}')
    assert answers == [{"ok": True, "result": {"x": 1, "_peer": answers[0]["result"]["_peer"]}}]


@pytest.mark.parametrize("payload, message", [
    (b"{not json\n", "malformed JSON"),
    (b"\xff\xfe\n", "malformed JSON"),
    (b"\n", "malformed JSON"),
    (b"[1, 2]\n", "must be a JSON object"),
    (b'{"worker": "a"}\n', "'command' string"),
    (b'{"command": 3}\n', "'command' string"),
])
def test_malformed_requests_get_an_error_and_the_connection_goes_on(server, handler, payload, message):
    answers = raw_exchange(server.path, payload + b'{"command": "echo"}\n')
    assert answers[0]["ok"] is False and message in answers[0]["error"]
    assert answers[1]["ok"] is True
    assert [r["command"] for r in handler.requests] == ["echo"]


def test_oversize_line_is_rejected_and_the_connection_closed(server, handler):
    big = json.dumps({"command": "echo", "blob": "x" * MAX_REQUEST_BYTES}).encode() + b"\n"
    answers = raw_exchange(server.path, big + b'{"command": "echo"}\n')
    assert len(answers) == 1
    assert answers[0] == {"ok": False, "error": f"request line exceeds {MAX_REQUEST_BYTES} bytes"}
    assert handler.requests == []
    with pytest.raises(ValueError, match="limit"):
        send_command(server.path, "echo", blob="x" * MAX_REQUEST_BYTES)
    assert send_command(server.path, "echo", blob="x" * 1000)["blob"] == "x" * 1000


def test_handler_exception_becomes_an_error_answer(server):
    with pytest.raises(ControlError, match="^handler exploded$"):
        send_command(server.path, "fail")
    with pytest.raises(ControlError, match="unknown command 'bogus'; known commands: status, pause"):
        send_command(server.path, "bogus")
    assert send_command(server.path, "echo") == {"_peer": send_command(server.path, "echo")["_peer"]}


def test_unencodable_result_becomes_an_error_answer(tmp_path):
    with ControlServer(str(tmp_path / "c.sock"), lambda request: {"x": float("nan"), "y": {1, 2}}) as srv:
        assert send_command(srv.path, "anything") == {"x": pytest.approx(float("nan"), nan_ok=True),
                                                      "y": [1, 2]}

    def circular(request):
        loop: list = []
        loop.append(loop)
        return loop

    with ControlServer(str(tmp_path / "d.sock"), circular) as srv:
        with pytest.raises(ControlError, match="could not be encoded"):
            send_command(srv.path, "anything")


# --------------------------------------------------------------------------- concurrency and timeouts


def test_silent_client_does_not_block_ten_concurrent_clients(server, handler):
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(server.path)
    silent.sendall(b'{"command": "ec')          # half a request, then nothing
    try:
        results: dict[int, object] = {}
        barrier = threading.Barrier(10)

        def client(n: int) -> None:
            barrier.wait()
            try:
                results[n] = send_command(server.path, "sleep", timeout=5.0, seconds=0.3)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                results[n] = exc

        start = time.monotonic()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        elapsed = time.monotonic() - start
        assert results == {n: "slept" for n in range(10)}
        assert elapsed < 1.5, f"clients were served one after another ({elapsed:.2f} s)"
    finally:
        silent.close()


def test_incomplete_request_times_out_with_an_error(tmp_path, handler):
    with ControlServer(str(tmp_path / "c.sock"), handler, read_timeout=0.3) as srv:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(srv.path)
            sock.sendall(b'{"command": ')
            start = time.monotonic()
            answer = sock.recv(4096)
            assert time.monotonic() - start < 2
            assert json.loads(answer) == {"ok": False, "error": "request not completed within 0.3 s"}
            assert sock.recv(4096) == b""               # and the connection is closed
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
            idle.settimeout(5)
            idle.connect(srv.path)
            assert idle.recv(4096) == b""               # an idle connection is closed silently


def test_connections_beyond_the_limit_all_running_commands_are_refused_with_an_answer(tmp_path, handler):
    with ControlServer(str(tmp_path / "c.sock"), handler, max_connections=2) as srv:
        busy = [threading.Thread(target=send_command, args=(srv.path, "sleep"), kwargs={"seconds": 1.0})
                for _ in range(2)]
        for thread in busy:
            thread.start()
        wait_for(lambda: sum(c.busy for c in list(srv._connections.values())) == 2)
        with pytest.raises(ControlError, match="too many control connections"):
            send_command(srv.path, "echo")
        for thread in busy:
            thread.join()
        assert "_peer" in send_command(srv.path, "echo")


def test_idle_connections_cannot_lock_control_out(tmp_path, handler):
    """Every slot held by a silent client: a new command takes the slot of the one idle longest."""
    with ControlServer(str(tmp_path / "c.sock"), handler, max_connections=3, read_timeout=30) as srv:
        held = []
        try:
            for _ in range(3):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(5)
                sock.connect(srv.path)
                held.append(sock)
                count = len(held)
                wait_for(lambda count=count: len(srv._connections) == count)
            assert send_command(srv.path, "pause", timeout=5) == {"state": "paused"}
            assert held[0].recv(10) == b""               # the oldest idle connection was closed for it
            assert srv.evicted_total == 1
            wait_for(lambda: len(srv._connections) == 2)  # the pause client left: one slot is free
            late = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            late.connect(srv.path)
            held.append(late)
            wait_for(lambda: len(srv._connections) == 3)
            assert send_command(srv.path, "stop", timeout=5) == {"state": "running"}
            assert held[1].recv(10) == b"" and srv.evicted_total == 2
            held[2].sendall(b'{"command": "echo", "still": "here"}\n')   # the newest one is still served
            assert json.loads(held[2].recv(65536))["result"]["still"] == "here"
        finally:
            for sock in held:
                sock.close()


def test_client_times_out_on_a_silent_daemon(tmp_path):
    with ControlServer(str(tmp_path / "c.sock"), lambda request: time.sleep(2)) as srv:
        start = time.monotonic()
        with pytest.raises(ControlUnavailable, match="no answer from the daemon"):
            send_command(srv.path, "status", timeout=0.3)
        assert time.monotonic() - start < 1.5


# --------------------------------------------------------------------------- the socket file


def test_socket_mode_parent_directory_and_close_unlinks(tmp_path, handler):
    path = tmp_path / "missing" / "deeper" / "ctl.sock"
    srv = ControlServer(str(path), handler).start()
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert srv.path == str(path) and srv.serving
    finally:
        srv.close()
    assert not path.exists()
    assert not srv.serving
    srv.close()                                           # twice is fine
    with pytest.raises(ControlUnavailable):
        send_command(str(path), "status")


def test_mode_is_configurable(tmp_path, handler):
    with ControlServer(str(tmp_path / "c.sock"), handler, mode=0o600) as srv:
        assert stat.S_IMODE(os.stat(srv.path).st_mode) == 0o600


def test_stale_socket_file_is_replaced(tmp_path, handler):
    path = str(tmp_path / "c.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()                                          # the file stays; nobody listens
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with ControlServer(path, handler) as srv:
        assert send_command(srv.path, "status")["state"] == "running"


def test_live_server_at_the_same_path_is_refused(server, handler):
    second = ControlServer(server.path, handler)
    with pytest.raises(OSError, match="another process is listening") as info:
        second.start()
    assert "--socket" in str(info.value) and server.path in str(info.value)
    assert send_command(server.path, "status")["state"] == "running"   # the first one is untouched
    second.close()
    assert os.path.exists(server.path)


def test_regular_file_at_the_path_is_not_removed(tmp_path, handler):
    path = tmp_path / "c.sock"
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="not a socket"):
        ControlServer(str(path), handler).start()
    assert path.read_text() == "precious"


def test_close_does_not_unlink_a_successors_socket(tmp_path, handler):
    path = str(tmp_path / "c.sock")
    first = ControlServer(path, handler).start()
    os.unlink(path)                                       # e.g. an operator cleaned up by hand
    with ControlServer(path, handler) as second:
        first.close()
        assert send_command(second.path, "status")["state"] == "running"


def test_close_from_inside_a_handler_still_answers(tmp_path):
    holder: dict = {}

    def handler(request):
        holder["server"].close()
        return {"state": "stopping"}

    srv = ControlServer(str(tmp_path / "c.sock"), handler)
    holder["server"] = srv
    srv.start()
    assert send_command(srv.path, "stop") == {"state": "stopping"}
    assert not os.path.exists(srv.path)


def test_close_ends_open_connections(tmp_path, handler):
    srv = ControlServer(str(tmp_path / "c.sock"), handler, read_timeout=30).start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(srv.path)
        deadline = time.monotonic() + 5
        while not srv._connections and time.monotonic() < deadline:
            time.sleep(0.01)
        start = time.monotonic()
        srv.close()
        assert time.monotonic() - start < 1.5
        assert sock.recv(10) == b""
    assert threading.active_count() < 50


def test_too_long_path_is_refused_clearly(tmp_path, handler):
    path = str(tmp_path / ("x" * 120) / "c.sock")
    with pytest.raises(OSError, match="choose a shorter --socket"):
        ControlServer(path, handler).start()


def test_default_socket_path(monkeypatch):
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    assert default_socket_path("ao") == "/run/shmpiped/ao.sock"
    assert default_socket_path(None) == "/run/shmpiped/default.sock"
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/shmpiped-x:/run/other")
    assert default_socket_path("ao") == "/run/shmpiped-x/ao.sock"
    monkeypatch.setenv("RUNTIME_DIRECTORY", "")
    assert default_socket_path("ao") == "/run/shmpiped/ao.sock"
    with pytest.raises(ValueError):
        default_socket_path("a/b")


# --------------------------------------------------------------------------- a client in another process


def test_client_in_another_process(server, handler):
    code = (
        "import json, os, sys\n"
        "from shmpiped.service.control_socket import send_command\n"
        "result = send_command(sys.argv[1], 'echo', worker='centroid')\n"
        "print(json.dumps({'result': result, 'pid': os.getpid()}))\n"
    )
    out = json.loads(run_python(code, server.path).stdout)
    assert out["result"]["worker"] == "centroid"
    assert out["result"]["_peer"]["pid"] == out["pid"] != os.getpid()
    assert out["result"]["_peer"]["uid"] == os.getuid()


def test_ctl_in_another_process_reports_exit_status(server, tmp_path):
    code = (
        "import sys\n"
        "from shmpiped.service.control_socket import ctl_main\n"
        "status, text = ctl_main(sys.argv[1], sys.argv[2:])\n"
        "print(text)\n"
        "sys.exit(status)\n"
    )
    ok = run_python(code, server.path, "pause")
    assert ok.stdout.strip() == "pause: ok (state: paused)"
    missing = run_python(code, str(tmp_path / "nobody.sock"), "status", check=False)
    assert missing.returncode == EXIT_UNAVAILABLE and "--socket" in missing.stdout


# --------------------------------------------------------------------------- ctl_main


def test_ctl_status_text_and_json(server):
    status, text = ctl_main(server.path, ["status"])
    assert status == EXIT_OK
    assert "state: running" in text and "namespace: ao" in text
    centroid = next(line for line in text.splitlines() if line.startswith("centroid"))
    assert "active" in centroid and "499.7" in centroid and "12.3" in centroid and "4242" in centroid
    assert "synthetic: frames (random" in text and "reconstruct: RuntimeError: boom" in text
    status, text = ctl_main(server.path, ["status", "--json"])
    assert status == EXIT_OK and json.loads(text) == STATUS


@pytest.mark.parametrize("words, request_, text", [
    (["pause"], {"command": "pause"}, "pause: ok (state: paused)"),
    (["resume"], {"command": "resume"}, "resume: ok (state: running)"),
    (["stop"], {"command": "stop"}, "stop: ok (state: running)"),
    (["restart"], {"command": "restart", "worker": None}, "restart: ok (restarted: a, b)"),
    (["restart", "centroid"], {"command": "restart", "worker": "centroid"},
     "restart centroid: ok (restarted: centroid)"),
    (["synthetic", "start", "frames", "sine", "250"],
     {"command": "synthetic", "action": "start", "stream": "frames", "pattern": "sine", "rate_hz": 250.0},
     "synthetic start frames: ok"),
    (["synthetic", "start", "frames", "random"],
     {"command": "synthetic", "action": "start", "stream": "frames", "pattern": "random", "rate_hz": None},
     "synthetic start frames: ok"),
    (["synthetic", "stop", "frames"], {"command": "synthetic", "action": "stop", "stream": "frames"},
     "synthetic stop frames: ok"),
])
def test_ctl_commands_send_the_documented_requests(server, handler, words, request_, text):
    status, out = ctl_main(server.path, words)
    assert (status, out) == (EXIT_OK, text)
    sent = dict(handler.requests[-1])
    assert set(sent.pop("_peer")) == {"pid", "uid", "gid"}
    assert sent == request_


def test_ctl_error_answer_exits_1(server):
    status, text = ctl_main(server.path, ["synthetic", "start", "frames", "plaid"])
    assert status == EXIT_ERROR and text == "error: synthetic: unknown pattern 'plaid'"


def test_ctl_without_daemon_exits_69(tmp_path):
    path = str(tmp_path / "nobody.sock")
    status, text = ctl_main(path, ["status"])
    assert status == EXIT_UNAVAILABLE
    assert path in text and "--socket" in text
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()                                          # a stale file: connection refused
    status, text = ctl_main(path, ["pause"])
    assert status == EXIT_UNAVAILABLE and "Connection refused" in text


@pytest.mark.parametrize("words", [
    [], ["frobnicate"], ["status", "--yaml"], ["pause", "now"], ["restart", "a", "b"],
    ["synthetic"], ["synthetic", "start", "frames"], ["synthetic", "start", "frames", "sine", "fast"],
    ["synthetic", "start", "frames", "sine", "-5"], ["synthetic", "start", "frames", "sine", "nan"],
    ["synthetic", "stop"], ["synthetic", "pause", "frames"],
])
def test_ctl_bad_usage_exits_64_without_connecting(tmp_path, words):
    status, text = ctl_main(str(tmp_path / "nobody.sock"), words)
    assert status == EXIT_USAGE
    assert text.startswith("error: ") and "usage: shmpiped ctl" in text


def test_ctl_help():
    status, text = ctl_main("/nonexistent.sock", ["--help"])
    assert status == EXIT_OK and "synthetic start STREAM PATTERN [RATE_HZ]" in text


def test_format_status_tolerates_sparse_snapshots():
    assert format_status({}) == "state: ?    namespace: default"
    text = format_status({"state": "built", "workers": {"w": None}})
    assert "w " in text and "?" in text
