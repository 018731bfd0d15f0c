"""A real Docker engine for the container tests: the base image, the shmpiped image, containers.

No registry is reachable from the test machine, so the base image is made here:
``debootstrap`` a minimal Debian with Python, ``docker import`` it (once per
machine, cached by tag).  The shmpiped image is then built from the project's
own Dockerfile with ``BASE_IMAGE=<that base>`` and an offline wheelhouse built
on the host (shmpiped's wheel and its dependencies, for the same Python minor
version as the base's), exactly as an air-gapped site would build it.

Containers run through testcontainers (its reaper, Ryuk, is an image that
cannot be pulled here: it is disabled and the fixtures remove what they start).
Every image and container these tests make is named ``shmpiped-ctest...``
with a per-session suffix; nothing else on the engine is touched.

When Docker cannot be used the tests skip with the reason, except under
``CI=true``, where they fail: CI installs and starts the engine
(``.ci/install-docker.sh``), so a skip there would hide a broken setup.
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
import tempfile
import time
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

REPO = Path(__file__).resolve().parent.parent
SESSION = uuid.uuid4().hex[:8]
PREFIX = "shmpiped-ctest"

# The base image: Debian bookworm (python3.11, as on the test machine), minbase plus Python.
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_RECIPE_VERSION = 1  # bump when the recipe below changes: the tag is derived from it
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BUILD_LOCK = Path(tempfile.gettempdir()) / "shmpiped-ctest-base.lock"

# What the image build needs from the source tree (the rest of the tree is not copied).
CONTEXT_IGNORE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.pyc", "*.so", "*.egg-info", "build", "dist", ".venv", "wheelhouse",
    ".pytest_cache", ".ruff_cache", ".benchmarks", ".mypy_cache", "helm", "deploy", "tests", "docs", ".ci")
RUNTIME_DEPENDENCIES = ("numpy>=1.24", "pyyaml>=6.0", "click>=8.1", "prometheus-client>=0.17")


class DockerUnavailable(Exception):
    """Docker (or something the image build needs) cannot be used here; the message says why."""


def unavailable(reason: str):
    """Skip with ``reason``, or fail under CI=true, where the engine must be there."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"container tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"container tests need a usable Docker engine: {reason}")


def docker(*args: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run the docker CLI; on failure raise with its output."""
    try:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    except FileNotFoundError:
        raise DockerUnavailable("the docker command is not installed (.ci/install-docker.sh installs it)") from None
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def check_engine() -> None:
    if shutil.which("docker") is None:
        raise DockerUnavailable("the docker command is not installed (.ci/install-docker.sh installs it)")
    try:
        info = docker("info", "--format", "{{json .ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        raise DockerUnavailable("`docker info` did not answer within 30 s") from None
    if info.returncode != 0 or not info.stdout.strip() or info.stdout.strip() == '""':
        raise DockerUnavailable(f"no Docker engine answers (`docker info`: {info.stderr.strip()[-300:]}); "
                                "start one with .ci/install-docker.sh")
    try:
        import testcontainers  # noqa: F401
    except ImportError:
        raise DockerUnavailable("the testcontainers package is missing (pip install -e '.[test]')") from None


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False, timeout=30).returncode == 0


@contextlib.contextmanager
def machine_lock(path: Path = BUILD_LOCK):
    """One base-image build at a time on this machine (two test sessions may start together)."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------- the base image


def base_image_tag() -> str:
    recipe = json.dumps([BASE_SUITE, sorted(BASE_PACKAGES), BASE_RECIPE_VERSION, "minbase"])
    return f"{PREFIX}-base:{BASE_SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"


def build_base_image() -> str:
    """The Debian base (built once per machine and kept: later sessions find it by its tag)."""
    tag = base_image_tag()
    if image_exists(tag):
        return tag
    with machine_lock():
        if image_exists(tag):  # another session built it while we waited
            return tag
        if shutil.which("debootstrap") is None:
            raise DockerUnavailable("debootstrap is not installed (.ci/install-docker.sh installs it)")
        if os.geteuid() != 0:
            raise DockerUnavailable("building the base image with debootstrap needs root")
        mirror = os.environ.get("SHMPIPED_TEST_DEBIAN_MIRROR", DEFAULT_MIRROR)
        with tempfile.TemporaryDirectory(prefix="shmpiped-ctest-rootfs-") as scratch:
            rootfs = Path(scratch) / "rootfs"
            log = Path(scratch) / "debootstrap.log"
            with open(log, "w") as out:
                done = subprocess.run(
                    ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                     BASE_SUITE, str(rootfs), mirror], stdout=out, stderr=subprocess.STDOUT, timeout=900)
            if done.returncode != 0:  # most often: the Debian mirror is out of reach
                raise DockerUnavailable(f"debootstrap of the base image failed ({done.returncode}; mirror {mirror}, "
                                        f"SHMPIPED_TEST_DEBIAN_MIRROR overrides it):\n{log.read_text()[-2000:]}")
            for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for entry in (rootfs / cache).glob("*"):
                    if entry.is_file():
                        entry.unlink()
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(
                ["docker", "import",
                 "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "--change", "ENV LANG=C.UTF-8",
                 "--change", 'CMD ["/bin/bash"]',
                 "-", tag], stdin=tar.stdout, capture_output=True, text=True, timeout=600)
            tar.stdout.close()
            tar.wait()
            if imported.returncode != 0 or tar.returncode != 0:
                raise RuntimeError(f"docker import failed: {imported.stderr}")
    return tag


def python_version_of(image: str) -> str:
    return docker("run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c",
                  "import sys; print('%d.%d' % sys.version_info[:2])", timeout=60).stdout.strip()


# ---------------------------------------------------------------------- the shmpiped image


def prepare_context(directory: Path) -> Path:
    """A build context as a user makes it: the project, plus wheelhouse/ built on this host."""
    context = directory / "context"
    shutil.copytree(REPO, context, ignore=CONTEXT_IGNORE)
    wheelhouse = context / "wheelhouse"
    wheelhouse.mkdir()
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for args in (["wheel", "-q", "--no-deps", "--wheel-dir", str(wheelhouse), str(context)],
                 ["wheel", "-q", "--only-binary=:all:", "--wheel-dir", str(wheelhouse), *RUNTIME_DEPENDENCIES]):
        done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env,
                              timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    shutil.rmtree(context / "build", ignore_errors=True)
    return context


BUILT_LAYERS: list[str] = []  # intermediate images of this session's build (the legacy builder keeps them)


def build_image(base: str, directory: Path) -> str:
    """``docker build`` of the project's Dockerfile on ``base``, offline, CPU only."""
    host_python = "%d.%d" % sys.version_info[:2]
    base_python = python_version_of(base)
    if base_python != host_python:
        raise DockerUnavailable(f"the base image has Python {base_python} but the host wheels are for "
                                f"{host_python}: run the tests with python{base_python}")
    context = prepare_context(directory)
    tag = f"{PREFIX}:{SESSION}"
    log = directory / "docker-build.log"
    with open(log, "w") as out:
        done = subprocess.run(
            ["docker", "build", "--force-rm", "--file", str(context / "Dockerfile"), "--tag", tag,
             "--label", f"shmpiped.test-session={SESSION}",
             "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "WHEELHOUSE=wheelhouse",
             "--build-arg", "GPU=0", str(context)],
            stdout=out, stderr=subprocess.STDOUT, timeout=900)
    output = log.read_text()
    BUILT_LAYERS.extend(re.findall(r"^ ---> ([0-9a-f]{12})$", output, flags=re.MULTILINE))
    if done.returncode != 0:
        remove_image(tag)
        raise RuntimeError(f"docker build failed ({done.returncode}):\n{output[-5000:]}")
    return tag


def remove_image(tag: str) -> None:
    """Remove the session's image and the untagged intermediate images its build left.

    The legacy builder keeps the builder stage's images as its cache; an unchanged source
    would reuse them, but the wheel's bytes change with the build directory, so they would
    only pile up.  Tagged images (the base) are never touched.
    """
    docker("image", "rm", tag, check=False, timeout=120)
    for layer in reversed(BUILT_LAYERS):
        tags = docker("image", "inspect", "--format", "{{len .RepoTags}}", layer, check=False, timeout=30)
        if tags.returncode == 0 and tags.stdout.strip() == "0":
            docker("image", "rm", layer, check=False, timeout=120)
    BUILT_LAYERS.clear()


# ---------------------------------------------------------------------- containers


def container_name(label: str) -> str:
    return f"{PREFIX}-{SESSION}-{label}-{uuid.uuid4().hex[:6]}"


class Containers:
    """Starts containers of one image through testcontainers and removes every one of them."""

    def __init__(self, image: str):
        self.image = image
        self.started = []

    def start(self, label: str, *, pipeline: Path | None = None, env: dict | None = None,
              ports: bool = False, ipc_host: bool = False, init: bool = False, health_interval_s: float | None = 1.0,
              restart: dict | None = None, command: str | list | None = None, user: str | None = None):
        from testcontainers.core.container import DockerContainer

        container = DockerContainer(self.image, name=container_name(label))
        if pipeline is not None:
            container.with_volume_mapping(str(pipeline), "/etc/shmpiped/pipeline.yaml", "ro")
        for key, value in (env or {}).items():
            container.with_env(key, str(value))
        if ports:
            container.with_bind_ports(9750, None)
        kwargs = {}
        if ipc_host:
            kwargs["ipc_mode"] = "host"
        if init:
            kwargs["init"] = True
        if restart is not None:
            kwargs["restart_policy"] = restart
        if user is not None:
            kwargs["user"] = user
        if health_interval_s is not None:
            # Only the timing: the test itself and its timeout stay the image's HEALTHCHECK.
            kwargs["healthcheck"] = {"interval": int(health_interval_s * 1e9), "start_period": int(30e9)}
        if kwargs:
            container.with_kwargs(**kwargs)
        if command is not None:
            container.with_command(command)
        self.started.append(container)
        container.start()
        return container

    def remove_all(self) -> None:
        for container in self.started:
            with contextlib.suppress(Exception):
                container.get_wrapped_container().remove(force=True, v=True)
        self.started.clear()


def inspect(container) -> dict:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    return wrapped.attrs


def logs(container) -> str:
    return container.get_wrapped_container().logs().decode(errors="replace")


def wait_until(predicate, timeout: float, interval: float = 0.2, describe=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not reached within {timeout} s. {describe()}")


def wait_healthy(container, timeout: float = 60.0) -> dict:
    def healthy():
        state = inspect(container)["State"]
        if state["Status"] != "running":
            raise AssertionError(f"container is {state['Status']} (exit {state['ExitCode']}):\n{logs(container)}")
        return state if state.get("Health", {}).get("Status") == "healthy" else None

    return wait_until(healthy, timeout, describe=lambda: f"health: {inspect(container)['State'].get('Health')}\n"
                                                         f"{logs(container)}")


def host_port(container, port: int = 9750) -> int:
    return int(container.get_exposed_port(port))
