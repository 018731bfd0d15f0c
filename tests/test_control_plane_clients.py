"""Clients of the control plane: ours (shmpiped.control), shmpipeline 1.3.0's real one, discovery, and the
event stream's bounds (client limit, a stalled client dropped while the daemon's loop goes on).

shmpipeline's own client (``shmpipeline/control/client.py`` and ``discovery.py``, read from the
shmpipeline 1.3.0 wheel of .ci/install-shmpipeline-wheels.sh) needs httpx, in the ``test`` extra.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import threading
import zipfile

import pytest

from .conftest import run_python, segments_of, wait_for
from .control_plane_support import TOKENS, EventReader, ServeProcess, call, write_token_file
from .daemon_support import write_pipeline

READ, CONTROL, ADMIN = TOKENS["read"], TOKENS["control"], TOKENS["admin"]


def drive(client_class, error_class, base_url, discovered):
    """shmpipeline's documented usage of RemoteManagerClient, against a shmpiped daemon."""
    with client_class(base_url, token=READ) as reader:
        assert reader.health()["state"] == "running"
        assert reader.status()["workers"]["stage"]["kind"] == "cpu.scale"
        assert reader.snapshot()["state"] == "running"
        assert [k["name"] for k in reader.graph()["kernels"]] == ["stage"]
        assert reader.document()["document"]["kernels"][0]["kind"] == "cpu.scale"
        assert reader.validate_document()["valid"] is True
        assert "cpu.scale" in reader.info()["kernel_kinds"]
        with pytest.raises(error_class) as refused:
            reader.pause()
        assert refused.value.status_code == 403 and str(refused.value) == "operation requires 'control' scope"
    with pytest.raises(error_class) as refused:
        client_class(base_url).health()
    assert refused.value.status_code == 401

    control = client_class(base_url, token=CONTROL)
    events = control.iter_events()
    first = next(events)
    assert first["event"] == "snapshot" and first["data"]["reason"] == "initial"
    assert control.pause()["state"] == "paused"
    state = next(e for e in events if e["event"] == "state")
    assert state["data"] == {**state["data"], "state": "paused", "previous": "running"}
    events.close()
    assert control.resume()["state"] == "running"
    resumed = []
    for event in control.stream_events(last_event_id=state["id"], should_continue=lambda: not resumed):
        if event["event"] == "state" and event["data"]["state"] == "running":
            resumed.append(event)
            break
    assert resumed and resumed[0]["id"] > state["id"]
    assert control.stop(timeout=2.0)["state"] == "built"
    assert control.start()["state"] == "running"
    assert control.stop_synthetic_input("output")["stream_name"] == "output"
    with pytest.raises(error_class) as refused:
        control.start_synthetic_input({"stream_name": "output"})
    assert refused.value.status_code == 400 and "already written by kernel 'stage'" in str(refused.value)
    with pytest.raises(error_class) as refused:
        control.shutdown()
    assert refused.value.status_code == 403 and str(refused.value) == "operation requires 'admin' scope"
    control.close()
    assert any(record.base_url == base_url and record.token_required for record in discovered())
    with client_class(base_url, token=ADMIN) as admin:
        assert admin.shutdown()["shutting_down"] is True


@pytest.fixture
def served(tmp_path, namespace):
    tokens = write_token_file(tmp_path / "tokens")
    server = ServeProcess(write_pipeline(tmp_path / "p.yaml", namespace), tmp_path, "--token-file", str(tokens))
    yield server
    server.stop()


def test_our_client_drives_shmpiped_serve(served, namespace):
    from shmpiped.control import RemoteManagerClient, RemoteManagerError, discover_local_servers

    served.wait_running()
    drive(RemoteManagerClient, RemoteManagerError, f"http://127.0.0.1:{served.port}", discover_local_servers)
    assert served.process.wait(timeout=30) == 0  # shut down over HTTP: exit 0
    assert not any(r.port == served.port for r in discover_local_servers())  # its record went with it
    assert segments_of(namespace) == []


def test_our_client_says_when_nothing_listens():
    from shmpiped.control import RemoteManagerClient, RemoteManagerError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(RemoteManagerError, match=f"could not reach control server at http://127.0.0.1:{port}"):
            RemoteManagerClient(f"http://127.0.0.1:{port}").health()


def _load_real_shmpipeline_module(tmp_path, name):
    from .shmpipeline_support import WHEELHOUSE, unavailable

    wheels = sorted(WHEELHOUSE.glob("shmpipeline-1.3.0-*.whl")) if WHEELHOUSE.is_dir() else []
    if not wheels:
        unavailable(f"no shmpipeline 1.3.0 wheel in {WHEELHOUSE}: run .ci/install-shmpipeline-wheels.sh",
                    suite="shmpipeline compatibility tests")
    target = tmp_path / f"real_shmpipeline_{name}.py"
    with zipfile.ZipFile(wheels[0]) as wheel:
        target.write_bytes(wheel.read(f"shmpipeline/control/{name}.py"))
    spec = importlib.util.spec_from_file_location(target.stem, target)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_shmpipelines_real_client_drives_shmpiped_serve(served, tmp_path, namespace):
    pytest.importorskip("httpx", reason="httpx (the test extra) is what shmpipeline's client is written on")
    client = _load_real_shmpipeline_module(tmp_path, "client")
    discovery = _load_real_shmpipeline_module(tmp_path, "discovery")
    served.wait_running()
    drive(client.RemoteManagerClient, client.RemoteManagerError, f"http://127.0.0.1:{served.port}",
          discovery.discover_local_servers)
    assert served.process.wait(timeout=30) == 0
    assert segments_of(namespace) == []


def test_shmpipeline_control_imports_resolve_to_shmpiped():
    result = run_python(
        "from shmpiped.compat import install_shmpipeline_fallback; install_shmpipeline_fallback()\n"
        "import shmpipeline\n"
        "if shmpipeline.__name__ == 'shmpiped':\n"
        "    from shmpipeline.control import ManagerService, RemoteManagerClient, RemoteManagerError,"
        " discover_local_servers\n"
        "    import shmpipeline.control.client as c, shmpiped.control.client as ours\n"
        "    assert c is ours and RemoteManagerClient is ours.RemoteManagerClient\n"
        "    print('aliased', ManagerService.__module__)\n"
        "else:\n"
        "    print('real shmpipeline installed')\n")
    assert result.stdout.strip() in ("aliased shmpiped.control.service", "real shmpipeline installed")
    if result.stdout.strip() == "real shmpipeline installed":
        pytest.fail("the real shmpipeline is installed in the test interpreter: the alias cannot be checked")


def test_manager_service_serialises_one_manager(tmp_path, namespace):
    from shmpiped.control import ManagerService

    service = ManagerService(write_pipeline(tmp_path / "p.yaml", namespace))
    try:
        service.start_event_pump()
        subscriber, events, backlog = service.subscribe()
        assert backlog == [] and service.health()["state"] == "initialized"
        assert service.build()["state"] == "built"
        assert service.start()["state"] == "running"
        assert service.pause()["state"] == "paused"
        assert [events.get(timeout=5)["data"]["reason"] for _ in range(3)] == ["build", "start", "pause"]
        with pytest.raises(Exception, match="while the pipeline is active"):
            service.update_document(service.document()["document"])
        assert service.stop()["state"] == "built"
        assert service.update_document(service.document()["document"])["revision"] == 2
        assert service.shutdown()["state"] == "stopped"
        service.unsubscribe(subscriber)
    finally:
        service.close()
    assert segments_of(namespace) == []


# ---------------------------------------------------------------------- the event stream's bounds
def test_event_clients_are_bounded_and_a_stalled_one_is_dropped_while_the_loop_goes_on(tmp_path, namespace, daemons):
    tokens = write_token_file(tmp_path / "tokens")
    daemon = daemons(write_pipeline(tmp_path / "p.yaml", namespace), namespace, tmp_path, "--token-file", str(tokens))
    daemon.wait_ready()
    port = daemon.port

    def status():
        return call(port, "GET", "/status", token=READ)[1]

    readers = [EventReader(port, token=READ) for _ in range(16)]
    assert all(r.status == 200 for r in readers)
    wait_for(lambda: status()["daemon"]["event_clients"] == 16, timeout=10)
    extra = EventReader(port, token=READ)
    assert extra.status == 503
    assert "too many event-stream clients (limit 16)" in extra.response.read().decode()
    for reader in readers:
        reader.close()
    wait_for(lambda: status()["daemon"]["event_clients"] == 0, timeout=10)

    # a client that never reads, with a tiny receive buffer, beside one that keeps up
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READ}\r\n\r\n".encode())
    keeping_up = EventReader(port, token=READ)
    assert keeping_up.status == 200
    received = []

    def read_all():
        try:
            for event in iter(keeping_up.next_event, None):
                received.append(event)
        except (OSError, ValueError, AttributeError):  # closed by the test
            pass

    reading = threading.Thread(target=read_all, daemon=True)
    reading.start()
    wait_for(lambda: status()["daemon"]["event_clients"] == 2, timeout=10)
    before = status()["daemon"]["loop_iterations_total"]
    commands = 0
    while status()["daemon"]["event_clients_dropped_total"] == 0 and commands < 300:
        for command in ("pause", "resume"):
            assert call(port, "POST", f"/commands/{command}", token=CONTROL)[0] == 200
            commands += 1
        assert call(port, "GET", "/healthz")[0] == 200  # the loop is alive throughout
    after = status()["daemon"]
    assert after["event_clients_dropped_total"] == 1, f"not dropped after {commands} commands"
    assert after["loop_iterations_total"] > before + commands / 2  # one iteration per command at least
    stalled.settimeout(15)
    drained = 0
    while chunk := stalled.recv(65536):  # what was buffered, then the server's close
        drained += len(chunk)
    stalled.close()
    wait_for(lambda: status()["daemon"]["event_clients"] == 1, timeout=10)  # the reader that keeps up stays
    last = call(port, "POST", "/commands/pause", token=CONTROL)[1]
    wait_for(lambda: any(e["event"] == "snapshot" and e["data"]["snapshot"].get("timestamp") == last["timestamp"]
                         for e in received[-10:]), timeout=10)
    keeping_up.close()
    reading.join(timeout=15)
    assert drained > 0 and len(received) > commands


def test_bench_console_watches_the_demo_as_an_open_console_does():
    """`shmpiped bench console`: its watched phase really served what it claims (events and bytes to
    every SSE client, previews, /status polls), and both phases have figures."""
    result = subprocess.run([sys.executable, "-m", "shmpiped.cli", "bench", "console", "--seconds", "2",
                             "--sse-clients", "3", "--json"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["events_per_client"] >= 1 and report["sse_bytes_per_client"] > 0  # the initial snapshot, at least
    assert len(report["preview_streams"]) == 1 and report["previews_served"] >= 2 and report["preview_errors"] == 0
    assert report["status_polls"] >= 1 and report["sse_refused"] == 0
    for key in ("e2e_p99_us_quiet", "e2e_p99_us_watched", "loop_mean_us_quiet", "loop_mean_us_watched"):
        assert report[key] is not None and report[key] > 0, key
