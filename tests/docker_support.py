"""A real Docker engine for the tests: the helpers, locally made images, the shmpiped image's containers.

No registry is reachable from the test machine, so every image is made here, and
kept by a tag that names what went into it:

- base images (``debootstrap_image``): a minimal Debian with the packages a suite
  needs, ``docker import``-ed once per machine; the tag is derived from the recipe;
- images built on such a base (``build_cached_image``), offline, from a wheelhouse
  made on this host: shmpiped's wheel (built from a copy of the tree) and the wheels
  of its requirements for the same Python minor version as the base's.  Those wheels
  are downloaded once per machine into ``WHEEL_CACHE`` (cupy-cuda12x alone is about
  136 MB).  The tag is a digest of the base and of every file that goes in, so an
  unchanged tree reuses its image and a new one replaces the older ones.

The shmpiped image is the project's Dockerfile with its defaults, the GPU extra
(cupy-cuda12x) included, exactly as users get it, built as an air-gapped site
builds it: ``BASE_IMAGE=<the Debian base>`` and ``WHEELHOUSE=wheelhouse``.  There is
no GPU here: the image's CuPy imports, and a pipeline with GPU streams is refused.
tests/systemd_support.py builds its own image with the same functions.

Containers run through testcontainers (its reaper, Ryuk, is an image that
cannot be pulled here: it is disabled and the fixtures remove what they start).
Every image and container these tests make is named ``shmpiped-ctest...``
(containers with a per-session suffix); nothing else on the engine is touched.

When Docker cannot be used the tests skip with the reason, except under
``CI=true``, where they fail: CI installs and starts the engine
(``.ci/install-docker.sh``), so a skip there would hide a broken setup.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from . import conftest

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

REPO = Path(__file__).resolve().parent.parent
SESSION = uuid.uuid4().hex[:8]
PREFIX = "shmpiped-ctest"

# The shmpiped image's base: Debian bookworm (python3.11, as on the test machine), minbase plus Python.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_RECIPE_VERSION = 1  # bump when the base recipe (debootstrap_image) changes: the tag is derived from it
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Third-party wheels, one folder per Python and requirement list; delete it to pick up newer releases.
WHEEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shmpiped-tests" / "wheels"

# What shmpiped's wheel is built from, and what the Dockerfile's build context needs besides.
WHEEL_SOURCES = ("pyproject.toml", "setup.py", "README.md", "shmpiped")
CONTEXT_FILES = ("Dockerfile", ".dockerignore", "docker", *WHEEL_SOURCES)
SKIPPED = ("__pycache__", ".pyc", ".so")  # build products of the checkout, never copied or hashed


class Unavailable(Exception):
    """A tool these tests need cannot be used here; the message says why."""


unavailable = functools.partial(conftest.unavailable, suite="container tests")


def run(command: list[str], *, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run ``command``, capturing its output; on failure raise with that output."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    except FileNotFoundError:
        raise Unavailable(f"{command[0]} is not installed (.ci/install-*.sh install it)") from None
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def docker(*args: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return run(["docker", *args], timeout=timeout, check=check, **kwargs)


def check_engine() -> None:
    if shutil.which("docker") is None:
        raise Unavailable("the docker command is not installed (.ci/install-docker.sh installs it)")
    try:
        info = docker("info", "--format", "{{json .ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        raise Unavailable("`docker info` did not answer within 30 s") from None
    if info.returncode != 0 or info.stdout.strip() in ("", '""'):
        raise Unavailable(f"no Docker engine answers (`docker info`: {info.stderr.strip()[-300:]}); "
                          "start one with .ci/install-docker.sh")


def check_testcontainers() -> None:
    try:
        import testcontainers  # noqa: F401
    except ImportError:
        raise Unavailable("the testcontainers package is missing (pip install -e '.[test]')") from None


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False, timeout=30).returncode == 0


@contextlib.contextmanager
def machine_lock(name: str):
    """One ``name`` build at a time on this machine (two test sessions may start together)."""
    with open(Path(tempfile.gettempdir()) / f"shmpiped-tests-{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------- base images


def debootstrap_image(repository: str, packages: Iterable[str], *, command: str = "/bin/bash",
                      recipe_version: int = 1, suite: str = "bookworm") -> str:
    """Debian ``suite`` (minbase plus ``packages``) made by debootstrap, imported as ``repository:TAG``.

    Built once per machine and kept: the tag is derived from the recipe, so later sessions find
    it.  The tag does not hash ``command``: bump ``recipe_version`` when it changes.
    """
    packages = sorted(packages)
    recipe = json.dumps([suite, packages, recipe_version, "minbase"])
    tag = f"{repository}:{suite}-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"
    if image_exists(tag):
        return tag
    with machine_lock("debootstrap"):
        if image_exists(tag):  # another session built it while we waited
            return tag
        if shutil.which("debootstrap") is None:
            raise Unavailable("debootstrap is not installed (.ci/install-docker.sh installs it)")
        if os.geteuid() != 0:
            raise Unavailable(f"building {tag} with debootstrap needs root")
        mirror = os.environ.get("SHMPIPED_TEST_DEBIAN_MIRROR", DEFAULT_MIRROR)
        with tempfile.TemporaryDirectory(prefix="shmpiped-tests-rootfs-") as scratch:
            rootfs = Path(scratch) / "rootfs"
            log = Path(scratch) / "debootstrap.log"
            with open(log, "w") as out:
                done = subprocess.run(
                    ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(rootfs),
                     mirror], stdout=out, stderr=subprocess.STDOUT, timeout=1200)
            if done.returncode != 0:  # most often: the Debian mirror is out of reach
                raise Unavailable(f"debootstrap of {tag} failed ({done.returncode}; mirror {mirror}, "
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
                 "--change", f"CMD {json.dumps([command])}",
                 "-", tag], stdin=tar.stdout, capture_output=True, text=True, timeout=600)
            tar.stdout.close()
            tar.wait()
            if imported.returncode != 0 or tar.returncode != 0:
                raise RuntimeError(f"docker import failed: {imported.stderr}")
    return tag


def build_base_image() -> str:
    """The shmpiped image's base: Debian with Python."""
    return debootstrap_image(f"{PREFIX}-base", BASE_PACKAGES, recipe_version=BASE_RECIPE_VERSION)


def require_host_python(image: str) -> None:
    """The wheels built on this host must suit ``image``'s Python."""
    image_python = docker("run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c",
                          "import sys; print('%d.%d' % sys.version_info[:2])", timeout=60).stdout.strip()
    host_python = "%d.%d" % sys.version_info[:2]
    if image_python != host_python:
        raise Unavailable(f"{image} has Python {image_python} but the host wheels are for {host_python}: "
                          f"run the tests with python{image_python}")


# ---------------------------------------------------------------------- images built on a base


def source_files(*names: str) -> list[Path]:
    """The files of ``names`` (files or folders of the checkout), relative to it, in a stable order."""
    found = []
    for name in names:
        path = REPO / name
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found += [p.relative_to(REPO) for p in paths if not any(part.endswith(SKIPPED) for part in p.parts)]
    return found


def copy_sources(names: Iterable[str], destination: Path) -> None:
    for relative in source_files(*names):
        (destination / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, destination / relative)


def content_tag(repository: str, base: str, names: Iterable[str]) -> str:
    """``repository:DIGEST`` of the base, this Python and the files of ``names``."""
    digest = hashlib.sha256(f"{base}\0{sys.version_info[:2]}\0".encode())
    for relative in source_files(*names):
        digest.update(str(relative).encode() + b"\0" + (REPO / relative).read_bytes() + b"\0")
    return f"{repository}:{digest.hexdigest()[:12]}"


def project_requirements(*extras: str) -> list[str]:
    """shmpiped's dependencies (and those of ``extras``) as pyproject.toml declares them."""
    import tomllib  # Python 3.11+, as the images' Python; imported here so that 3.10 can still collect

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(r for extra in extras for r in project["optional-dependencies"][extra])]


def pip(*args: str) -> None:
    run([sys.executable, "-m", "pip", *args], timeout=900, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def cached_wheels(requirements: list[str]) -> Path:
    """Wheels of ``requirements`` and their dependencies for this Python, downloaded once per machine."""
    key = hashlib.sha256(json.dumps([sys.version_info[:2], sorted(requirements)]).encode()).hexdigest()[:12]
    folder = WHEEL_CACHE / f"py{sys.version_info[0]}.{sys.version_info[1]}-{key}"
    with machine_lock("wheels"):
        if not folder.is_dir():
            WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=WHEEL_CACHE))
            try:
                pip("wheel", "-q", "--only-binary=:all:", "--wheel-dir", str(partial), *requirements)
            except BaseException:
                shutil.rmtree(partial)
                raise
            partial.rename(folder)  # complete or absent
    return folder


def build_wheelhouse(wheelhouse: Path, scratch: Path, extras: tuple[str, ...] = ()) -> None:
    """shmpiped's wheel (built from a copy of the tree: the checkout is not touched) and its requirements'."""
    copy_sources(WHEEL_SOURCES, scratch / "source")
    pip("wheel", "-q", "--no-deps", "--wheel-dir", str(wheelhouse), str(scratch / "source"))
    for wheel in cached_wheels(project_requirements(*extras)).glob("*.whl"):
        shutil.copy2(wheel, wheelhouse / wheel.name)


def build_cached_image(tag: str, make_context: Callable[[Path], Path], build_args: dict[str, str]) -> str:
    """``docker build`` of the context that ``make_context(scratch)`` makes, unless ``tag`` exists.

    ``tag`` names the content (``content_tag``): a new image replaces the older ones of its
    repository.  The legacy builder keeps every step as an untagged image; those the image does
    not stand on (the builder stage's) are removed, as they would only pile up.
    """
    if image_exists(tag):
        return tag
    with machine_lock("image-build"):
        if image_exists(tag):
            return tag
        with tempfile.TemporaryDirectory(prefix="shmpiped-tests-context-") as scratch:
            context = make_context(Path(scratch))
            log = Path(scratch) / "docker-build.log"
            args = [f"--build-arg={name}={value}" for name, value in build_args.items()]
            with open(log, "w") as out:
                done = subprocess.run(
                    ["docker", "build", "--force-rm", "--tag", tag, "--label", f"{tag.split(':')[0]}=test-image",
                     *args, str(context)], stdout=out, stderr=subprocess.STDOUT, timeout=1200)
            output = log.read_text()
        for layer in reversed(re.findall(r"^ ---> ([0-9a-f]{12})$", output, flags=re.MULTILINE)):
            untagged = docker("image", "inspect", "--format", "{{len .RepoTags}}", layer, check=False, timeout=30)
            if untagged.stdout.strip() == "0":
                docker("image", "rm", layer, check=False, timeout=120)  # refused for the image's own parents
        if done.returncode != 0:
            raise RuntimeError(f"docker build of {tag} failed ({done.returncode}):\n{output[-5000:]}")
        remove_older_images(tag)
    return tag


def remove_older_images(keep: str) -> None:
    """Earlier images of ``keep``'s repository (a tree that has changed since), unless a container uses them."""
    repository = keep.split(":")[0]
    listed = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository, check=False, timeout=30)
    for tag in listed.stdout.split():
        if tag != keep and tag.startswith(f"{repository}:"):
            docker("image", "rm", tag, check=False, timeout=120)


# ---------------------------------------------------------------------- the shmpiped image


def git(*args: str) -> str | None:
    """``git args`` in the checkout, or None where it is not a git checkout (an sdist, say)."""
    try:
        done = run(["git", "-C", str(REPO), *args], check=False, timeout=30)
    except Unavailable:
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def oci_build_args() -> dict[str, str]:
    """The Dockerfile's OCI label arguments as a release build passes them (its header comment).

    VERSION is pyproject.toml's, REVISION ``git rev-parse HEAD``, SOURCE the ``origin`` remote
    (else the checkout as a file URL).  CREATED is the commit's time, in UTC, rather than the
    build's: the same commit gives the same arguments, so its cached image is reused.
    """
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    revision = git("rev-parse", "HEAD")
    committed = git("log", "-1", "--format=%ct")
    created = (datetime.datetime.fromtimestamp(int(committed), datetime.timezone.utc) if committed
               else datetime.datetime.now(datetime.timezone.utc))
    return {"VERSION": version, "REVISION": revision or "unknown",
            "CREATED": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "SOURCE": git("remote", "get-url", "origin") or REPO.as_uri()}


#: The build arguments each shmpiped image tag was made with (``build_image``).
IMAGE_BUILD_ARGS: dict[str, dict[str, str]] = {}


def build_image(base: str) -> str:
    """The project's Dockerfile on ``base`` with its defaults (GPU=1: cupy-cuda12x), offline, labelled
    with ``oci_build_args()``; the arguments it was built with are ``IMAGE_BUILD_ARGS[tag]``."""

    def make_context(scratch: Path) -> Path:
        require_host_python(base)
        context = scratch / "context"
        copy_sources(CONTEXT_FILES, context)
        build_wheelhouse(context / "wheelhouse", scratch, extras=("gpu",))
        return context

    build_args = {"BASE_IMAGE": base, "WHEELHOUSE": "wheelhouse", **oci_build_args()}
    # The arguments are part of the tag: a new commit relabels (rebuilds) the image.
    tag = content_tag(PREFIX, json.dumps(build_args, sort_keys=True), CONTEXT_FILES)
    IMAGE_BUILD_ARGS[tag] = build_args
    return build_cached_image(tag, make_context, build_args)


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


def logs(container, stdout: bool = True, stderr: bool = True) -> str:
    return container.get_wrapped_container().logs(stdout=stdout, stderr=stderr).decode(errors="replace")


#: conftest.wait_for, polling Docker less often.
wait_until = functools.partial(conftest.wait_for, interval=0.2)


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
