"""systemd for the unit tests: ``systemd-analyze verify``, and a real systemd as PID 1 in Docker.

``systemd-analyze verify`` checks that a unit's ExecStart= binary exists, so the
units are verified through a temporary copy whose ExecStart= names the
``shmpiped`` of this interpreter's environment (the shipped units name
``/usr/local/bin/shmpiped``).

The container test boots ``/lib/systemd/systemd`` as PID 1 in an unprivileged
container (``--cgroupns=host``, the host's ``/sys/fs/cgroup`` mounted
read-write, tmpfs on ``/run``, ``/run/lock`` and ``/tmp``).  No registry is
reachable, so its image is made here, in two steps, both cached by tag, with the
Docker helpers of tests/docker_support.py:

- the base: ``debootstrap`` of Debian bookworm (Python 3.11, as on the test
  machine) with systemd, dbus and Python, ``docker import``-ed (once per
  machine);
- the test image, ``deploy/systemd/test-image/Dockerfile`` on that base: shmpiped
  installed offline into ``/opt/shmpiped`` from a wheelhouse built on this host,
  the ``shmpiped`` system user, the unit files and the test pipelines.  Its tag
  is a hash of everything that goes into it, so an unchanged tree reuses it;
  older test images of this module are removed when a new one is built.

Everything these tests create is named ``shmpiped-systest...``; nothing else on
the engine is touched.  Without Docker or systemd-analyze the tests skip with
the reason, except under ``CI=true``, where they fail (CI installs both with
``.ci/install-systemd.sh``).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest

from . import docker_support
from .docker_support import (
    REPO,
    SESSION,
    WHEEL_SOURCES,
    Unavailable,
    build_cached_image,
    build_wheelhouse,
    check_engine,
    content_tag,
    debootstrap_image,
    docker,
    require_host_python,
    run,
)

UNITS = REPO / "deploy" / "systemd"
SERVICE = UNITS / "shmpiped.service"
TEMPLATE = UNITS / "shmpiped@.service"
DROP_IN = UNITS / "realtime.conf"
UNIT = "shmpiped.service"
PREFIX = "shmpiped-systest"
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates")
BASE_RECIPE_VERSION = 1  # bump when the base recipe changes: the tag is derived from it

unavailable = functools.partial(docker_support.unavailable, suite="systemd tests")


# ---------------------------------------------------------------------- systemd-analyze verify


def shmpiped_executable() -> str:
    """The ``shmpiped`` console script of the environment running the tests."""
    candidates = [Path(sysconfig.get_path("scripts")) / "shmpiped", Path(sys.executable).parent / "shmpiped"]
    found = next((str(p) for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)
    found = found or shutil.which("shmpiped")
    if found is None:
        raise Unavailable("the shmpiped command is not installed (pip install -e .)")
    return found


def unit_for_verify(unit: Path, directory: Path, executable: str, name: str | None = None) -> Path:
    """A copy of ``unit`` in ``directory`` (named ``name``) whose ExecStart= runs ``executable``."""
    text = unit.read_text()
    rewritten, count = re.subn(r"^(ExecStart=[-@:+!]*)/usr/local/bin/shmpiped\b", rf"\g<1>{executable}",
                               text, flags=re.MULTILINE)
    assert count == 1, f"{unit.name}: expected one ExecStart=/usr/local/bin/shmpiped line"
    target = directory / (name or unit.name)
    target.write_text(rewritten)
    return target


def systemd_analyze_verify(*paths: Path) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        raise Unavailable("systemd-analyze is not installed (.ci/install-systemd.sh installs systemd)")
    # --man=no: the units name no man pages; the check would need man-db.
    return run(["systemd-analyze", "verify", "--man=no", *map(str, paths)], check=False, timeout=60,
               env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""})


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Key -> [values]`` of a unit file (keys may repeat; sections are not kept apart)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def readme_drop_in(title: str) -> str:
    """The ```ini block under the README section ``title`` (deploy/systemd/README.md)."""
    text = (UNITS / "README.md").read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```ini\n(.*?)```", section, flags=re.DOTALL).group(1)


def exposure(unit: Path) -> float:
    """``systemd-analyze security --offline=true`` of ``unit`` (and of the drop-ins in ``<unit>.d/`` next
    to it): the overall exposure level, 0.0 (locked down) to 10.0 (no sandbox)."""
    try:
        done = run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit.name], check=False,
                   timeout=60, cwd=unit.parent, env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""})
    except Unavailable:
        raise Unavailable("systemd-analyze is not installed (.ci/install-systemd.sh installs systemd)") from None
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    if found is None and "offline" in done.stderr:
        raise Unavailable(f"this systemd-analyze cannot score units offline (needs systemd 250+): {done.stderr}")
    assert found, done.stdout + done.stderr
    return float(found.group(1))


# ---------------------------------------------------------------------- the image


def build_base_image() -> str:
    """Debian with systemd and Python, made by debootstrap (kept: later sessions find it by tag)."""
    return debootstrap_image(f"{PREFIX}-base", BASE_PACKAGES, command="/lib/systemd/systemd",
                             recipe_version=BASE_RECIPE_VERSION)


def build_test_image() -> str:
    """The image the systemd container runs (see the module docstring); cached by content."""
    base = build_base_image()

    def make_context(scratch: Path) -> Path:
        require_host_python(base)
        context = scratch / "context"
        shutil.copytree(UNITS / "test-image", context, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        units = context / "units"
        units.mkdir()
        for unit in UNITS.iterdir():
            if unit.is_file():
                shutil.copy2(unit, units / unit.name)
        build_wheelhouse(context / "wheelhouse", scratch)
        return context

    tag = content_tag(PREFIX, base, (*WHEEL_SOURCES, "deploy/systemd"))
    return build_cached_image(tag, make_context, {"BASE_IMAGE": base})


# ---------------------------------------------------------------------- a systemd container


class SystemdContainer:
    """A container whose PID 1 is systemd; ``docker exec`` runs systemctl and friends in it."""

    # Unprivileged: no --privileged, no added capability, the engine's default limits (the unit's
    # LimitMEMLOCK=infinity becomes the closest value they allow).  --network none keeps each
    # container's 127.0.0.1:9750 its own.
    RUN_OPTIONS = ("--cgroupns=host", "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                   "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
                   "--env", "container=docker", "--network", "none",
                   "--stop-signal", "SIGRTMIN+3")

    def __init__(self, image: str, label: str, extra_options: tuple[str, ...] = ()):
        self.image = image
        self.extra_options = tuple(extra_options)
        self.name = f"{PREFIX}-{SESSION}-{label}-{uuid.uuid4().hex[:6]}"
        self.started = False

    def start(self, boot_timeout: float = 90.0) -> SystemdContainer:
        self.started = True  # from here on remove() removes it, even if `docker run` fails half-way
        docker("run", "--detach", "--name", self.name, "--label", f"{PREFIX}.session={SESSION}",
               *self.RUN_OPTIONS, *self.extra_options, self.image, "/lib/systemd/systemd", timeout=60)
        deadline = time.monotonic() + boot_timeout
        state = ""
        while time.monotonic() < deadline:
            done = self.exec("systemctl", "is-system-running", check=False, timeout=30)
            state = done.stdout.strip()
            if state in ("running", "degraded"):
                return self
            if not self.running():
                break
            time.sleep(0.3)
        raise AssertionError(f"systemd in {self.name} did not finish booting (state {state!r}):\n"
                             f"{self.logs()}\n{self.exec('systemctl', '--failed', '--no-pager', check=False).stdout}")

    def running(self) -> bool:
        done = docker("inspect", "--format", "{{.State.Running}}", self.name, check=False, timeout=30)
        return done.stdout.strip() == "true"

    def logs(self) -> str:
        done = docker("logs", "--tail", "200", self.name, check=False, timeout=30)
        return done.stdout + done.stderr

    def remove(self) -> None:
        if self.started:
            docker("rm", "--force", "--volumes", self.name, check=False, timeout=60)
            self.started = False

    def exec(self, *command: str, check: bool = True, timeout: float = 60,
             stdin: str | None = None) -> subprocess.CompletedProcess:
        args = ["exec", *(["--interactive"] if stdin is not None else []), self.name, *command]
        return docker(*args, check=check, timeout=timeout, input=stdin)

    def write_file(self, path: str, text: str) -> None:
        self.exec("sh", "-c", 'cat > "$1"', "sh", path, stdin=text)

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.exec("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        done = self.systemctl("show", unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    def processes(self, uid: str) -> dict[str, str]:
        """``pid -> parent pid`` of every process of ``uid`` in the container."""
        script = ('for s in /proc/[0-9]*/status; do awk \'/^Pid:/{p=$2} /^PPid:/{pp=$2} /^Uid:/{u=$2} '
                  'END{print p, pp, u}\' "$s" 2>/dev/null; done')
        rows = [line.split() for line in self.exec("sh", "-c", script).stdout.splitlines()]
        return {row[0]: row[1] for row in rows if len(row) == 3 and row[2] == uid}

    def journal(self, unit: str, lines: int = 80) -> str:
        done = self.exec("journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines), "-u", unit,
                         check=False)
        return done.stdout + done.stderr

    def wait_for(self, unit: str, predicate, timeout: float = 60.0, interval: float = 0.2,
                 properties=("ActiveState", "SubState", "Result", "NRestarts", "ExecMainStatus",
                             "StatusText", "MainPID")) -> dict[str, str]:
        """Poll ``systemctl show`` until ``predicate(props)`` holds; fail with the journal otherwise."""
        deadline = time.monotonic() + timeout
        props: dict[str, str] = {}
        while time.monotonic() < deadline:
            props = self.show(unit, *properties)
            if predicate(props):
                return props
            time.sleep(interval)
        raise AssertionError(f"{unit} did not get there within {timeout} s; last: {props}\n{self.journal(unit)}")



# ---------------------------------------------------------------------- fixtures and helpers of the tests


@pytest.fixture(scope="module")
def systemd_image():
    try:
        check_engine()
        return build_test_image()
    except Unavailable as exc:
        unavailable(str(exc))


@pytest.fixture
def boot(systemd_image, request):
    """Boots systemd containers for one test (``boot(*docker_run_options)``) and removes them after it."""
    started = []

    def boot(*options: str) -> SystemdContainer:
        container = SystemdContainer(systemd_image, request.node.name.replace("[", "-").strip("]")[:40], options)
        started.append(container)
        return container.start()

    try:
        yield boot
    finally:
        for container in started:
            container.remove()


@pytest.fixture
def machine(boot):
    """A booted systemd container of its own, unprivileged."""
    return boot()


def new_namespace() -> str:
    return f"st{uuid.uuid4().hex[:8]}"


def configure(machine: SystemdContainer, **env: str) -> None:
    """Write /etc/default/shmpiped (the unit's EnvironmentFile=)."""
    machine.write_file("/etc/default/shmpiped", "".join(f"{k}={v}\n" for k, v in env.items()))


def start_and_wait_active(machine: SystemdContainer, unit: str = UNIT, timeout: float = 60) -> dict:
    machine.systemctl("start", unit, timeout=timeout + 30)  # returns when READY=1 arrived
    return machine.wait_for(unit, lambda p: p["ActiveState"] == "active", timeout=5)


def segments(machine: SystemdContainer, namespace: str) -> list[str]:
    done = machine.exec("sh", "-c", f"ls /dev/shm | grep '^shmpiped\\.{namespace}' || true")
    return done.stdout.split()
