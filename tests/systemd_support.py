"""systemd for the unit tests: ``systemd-analyze verify``, and a real systemd as PID 1 in Docker.

``systemd-analyze verify`` checks that a unit's ExecStart= binary exists, so the
units are verified through a temporary copy whose ExecStart= names the
``shmpiped`` of this interpreter's environment (the shipped units name
``/usr/local/bin/shmpiped``).

The container test boots ``/lib/systemd/systemd`` as PID 1 in an unprivileged
container (``--cgroupns=host``, the host's ``/sys/fs/cgroup`` mounted
read-write, tmpfs on ``/run``, ``/run/lock`` and ``/tmp``).  No registry is
reachable, so its image is made here, in two steps, both cached by tag:

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

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "deploy" / "systemd"
TEST_IMAGE = UNITS / "test-image"
PREFIX = "shmpiped-systest"
SESSION = uuid.uuid4().hex[:8]

BASE_SUITE = "bookworm"
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates")
BASE_RECIPE_VERSION = 1  # bump when the base recipe changes: the tag is derived from it
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LOCK = Path(tempfile.gettempdir()) / "shmpiped-systest-image.lock"
RUNTIME_DEPENDENCIES = ("numpy>=1.24", "pyyaml>=6.0", "click>=8.1", "prometheus-client>=0.17")
# What the shmpiped wheel is built from (the tag of the test image hashes these too).
WHEEL_SOURCES = ("pyproject.toml", "setup.py", "README.md", "shmpiped")


class Unavailable(Exception):
    """A tool these tests need cannot be used here; the message says why."""


def unavailable(reason: str):
    """Skip with ``reason``, or fail under CI=true, where .ci/install-systemd.sh provides everything."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"systemd tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"systemd tests: {reason}")


def run(command: list[str], *, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    except FileNotFoundError:
        raise Unavailable(f"{command[0]} is not installed (.ci/install-systemd.sh installs it)") from None
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


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


# ---------------------------------------------------------------------- Docker


def docker(*args: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return run(["docker", *args], timeout=timeout, check=check, **kwargs)


def check_engine() -> None:
    if shutil.which("docker") is None:
        raise Unavailable("the docker command is not installed (.ci/install-systemd.sh installs docker.io)")
    try:
        info = docker("info", "--format", "{{json .ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        raise Unavailable("`docker info` did not answer within 30 s") from None
    if info.returncode != 0 or info.stdout.strip() in ("", '""'):
        raise Unavailable(f"no Docker engine answers (`docker info`: {info.stderr.strip()[-300:]}); "
                          "start one with .ci/install-systemd.sh")


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False, timeout=30).returncode == 0


@contextlib.contextmanager
def machine_lock():
    """One image build at a time on this machine (two sessions may start together)."""
    with open(LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def base_image_tag() -> str:
    recipe = json.dumps([BASE_SUITE, sorted(BASE_PACKAGES), BASE_RECIPE_VERSION, "minbase"])
    return f"{PREFIX}-base:{BASE_SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"


def build_base_image() -> str:
    """Debian with systemd and Python, made by debootstrap (kept: later sessions find it by tag)."""
    tag = base_image_tag()
    if image_exists(tag):
        return tag
    with machine_lock():
        if image_exists(tag):
            return tag
        if shutil.which("debootstrap") is None:
            raise Unavailable("debootstrap is not installed (.ci/install-systemd.sh installs it)")
        if os.geteuid() != 0:
            raise Unavailable("building the systemd base image with debootstrap needs root")
        mirror = os.environ.get("SHMPIPED_TEST_DEBIAN_MIRROR", DEFAULT_MIRROR)
        with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-rootfs-") as scratch:
            rootfs = Path(scratch) / "rootfs"
            log = Path(scratch) / "debootstrap.log"
            with open(log, "w") as out:
                done = subprocess.run(
                    ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                     BASE_SUITE, str(rootfs), mirror], stdout=out, stderr=subprocess.STDOUT, timeout=1200)
            if done.returncode != 0:  # most often: the Debian mirror is out of reach
                raise Unavailable(f"debootstrap of the systemd base image failed ({done.returncode}; mirror "
                                  f"{mirror}, SHMPIPED_TEST_DEBIAN_MIRROR overrides it):\n{log.read_text()[-2000:]}")
            for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for entry in (rootfs / cache).glob("*"):
                    if entry.is_file():
                        entry.unlink()
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(
                ["docker", "import",
                 "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "--change", "ENV LANG=C.UTF-8",
                 "--change", 'CMD ["/lib/systemd/systemd"]',
                 "-", tag], stdin=tar.stdout, capture_output=True, text=True, timeout=600)
            tar.stdout.close()
            tar.wait()
            if imported.returncode != 0 or tar.returncode != 0:
                raise RuntimeError(f"docker import failed: {imported.stderr}")
    return tag


def _tree_digest(digest, root: Path, relative: Path) -> None:
    path = root / relative
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if child.name == "__pycache__" or child.suffix in (".pyc", ".so"):
                continue
            _tree_digest(digest, root, relative / child.name)
    elif path.is_file():
        digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")


def image_tag_for(base: str) -> str:
    """The test image's tag: a digest of its base, the wheel's sources and deploy/systemd/."""
    digest = hashlib.sha256(f"{base}\0{sys.version_info[:2]}\0{RUNTIME_DEPENDENCIES}\0".encode())
    for relative in (*WHEEL_SOURCES, "deploy/systemd"):
        _tree_digest(digest, REPO, Path(relative))
    return f"{PREFIX}:{digest.hexdigest()[:12]}"


def build_wheelhouse(wheelhouse: Path, scratch: Path) -> None:
    """shmpiped's wheel (built from a copy of the tree, so the checkout is not touched) and its deps."""
    source = scratch / "source"
    source.mkdir()
    for relative in WHEEL_SOURCES:
        path = REPO / relative
        if path.is_dir():
            shutil.copytree(path, source / relative,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        else:
            shutil.copy2(path, source / relative)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for args in (["wheel", "-q", "--no-deps", "--wheel-dir", str(wheelhouse), str(source)],
                 ["wheel", "-q", "--only-binary=:all:", "--wheel-dir", str(wheelhouse), *RUNTIME_DEPENDENCIES]):
        done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env,
                              timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def build_test_image() -> str:
    """The image the systemd container runs (see the module docstring); cached by content."""
    base = build_base_image()
    tag = image_tag_for(base)
    if image_exists(tag):
        return tag
    with machine_lock():
        if image_exists(tag):
            return tag
        base_python = docker("run", "--rm", "--network", "none", base, "python3", "-c",
                             "import sys; print('%d.%d' % sys.version_info[:2])", timeout=60).stdout.strip()
        host_python = "%d.%d" % sys.version_info[:2]
        if base_python != host_python:
            raise Unavailable(f"the systemd test image has Python {base_python}, the host wheels would be for "
                              f"{host_python}: run these tests with python{base_python}")
        with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-context-") as scratch:
            scratch = Path(scratch)
            context = scratch / "context"
            shutil.copytree(TEST_IMAGE, context, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            units = context / "units"
            units.mkdir()
            for unit in UNITS.iterdir():
                if unit.is_file():
                    shutil.copy2(unit, units / unit.name)
            build_wheelhouse(context / "wheelhouse", scratch)
            log = scratch / "docker-build.log"
            with open(log, "w") as out:
                done = subprocess.run(
                    ["docker", "build", "--force-rm", "--rm", "--tag", tag, "--label", f"{PREFIX}=test-image",
                     "--build-arg", f"BASE_IMAGE={base}", str(context)],
                    stdout=out, stderr=subprocess.STDOUT, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"docker build of the systemd test image failed:\n{log.read_text()[-5000:]}")
        remove_older_test_images(keep=tag)
    return tag


def remove_older_test_images(keep: str) -> None:
    """Earlier test images of this module (a tree that has changed since): only ours, never in use."""
    listed = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", PREFIX, check=False, timeout=30)
    for tag in listed.stdout.split():
        if tag != keep and tag.startswith(f"{PREFIX}:"):
            docker("image", "rm", tag, check=False, timeout=120)  # refused while a container uses it


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

