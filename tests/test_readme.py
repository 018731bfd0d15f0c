"""The README's first command, verbatim, as a new user runs it: from the root of a fresh clone,
into a fresh virtual environment (a non-editable install), until the daemon answers /readyz."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from .conftest import segments_of, unavailable, wait_for
from .daemon_support import free_port

ROOT = Path(__file__).resolve().parents[1]


def readme_command(heading: str) -> str:
    """The first ```sh block after the paragraph that starts with ``heading``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(heading)
    block = re.search(r"```sh\n(.*?)\n```", text[start:], re.S)
    return block.group(1).strip()


def fresh_clone(target: Path) -> Path:
    """What `git clone` of this working tree would hold: tracked and untracked-but-not-ignored files."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        unavailable("needs git and a git checkout of shmpiped", "README first command")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_the_readmes_first_command_runs_the_demo_from_the_root_of_a_fresh_clone(tmp_path):
    command = readme_command("Run the daemon on its embedded demo pipeline")
    assert command == "python3 -m pip install . && shmpiped run"
    clone = fresh_clone(tmp_path / "shmpiped")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    namespace, port = f"readme{uuid.uuid4().hex[:8]}", free_port()
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
           # Only what the README's environment twins allow: a port, namespace and socket of the test's own,
           # so a daemon already running on this machine is not disturbed.
           "SHMPIPED_HTTP_ADDRESS": f"127.0.0.1:{port}", "SHMPIPED_NAMESPACE": namespace,
           "SHMPIPED_CONTROL_SOCKET": str(tmp_path / "control.sock")}
    env.pop("PYTHONPATH", None)
    log_path = tmp_path / "readme-command.log"
    with open(log_path, "w") as log:
        shell = subprocess.Popen(["bash", "-c", command], cwd=clone, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: ready(port) or shell.poll() is not None, timeout=600, interval=0.5)
        assert shell.poll() is None, log_path.read_text()[-4000:]
        installed = subprocess.run([str(venv / "bin" / "python3"), "-c", "import shmpiped; print(shmpiped.__file__)"],
                                   cwd=tmp_path, capture_output=True, text=True).stdout
        assert str(venv) in installed  # the daemon runs the installed package, not the clone's source
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGTERM)  # the group of the shell this test started
        deadline = time.monotonic() + 30
        while shell.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    assert shell.returncode == 0, log_path.read_text()[-4000:]
    assert segments_of(namespace) == []
