"""The units' side of the control plane: a token for the daemon, and the console on the lab network.

deploy/systemd/control.conf hands /etc/shmpiped/token to the daemon as a systemd credential
(LoadCredential=) and names the copy in SHMPIPED_TOKEN_FILE (%d: $CREDENTIALS_DIRECTORY).  Here
it verifies with both units (``systemd-analyze verify``, which reports a bad credential source),
and, in a real systemd (tests/systemd_support.py), the daemon started by the unit reads the
copy: control requests then answer 401 without the token and succeed with it, where a daemon
without a token file answers 403.  The README's drop-in that opens the console to the lab
network verifies as well and keeps the loopback rule.
"""

from __future__ import annotations

import json

import pytest

from . import systemd_support
from .docker_support import Unavailable
from .systemd_support import (
    SERVICE,
    TEMPLATE,
    UNIT,
    UNITS,
    configure,
    new_namespace,
    readme_drop_in,
    shmpiped_executable,
    start_and_wait_active,
    systemd_analyze_verify,
    unavailable,
    unit_for_verify,
    unit_settings,
)

systemd_image, boot, machine = systemd_support.systemd_image, systemd_support.boot, systemd_support.machine

CONTROL = UNITS / "control.conf"
TOKEN_SOURCE = "/etc/shmpiped/token"
CREDENTIAL = f"/run/credentials/{UNIT}/token"
UNIT_CASES = [(SERVICE, "shmpiped.service"), (TEMPLATE, "shmpiped@lab.service")]
UNIT_IDS = ["shmpiped.service", "shmpiped@lab.service"]


def verify_with(tmp_path, unit, name: str, drop_ins: dict[str, str]):
    """``systemd-analyze verify`` of ``unit`` with ``drop_ins`` (file name -> text) in <unit>.d/."""
    try:
        unit_for_verify(unit, tmp_path, shmpiped_executable())
        directory = tmp_path / f"{unit.name}.d"
        directory.mkdir(exist_ok=True)
        for file_name, text in drop_ins.items():
            (directory / file_name).write_text(text)
        return systemd_analyze_verify(tmp_path / name)
    except Unavailable as exc:
        unavailable(str(exc))


# ---------------------------------------------------------------------- the drop-ins


def test_the_control_drop_in_hands_the_token_as_a_credential():
    settings = unit_settings(CONTROL)
    assert settings == {"LoadCredential": [f"token:{TOKEN_SOURCE}"],
                        "Environment": ["SHMPIPED_TOKEN_FILE=%d/token"]}, settings
    assert CONTROL.read_text().count("[Service]") == 1
    # The token is not a reason to widen the firewall: the units still allow loopback only.
    for unit in (SERVICE, TEMPLATE):
        assert unit_settings(unit)["IPAddressAllow"] == ["localhost"]


@pytest.mark.parametrize("unit, name", UNIT_CASES, ids=UNIT_IDS)
def test_the_control_drop_in_verifies(tmp_path, unit, name):
    done = verify_with(tmp_path, unit, name, {"control.conf": CONTROL.read_text()})
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not output, output
    # The check reads the credential line for real: a relative source is reported.
    broken = CONTROL.read_text().replace(f"token:{TOKEN_SOURCE}", "token:etc/shmpiped/token")
    done = verify_with(tmp_path, unit, name, {"control.conf": broken})
    assert 'Credential source "etc/shmpiped/token" not valid' in done.stdout + done.stderr


def test_the_readme_console_drop_in_verifies_and_keeps_loopback(tmp_path):
    text = readme_drop_in("Remote control and the web console")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "[Service]" and "Environment=SHMPIPED_HTTP_ADDRESS=0.0.0.0:9750" in lines
    # Only additions to IPAddressAllow=: an empty one would drop localhost, IPAddressDeny= the firewall.
    assert [line for line in lines if line.startswith("IPAddressAllow=")] == ["IPAddressAllow=192.0.2.0/24"]
    assert not any(line.startswith("IPAddressDeny") for line in lines)
    done = verify_with(tmp_path, SERVICE, "shmpiped.service",
                       {"console.conf": text, "control.conf": CONTROL.read_text()})
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not output, output


# ---------------------------------------------------------------------- a real systemd (PID 1)

# Run in the container by the venv's Python: POST /commands/pause without and with the token, then
# /commands/resume, against the daemon's default address.  Prints {name: status}.
HTTP_PROBE = r"""
import json, sys, urllib.error, urllib.request
token = open(sys.argv[1]).read().strip()
def post(path, token=None):
    request = urllib.request.Request("http://127.0.0.1:9750" + path, data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
print(json.dumps({"anonymous": post("/commands/pause"), "wrong": post("/commands/pause", "x" * 64),
                  "pause": post("/commands/pause", token), "resume": post("/commands/resume", token)}))
"""


def http_probe(machine, token_path: str) -> dict:
    machine.write_file("/tmp/probe.py", HTTP_PROBE)
    return json.loads(machine.exec("/opt/shmpiped/bin/python", "/tmp/probe.py", token_path).stdout)


def test_the_daemon_reads_its_token_from_the_credential(machine):
    machine.exec("sh", "-c", f"install -d -m 0755 /etc/shmpiped && (umask 077 && "
                             f"/opt/shmpiped/bin/python -c 'import secrets; print(secrets.token_hex(32))' "
                             f"> {TOKEN_SOURCE})")
    machine.exec("install", "-d", f"/etc/systemd/system/{UNIT}.d")
    machine.write_file(f"/etc/systemd/system/{UNIT}.d/control.conf", CONTROL.read_text())
    machine.systemctl("daemon-reload")
    configure(machine, SHMPIPED_NAMESPACE=new_namespace())
    start_and_wait_active(machine)
    pid = machine.show(UNIT, "MainPID")["MainPID"]
    # As the daemon's user: root in the unprivileged container may not read another uid's environ.
    environ = machine.exec("runuser", "-u", "shmpiped", "--", "cat", f"/proc/{pid}/environ").stdout.split("\0")
    assert f"SHMPIPED_TOKEN_FILE={CREDENTIAL}" in environ, environ
    # The copy: not readable by others (the daemon refuses that), readable by the unit's user
    # (systemd 252: root's, 0440, and an ACL entry for that user), the same token.
    mode = int(machine.exec("stat", "-L", "-c", "%a", CREDENTIAL).stdout, 8)
    assert not mode & 0o007 and not mode & 0o222, oct(mode)
    assert machine.exec("runuser", "-u", "shmpiped", "--", "cat", CREDENTIAL).stdout == \
        machine.exec("cat", TOKEN_SOURCE).stdout
    assert machine.exec("runuser", "-u", "nobody", "--", "cat", CREDENTIAL, check=False).returncode != 0
    # The source stays root's alone.
    assert machine.exec("stat", "-c", "%U %a", TOKEN_SOURCE).stdout.split() == ["root", "600"]
    # The daemon uses it: 401 without (403 would mean no token file), accepted with it.
    answers = http_probe(machine, TOKEN_SOURCE)
    assert answers["anonymous"] == 401 and answers["wrong"] == 401, answers
    assert answers["pause"] == 200 and answers["resume"] == 200, (answers, machine.journal(UNIT))
    machine.systemctl("stop", UNIT)
    assert machine.show(UNIT, "Result")["Result"] == "success"
    # The copy is gone with the unit.
    assert machine.exec("test", "-e", CREDENTIAL, check=False).returncode != 0


def test_without_the_drop_in_control_requests_are_refused(machine):
    configure(machine, SHMPIPED_NAMESPACE=new_namespace())
    machine.exec("sh", "-c", "install -d /etc/shmpiped && echo unused > /tmp/unused-token")
    start_and_wait_active(machine)
    answers = http_probe(machine, "/tmp/unused-token")
    assert answers == {"anonymous": 403, "wrong": 403, "pause": 403, "resume": 403}, answers
    machine.systemctl("stop", UNIT)
