"""Real time in containers on this machine's Docker engine: the cgroup real-time budget, and which of the
documented ways of granting the privileges the engine can apply.

Two things an engine may stand in the way of, both found on the test machine:

- **RT group scheduling** (cgroup v1 and a kernel with CONFIG_RT_GROUP_SCHED):
  the kernel gives real-time tasks CPU time per cgroup, and Docker's cgroups
  get none unless dockerd runs with ``--cpu-rt-runtime``, so SCHED_FIFO is
  refused even with CAP_SYS_NICE.  ``rt_budget()`` gives the test's containers a
  cgroup parent of their own with a budget (``--cgroup-parent``,
  ``--cpu-rt-runtime``), as an operator would with dockerd's option, and
  removes it afterwards.  On cgroup v2 or without RT group scheduling it adds
  nothing.
- **Hard limits the engine cannot raise**: ``--ulimit rtprio=99`` and
  ``--ulimit memlock=-1`` make runc raise the container's hard limits, which
  needs CAP_SYS_RESOURCE; an engine that runs without it (a sandboxed one)
  refuses to start such a container.  ``engine_raises_limits()`` says which.

Everything made here is named ``shmpiped-ctest-rt-<session>``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

from .docker_support import PREFIX, SESSION, Unavailable, docker

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: What a container's real-time tasks may use of each second (its parent gets a little more).
CONTAINER_RT_RUNTIME_US = 300_000
PARENT_RT_RUNTIME_US = 350_000
#: The README's Docker flags, for the image's non-root user: the limits do the work (Docker gives
#: added capabilities to root only), the capability serves a container run as root.
DOCUMENTED_FLAGS = ("--cap-add", "SYS_NICE", "--ulimit", "rtprio=99", "--ulimit", "memlock=-1")
#: The same privileges as the root user of the container, through capabilities alone.
ROOT_FLAGS = ("--user", "0", "--cap-add", "SYS_NICE", "--cap-add", "IPC_LOCK")


def cpu_controller() -> Path | None:
    """The cgroup-v1 cpu hierarchy when this kernel schedules real time per group, else None."""
    for name in ("cpu,cpuacct", "cpu"):
        if (CGROUP_ROOT / name / "cpu.rt_runtime_us").is_file():
            return CGROUP_ROOT / name
    return None


@contextlib.contextmanager
def rt_budget():
    """``docker run`` options that give a container a real-time budget where the kernel needs one."""
    controller = cpu_controller()
    if controller is None:
        yield []
        return
    driver = docker("info", "--format", "{{.CgroupDriver}}", timeout=30).stdout.strip()
    if driver != "cgroupfs":
        raise Unavailable(f"RT group scheduling with Docker's {driver} cgroup driver: give dockerd "
                          "--cpu-rt-runtime to run real-time containers here")
    if os.geteuid() != 0:
        raise Unavailable("RT group scheduling: giving the test containers a real-time budget needs root")
    name = f"{PREFIX}-rt-{SESSION}"
    parent = controller / name
    parent.mkdir(exist_ok=True)
    try:
        (parent / "cpu.rt_runtime_us").write_text(str(PARENT_RT_RUNTIME_US))
        yield ["--cgroup-parent", f"/{name}", "--cpu-rt-runtime", str(CONTAINER_RT_RUNTIME_US)]
    finally:
        for hierarchy in CGROUP_ROOT.glob(f"*/{name}"):  # Docker made it in every controller
            for directory, _, _ in sorted(os.walk(hierarchy), key=lambda entry: -len(entry[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)


@functools.lru_cache(maxsize=None)
def engine_raises_limits(image: str) -> bool:
    """Whether the engine can start a container with the documented ``--ulimit`` flags."""
    done = docker("run", "--rm", "--network", "none", "--ulimit", "rtprio=99", "--ulimit", "memlock=-1",
                  "--entrypoint", "true", image, check=False, timeout=60)
    if done.returncode == 0:
        return True
    if "error setting rlimit" in done.stderr:
        return False
    raise RuntimeError(f"docker run --ulimit failed unexpectedly ({done.returncode}): {done.stderr}")


def privilege_flags(image: str) -> tuple[tuple[str, ...], str]:
    """The documented flags when the engine can apply them, else the root variant; and which it is."""
    if engine_raises_limits(image):
        return DOCUMENTED_FLAGS, "the documented flags, as the image's user"
    return ROOT_FLAGS, "as root with CAP_SYS_NICE and CAP_IPC_LOCK (this engine cannot raise hard limits)"


def proc_of(container: str, pid: int) -> dict:
    """Policy, rt_priority and VmLck (bytes) of ``pid`` inside ``container``, read from its /proc."""
    stat = docker("exec", container, "cat", f"/proc/{pid}/stat", timeout=30).stdout
    status = docker("exec", container, "cat", f"/proc/{pid}/status", timeout=30).stdout
    fields = stat.rsplit(")", 1)[1].split()
    locked = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmLck:"))
    return {"policy": int(fields[38]), "priority": int(fields[37]), "locked_bytes": locked * 1024}
