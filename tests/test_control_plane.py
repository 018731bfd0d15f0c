"""The HTTP control plane against its contract: a real daemon (`shmpiped run --token-file`), real HTTP.

Every verb with the scope it needs and one below it, the refusals without a
token file, token-file errors (exit 78 naming file and line), documents applied
live, and the event stream (a ``state`` event after a pause, Last-Event-ID).
"""

from __future__ import annotations

import pytest

from shmpiped.service.tokens import TokenFileError, load_token_file, parse_token_text

from .conftest import segments_of, wait_for
from .control_plane_support import TOKENS, EventReader, call, write_token_file
from .daemon_support import write_pipeline

DISABLED = ("control requests are disabled: start the daemon with --token-file FILE "
            "(README: Remote control)")
READ, CONTROL, ADMIN = TOKENS["read"], TOKENS["control"], TOKENS["admin"]
LOWER = {"control": READ, "admin": CONTROL}


# ---------------------------------------------------------------------- the token file
def test_token_file_grants_the_highest_scope_a_token_is_given(tmp_path):
    table = parse_token_text("# comment\n\nread shared\ncontrol shared\nbare-admin\n  \n", "t")
    assert table.level_of("shared") == 1 and table.level_of("bare-admin") == 2
    assert table.level_of("shared ") is None and table.level_of("") is None and table.level_of(None) is None
    assert table.protects_reads and table.enabled
    secret = write_token_file(tmp_path / "secret", "only-one-token\n", mode=0o440)  # a mounted Secret key
    loaded = load_token_file(str(secret))
    assert loaded.level_of("only-one-token") == 2 and not loaded.protects_reads


@pytest.mark.parametrize("text, mode, message", [
    (None, 0o644, "readable by every user: run `chmod o-r {path}`"),
    ("", 0o600, "holds no token"),
    ("# only a comment\n\n", 0o600, "holds no token"),
    ("read ok\nsuperuser tok\n", 0o600, "{path}, line 2: unknown scope 'superuser'"),
    ("read a b\n", 0o600, "{path}, line 1: expected 'TOKEN' or 'SCOPE TOKEN'"),
])
def test_token_file_errors_name_the_file_and_line(tmp_path, text, mode, message):
    path = write_token_file(tmp_path / "tokens", text, mode=mode)
    with pytest.raises(TokenFileError) as refused:
        load_token_file(str(path))
    assert message.format(path=path) in str(refused.value)


def test_missing_token_file_is_named(tmp_path):
    with pytest.raises(TokenFileError, match=f"{tmp_path}/absent: token file not found"):
        load_token_file(str(tmp_path / "absent"))


def test_daemon_exits_78_on_a_bad_token_file(tmp_path, namespace, daemons):
    tokens = write_token_file(tmp_path / "tokens", "read ok\nroot tok\n")
    daemon = daemons(write_pipeline(tmp_path / "p.yaml", namespace), namespace, tmp_path,
                     "--token-file", str(tokens))
    assert daemon.process.wait(timeout=30) == 78
    assert f"{tokens}, line 2: unknown scope 'root'" in daemon.output
    assert segments_of(namespace) == []  # refused before anything was built


# ---------------------------------------------------------------------- without a token file
def test_without_a_token_file_reads_answer_and_control_is_refused(tmp_path, namespace, daemons):
    daemon = daemons(write_pipeline(tmp_path / "p.yaml", namespace), namespace, tmp_path)
    daemon.wait_ready()
    for path in ("/health", "/info", "/status", "/snapshot", "/graph", "/document"):
        code, body = call(daemon.port, "GET", path)
        assert code == 200, (path, body)
    assert call(daemon.port, "POST", "/document/validate")[1]["valid"] is True
    for path in ("/commands/pause", "/commands/shutdown", "/commands/reload", "/synthetic/stop", "/document/load"):
        code, body = call(daemon.port, "POST", path, {}, token=ADMIN)
        assert (code, body) == (403, {"detail": DISABLED}), path
    assert call(daemon.port, "PUT", "/document", {}, token=ADMIN) == (403, {"detail": DISABLED})
    assert call(daemon.port, "GET", "/commands/pause")[0] == 405
    assert daemon.status()["state"] == "running"
    assert "refused 403" in daemon.output and ADMIN not in daemon.output  # logged, the token never


# ---------------------------------------------------------------------- every verb, every scope
def refused_below(port, method, path, scope, body=None):
    """The request is refused without a token (401), with an unknown one (401) and one scope too low (403)."""
    assert call(port, method, path, body)[0] == 401
    assert call(port, method, path, body, token="not-a-token")[0] == 401
    code, answer = call(port, method, path, body, token=LOWER[scope])
    assert (code, answer) == (403, {"detail": f"operation requires '{scope}' scope"}), (path, answer)


def test_every_verb_needs_its_scope_and_does_what_it_says(tmp_path, namespace, daemons):
    tokens = write_token_file(tmp_path / "tokens")
    pipeline = write_pipeline(tmp_path / "p.yaml", namespace)
    daemon = daemons(pipeline, namespace, tmp_path, "--token-file", str(tokens))
    daemon.wait_ready()
    port = daemon.port

    def status():
        return call(port, "GET", "/status", token=READ)[1]

    # reads: a read line in the token file protects them
    for path in ("/health", "/info", "/status", "/snapshot", "/graph", "/document", "/events"):
        assert call(port, "GET", path)[0] == 401, path
    assert call(port, "GET", "/metrics")[0] == 200 and call(port, "GET", "/healthz")[0] == 200
    health = call(port, "GET", "/health", token=READ)[1]
    assert health == {"ok": True, "state": "running", "document_revision": 1}
    info = call(port, "GET", "/info", token=READ)[1]
    assert "cpu.scale" in info["kernel_kinds"] and "ramp" in info["synthetic_patterns"]
    assert {"build", "start", "pause", "resume", "stop", "shutdown"} <= set(info["commands"])
    assert status()["daemon"]["pid"] == daemon.process.pid and status()["workers"]["stage"]
    assert call(port, "GET", "/graph", token=READ)[1]["kernels"][0]["name"] == "stage"
    document = call(port, "GET", "/document", token=READ)[1]
    assert document["revision"] == 1 and document["document"]["kernels"][0]["parameters"] == {"factor": 2.0}

    # validate (read): the current document, a broken one
    assert call(port, "POST", "/document/validate", token=READ)[1]["valid"] is True
    broken = dict(document["document"], kernels=[dict(document["document"]["kernels"][0], kind="cpu.nowhere")])
    verdict = call(port, "POST", "/document/validate", broken, token=READ)[1]
    assert verdict["valid"] is False and "nowhere" in verdict["errors"][0]

    # control: pause, resume
    refused_below(port, "POST", "/commands/pause", "control")
    code, snapshot = call(port, "POST", "/commands/pause", token=CONTROL)
    assert code == 200 and snapshot["state"] == "paused"  # answered with the snapshot that reflects it
    assert call(port, "POST", "/commands/pause", token=CONTROL)[0] == 409
    refused_below(port, "POST", "/commands/resume", "control")
    assert call(port, "POST", "/commands/resume", token=CONTROL)[1]["state"] == "running"

    # admin: build is a no-op only on a built pipeline
    refused_below(port, "POST", "/commands/build", "admin")
    code, answer = call(port, "POST", "/commands/build", token=ADMIN)
    assert (code, answer["detail"]) == (409, "build is not allowed while the pipeline is active")

    # control: stop keeps the daemon up, the supervisor restarts nothing, start brings the workers back
    refused_below(port, "POST", "/commands/stop", "control", {"timeout": 2})
    code, stopped = call(port, "POST", "/commands/stop", {"timeout": 2, "force": False}, token=CONTROL)
    assert code == 200 and stopped["state"] == "built" and stopped["workers"] == {}
    wait_for(lambda: status()["daemon"]["loop_iterations_total"] > stopped["daemon"]["loop_iterations_total"] + 10,
             timeout=10)
    assert status()["state"] == "built" and status()["workers"] == {}  # nothing restarted
    assert call(port, "POST", "/commands/build", token=ADMIN)[1]["state"] == "built"
    refused_below(port, "POST", "/commands/start", "control")
    assert call(port, "POST", "/commands/start", token=CONTROL)[1]["state"] == "running"
    assert call(port, "POST", "/commands/start", token=CONTROL)[0] == 409
    wait_for(lambda: status()["workers"]["stage"]["health"] == "active", timeout=20)

    # control: restart a named worker (404 for an unknown one)
    pid = status()["workers"]["stage"]["pid"]
    refused_below(port, "POST", "/commands/restart", "control", {"worker": "stage"})
    assert call(port, "POST", "/commands/restart", {"worker": "ghost"}, token=CONTROL)[0] == 404
    restarted = call(port, "POST", "/commands/restart", {"worker": "stage"}, token=CONTROL)[1]
    assert restarted["restarted"] == ["stage"]
    wait_for(lambda: status()["workers"]["stage"]["pid"] not in (pid, None), timeout=20)

    # control: synthetic inputs on a stream nothing writes
    refused_below(port, "POST", "/synthetic/start", "control", {"stream_name": "output"})
    code, answer = call(port, "POST", "/synthetic/start", {"stream_name": "output"}, token=CONTROL)
    assert code == 400 and "already written by kernel 'stage'" in answer["detail"]
    code, answer = call(port, "POST", "/synthetic/start", {"stream_name": "nope"}, token=CONTROL)
    assert code == 404
    refused_below(port, "POST", "/synthetic/stop", "control", {"stream_name": "output"})
    assert call(port, "POST", "/synthetic/stop", {"stream_name": "output"}, token=CONTROL)[1]["stream_name"] == "output"

    # admin: PUT /document applies a new pipeline live (reload machinery), revision + 1
    refused_below(port, "PUT", "/document", "admin", document["document"])
    changed = dict(document["document"], kernels=[dict(document["document"]["kernels"][0],
                                                        parameters={"factor": 3.0})])
    assert call(port, "PUT", "/document", broken, token=ADMIN)[0] == 400
    code, applied = call(port, "PUT", "/document", changed, token=ADMIN)
    assert code == 200 and applied["revision"] == 2 and applied["valid"] is True
    assert applied["document"]["kernels"][0]["parameters"] == {"factor": 3.0}
    assert call(port, "GET", "/health", token=READ)[1] == {"ok": True, "state": "running", "document_revision": 2}

    # admin: POST /document/load switches to another file; later reloads read that one
    other = write_pipeline(tmp_path / "other.yaml", namespace, parameters="{factor: 4.0}")
    refused_below(port, "POST", "/document/load", "admin", {"path": str(other)})
    assert call(port, "POST", "/document/load", {"path": str(tmp_path / "none.yaml")}, token=ADMIN)[0] == 404
    code, loaded = call(port, "POST", "/document/load", {"path": str(other)}, token=ADMIN)
    assert code == 200 and loaded["config_path"] == str(other) and loaded["revision"] == 3
    assert loaded["document"]["kernels"][0]["parameters"] == {"factor": 4.0}

    # control: reload re-reads that file (unchanged)
    refused_below(port, "POST", "/commands/reload", "control")
    reloaded = call(port, "POST", "/commands/reload", token=CONTROL)[1]
    assert reloaded == {"reloaded": False, "changed": [], "detail": "pipeline unchanged"}

    # bodies: malformed JSON, not an object, too large
    code, answer = raw_post(port, "/commands/restart", b"{worker: stage", CONTROL)
    assert code == 400 and answer["detail"].startswith("malformed JSON body")
    assert raw_post(port, "/document", b"[1, 2]", ADMIN, method="PUT")[0] == 400
    assert call(port, "POST", "/commands/restart", token=CONTROL,
                headers={"Content-Length": str(2 << 20)})[0] == 413

    # admin: shutdown stops the daemon, exit 0, nothing left
    refused_below(port, "POST", "/commands/shutdown", "admin", {})
    code, answer = call(port, "POST", "/commands/shutdown", {"unlink": True}, token=ADMIN)
    assert code == 200 and answer["shutting_down"] is True
    assert daemon.process.wait(timeout=30) == 0
    assert ADMIN not in daemon.output and CONTROL not in daemon.output
    assert "control POST /commands/pause from 127.0.0.1 (scope control)" in daemon.output
    assert segments_of(namespace) == []


def raw_post(port, path, body: bytes, token, method="POST"):
    import http.client
    import json

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, body=body, headers={"Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer


# ---------------------------------------------------------------------- events
def test_events_deliver_a_state_event_after_a_pause_and_replay_from_last_event_id(tmp_path, namespace, daemons):
    tokens = write_token_file(tmp_path / "tokens")
    daemon = daemons(write_pipeline(tmp_path / "p.yaml", namespace), namespace, tmp_path,
                     "--token-file", str(tokens))
    daemon.wait_ready()
    port = daemon.port
    assert EventReader(port).status == 401
    reader = EventReader(port, token=READ)
    assert reader.status == 200 and reader.response.getheader("Content-Type") == "text/event-stream"
    first = reader.next_event()
    assert first["event"] == "snapshot" and first["data"]["reason"] == "initial"
    assert first["data"]["snapshot"]["state"] == "running"
    assert call(port, "POST", "/commands/pause", token=CONTROL)[0] == 200
    state, before = reader.until(lambda e: e["event"] == "state")
    assert state["data"]["state"] == "paused" and state["data"]["previous"] == "running"
    command, _ = reader.until(lambda e: e["event"] == "command")
    assert command["data"]["command"] == "pause" and command["data"]["ok"] is True
    assert command["data"]["via"] == "http"
    snapshot, _ = reader.until(lambda e: e["event"] == "snapshot")
    assert snapshot["data"]["reason"] == "pause" and snapshot["data"]["snapshot"]["state"] == "paused"
    assert any(reader.response.readline().startswith(b": keepalive") for _ in range(200))  # idle: comments
    reader.close()

    # a reconnect with Last-Event-ID gets what followed that id, then the initial snapshot
    call(port, "POST", "/commands/resume", token=CONTROL)
    replay = EventReader(port, query=f"?access_token={READ}", last_event_id=state["id"])  # EventSource's way
    assert replay.status == 200
    replayed = []
    while (event := replay.next_event())["event"] != "snapshot" or event["id"] is not None:
        replayed.append(event)
    assert replayed[0]["id"] == state["id"] + 1
    assert [e["id"] for e in replayed] == list(range(state["id"] + 1, state["id"] + 1 + len(replayed)))
    assert any(e["event"] == "state" and e["data"]["state"] == "running" for e in replayed)
    replay.close()
    assert call(port, "GET", f"/status?access_token={READ}")[0] == 401  # the query token is for /events only
    assert READ not in daemon.output
    bad = EventReader(port, token=READ, last_event_id="x")
    assert bad.status == 400
