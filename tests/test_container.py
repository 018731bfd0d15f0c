"""The container image, run in a real Docker engine.

The image is built from the project's Dockerfile with its defaults, so with the
GPU extra (cupy-cuda12x) as users get it, on a locally made Debian base (no
registry is reachable), offline, from a wheelhouse built on this host: see
tests/docker_support.py.  One image serves every test.  There is no GPU here, as
on most CI machines: the image's CuPy imports, and a pipeline with GPU streams
is refused with exit 78; everything else runs on the CPU.  Without a usable
engine these tests skip, and fail under CI=true.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import run_python, segments_of
from .daemon_support import metric_value
from .docker_support import (
    IMAGE_BUILD_ARGS,
    REPO,
    Containers,
    Unavailable,
    build_base_image,
    build_image,
    check_engine,
    check_testcontainers,
    docker,
    host_port,
    inspect,
    logs,
    oci_build_args,
    unavailable,
    wait_healthy,
    wait_until,
)

STOP_GRACE_S = 10
CONTAINER_UID = 10001


@pytest.fixture(scope="session")
def shmpiped_image():
    """The image, built once per tree and kept (see tests/docker_support.py)."""
    try:
        check_engine()
        check_testcontainers()
        return build_image(build_base_image())
    except Unavailable as exc:
        unavailable(str(exc))


@pytest.fixture
def containers(shmpiped_image):
    started = Containers(shmpiped_image)
    yield started
    # A running container is stopped the way `docker stop` does it, so that its daemon removes its
    # segments (with --ipc=host they are the host's); then everything this test started is removed.
    for container in started.started:
        try:
            if inspect(container)["State"]["Running"]:
                container.get_wrapped_container().stop(timeout=STOP_GRACE_S)
        except Exception:  # noqa: BLE001 - removal below is what matters
            pass
    started.remove_all()


def exec_in(container, *command: str) -> str:
    result = docker("exec", container.get_wrapped_container().id, *command, timeout=60)
    return result.stdout


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def write_pipeline(path, text: str):
    path.write_text(textwrap.dedent(text))
    path.chmod(0o644)  # read by the container's non-root user
    return path


def host_io_pipeline(path, namespace):
    """Host writes `input`, the container doubles it into `output`; its own camera advances."""
    return write_pipeline(path, f"""\
        namespace: {namespace}
        shared_memory:
          - {{name: input, shape: [4], dtype: float32}}
          - {{name: output, shape: [4], dtype: float32}}
          - {{name: camera, shape: [8, 8], dtype: float32}}
          - {{name: camera_offset, shape: [8, 8], dtype: float32}}
        sources:
          - name: synthetic_camera
            kind: synthetic.array
            stream: camera
            parameters: {{pattern: ramp, rate_hz: 100}}
        kernels:
          - name: double
            kind: cpu.scale
            input: input
            output: output
            read_timeout: 0.2
            parameters: {{factor: 2.0}}
          - name: offset
            kind: cpu.add_constant
            input: camera
            output: camera_offset
            read_timeout: 0.2
            parameters: {{constant: 1000.0}}
        """)


def failing_pipeline(path):
    return write_pipeline(path, """\
        namespace: broken
        shared_memory:
          - {name: input, shape: [4], dtype: float32}
          - {name: output, shape: [4], dtype: float32}
        sources:
          - {name: camera, kind: synthetic.array, stream: input, parameters: {pattern: ramp, rate_hz: 100}}
        kernels:
          - name: stage
            kind: cpu.raise_error
            input: input
            output: output
            read_timeout: 0.2
            parameters: {message: always broken}
        """)


# ---------------------------------------------------------------------- the image


def test_image_metadata(shmpiped_image):
    config = json.loads(docker("image", "inspect", shmpiped_image).stdout)[0]["Config"]
    assert config["User"] == f"{CONTAINER_UID}:{CONTAINER_UID}"
    assert config["Entrypoint"] == ["/usr/local/bin/shmpiped-entrypoint"]
    assert config["Cmd"] == ["run"]
    assert "9750/tcp" in config["ExposedPorts"]
    assert config["StopSignal"] == "SIGTERM"
    assert config["Healthcheck"]["Test"][0] == "CMD"  # exec form: no shell needed in the image
    assert any("healthcheck.py" in part for part in config["Healthcheck"]["Test"])
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["SHMPIPED_HTTP_ADDRESS"] == "0.0.0.0:9750"
    assert env["SHMPIPED_CONTROL_SOCKET"] == "/run/shmpiped/control.sock"


def test_image_carries_the_oci_labels_it_was_built_with(shmpiped_image):
    """The build arguments VERSION, REVISION, CREATED, SOURCE and BASE_IMAGE become the OCI labels."""
    passed = IMAGE_BUILD_ARGS[shmpiped_image]
    labels = json.loads(docker("image", "inspect", shmpiped_image).stdout)[0]["Config"]["Labels"]
    oci = {key.removeprefix("org.opencontainers.image."): value for key, value in labels.items()
           if key.startswith("org.opencontainers.image.")}
    assert oci == {
        "title": "shmpiped", "description": "Real-time shared-memory pipeline daemon", "licenses": "MIT",
        "version": passed["VERSION"], "revision": passed["REVISION"], "created": passed["CREATED"],
        "source": passed["SOURCE"], "base.name": passed["BASE_IMAGE"],
    }
    # What was passed is what a release build passes: the package's version, a commit, RFC 3339 UTC.
    from shmpiped import __version__

    assert oci["version"] == __version__
    assert re.fullmatch(r"[0-9a-f]{40}", oci["revision"]), oci["revision"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", oci["created"]), oci["created"]
    created = datetime.datetime.strptime(oci["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc) < created
    assert created <= datetime.datetime.now(datetime.timezone.utc)


def test_the_documented_release_build_passes_the_same_labels():
    """The Dockerfile header's build command, run in the checkout, gives what the tests' build passes."""
    header = (REPO / "Dockerfile").read_text().split("\nARG ", 1)[0]
    commands = dict(re.findall(r'--build-arg (\w+)="\$\((.+)\)"', header))
    assert set(commands) == {"VERSION", "REVISION", "CREATED", "SOURCE"}, commands
    expected = oci_build_args()
    for name in ("VERSION", "REVISION"):
        done = subprocess.run(commands[name], shell=True, cwd=REPO, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stdout.strip() == expected[name], (name, done)
    done = subprocess.run(commands["CREATED"], shell=True, capture_output=True, text=True, timeout=30)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", done.stdout.strip()), done


def test_embedded_demo_becomes_healthy_and_is_scraped_from_the_host(containers):
    container = containers.start("demo", ports=True)
    state = wait_healthy(container)
    assert state["Health"]["Log"][-1]["ExitCode"] == 0
    port = host_port(container)

    def scraped():
        code, text = http_get(port, "/metrics")
        return code == 200 and metric_value(text, "shmpiped_worker_frames_total", worker="clip") and text

    text = wait_until(scraped, 30, describe=lambda: logs(container))
    assert metric_value(text, "shmpiped_pipeline_state", state="running") == 1.0
    assert metric_value(text, "shmpiped_worker_frames_total", worker="centroid") > 0
    wait_until(lambda: http_get(port, "/readyz")[0] == 200, 30, describe=lambda: http_get(port, "/readyz"))
    status = json.loads(http_get(port, "/status")[1])
    assert status["namespace"] == "demo" and status["daemon"]["config_path"] is not None

    # The daemon runs as the image's non-root user, and `shmpiped ctl` reaches it over the
    # control socket the image configures.
    assert exec_in(container, "id", "-u").strip() == str(CONTAINER_UID)
    ctl = json.loads(exec_in(container, "shmpiped", "ctl", "status", "--json"))
    assert ctl["state"] == "running", ctl
    assert set(ctl["workers"]) == {"centroid", "flatten", "reconstruct", "integrate", "clip"}


def test_runs_as_another_user(containers):
    # `docker run --user UID:GID`, e.g. the host user who reads the streams: the daemon still
    # creates its control socket in the image's /run/shmpiped.
    container = containers.start("user", user="12345:12345", health_interval_s=None,
                                 command=["run", "--duration", "2"])
    assert container.get_wrapped_container().wait(timeout=60)["StatusCode"] == 0, logs(container)
    assert "control socket at /run/shmpiped/control.sock" in logs(container)


def test_ipc_host_shares_streams_with_host_processes(tmp_path, namespace, containers):
    pipeline = host_io_pipeline(tmp_path / "pipeline.yaml", namespace)
    container = containers.start("ipc", pipeline=pipeline, ipc_host=True)
    wait_healthy(container)
    wait_until(lambda: f"shmpiped.{namespace}.camera_offset" in os.listdir("/dev/shm"), 30,
               describe=lambda: logs(container))
    # The segments are in the host's /dev/shm, created by the container's user.
    assert os.stat(f"/dev/shm/shmpiped.{namespace}.camera").st_uid == CONTAINER_UID

    # A separate process on the host: reads frames the container's source and worker write, and
    # writes the input that the container's worker consumes.
    result = run_python(textwrap.dedent("""\
        import json, sys, time
        import numpy as np
        import shmpiped

        namespace = sys.argv[1]
        camera = shmpiped.attach("camera_offset", namespace=namespace)
        first_count, first = camera.count, camera.read()
        count = first_count
        for _ in range(10):
            count = camera.wait(count, timeout=5)
        last = camera.read()
        inp = shmpiped.attach("input", namespace=namespace)
        out = shmpiped.attach("output", namespace=namespace)
        results = []
        for value in ([1, 2, 3, 4], [0.5, -1, 10, 100], [7, 7, 7, 7]):
            before = out.count
            inp.write(np.asarray(value, dtype=np.float32))
            out.wait(before, timeout=5)
            results.append(out.read().tolist())
        for stream in (camera, inp, out):
            stream.close()
        print(json.dumps({"first_count": first_count, "count": count, "first_min": float(first.min()),
                          "changed": bool((first != last).any()), "results": results}))
        """), namespace, timeout=60)
    report = json.loads(result.stdout)
    assert report["count"] >= report["first_count"] + 10
    assert report["changed"] and report["first_min"] >= 1000.0  # the offset worker's output
    assert report["results"] == [[2, 4, 6, 8], [1, -2, 20, 200], [14, 14, 14, 14]]


@pytest.mark.parametrize("init", [False, True], ids=["daemon-as-pid-1", "docker-init"])
def test_docker_stop_exits_0_and_removes_the_segments(namespace, containers, init):
    # The embedded demo (five workers), in the test's namespace, sharing the host's /dev/shm.
    container = containers.start("stop", ipc_host=True, init=init, env={"SHMPIPED_NAMESPACE": namespace})
    wait_healthy(container)
    wait_until(lambda: len(segments_of(namespace)) >= 10, 30, describe=lambda: str(segments_of(namespace)))
    pid1 = exec_in(container, "cat", "/proc/1/cmdline").replace("\0", " ")
    assert ("init" in pid1) if init else ("shmpiped run" in pid1), pid1

    wrapped = container.get_wrapped_container()
    began = time.monotonic()
    wrapped.stop(timeout=STOP_GRACE_S)
    elapsed = time.monotonic() - began
    state = inspect(container)["State"]
    output = logs(container)
    assert state["ExitCode"] == 0 and not state["OOMKilled"], output
    assert elapsed < STOP_GRACE_S, f"docker stop took {elapsed:.1f} s (SIGKILL after {STOP_GRACE_S} s)"
    assert "stopping: SIGTERM" in output and "stopped" in output
    assert segments_of(namespace) == []


def test_failed_pipeline_exits_70_and_the_restart_policy_brings_it_back(tmp_path, containers):
    pipeline = failing_pipeline(tmp_path / "pipeline.yaml")
    container = containers.start(
        "restart", pipeline=pipeline, health_interval_s=None,
        env={"SHMPIPED_RESTART_BUDGET": 1, "SHMPIPED_BACKOFF_INITIAL": 0.05},
        restart={"Name": "on-failure", "MaximumRetryCount": 1})

    def exhausted():  # one run, one restart by Docker, then the retry count is spent
        state = inspect(container)
        return state if state["State"]["Status"] == "exited" and state["RestartCount"] >= 1 else None

    attrs = wait_until(exhausted, 90, interval=0.5, describe=lambda: f"{inspect(container)['State']}\n"
                                                                     f"{logs(container)}")
    assert attrs["RestartCount"] == 1
    assert attrs["State"]["ExitCode"] == 70
    output = logs(container)
    assert output.count("pipeline failed beyond its restart budget") == 2, output
    assert "always broken" in output


def test_invalid_yaml_exits_78(tmp_path, containers):
    pipeline = write_pipeline(tmp_path / "pipeline.yaml", "namespace: x\nshared_memory: [\n  {name: a\n")
    container = containers.start("invalid", pipeline=pipeline, health_interval_s=None)
    assert container.get_wrapped_container().wait(timeout=60)["StatusCode"] == 78
    assert "invalid configuration" in logs(container)
    assert "/etc/shmpiped/pipeline.yaml" in logs(container)
    # Any other subcommand goes through the same entrypoint: `docker run IMAGE validate FILE`.
    check = containers.start("validate", pipeline=pipeline, health_interval_s=None,
                             command=["validate", "/etc/shmpiped/pipeline.yaml"])
    assert check.get_wrapped_container().wait(timeout=60)["StatusCode"] == 78


# ---------------------------------------------------------------------- the GPU extra, with no GPU


def test_cupy_imports_as_the_non_root_user(containers):
    probe = ("import json, os, cupy; "
             "print(json.dumps({'uid': os.getuid(), 'version': cupy.__version__, 'path': cupy.__file__}))")
    container = containers.start("cupy", health_interval_s=None, command=["python", "-c", probe])
    assert container.get_wrapped_container().wait(timeout=60)["StatusCode"] == 0, logs(container)
    report = json.loads(logs(container, stderr=False))
    assert report["uid"] == CONTAINER_UID
    assert int(report["version"].split(".")[0]) >= 13, report
    assert report["path"].startswith("/opt/shmpiped/"), report


def test_gpu_pipeline_without_a_gpu_exits_78(tmp_path, containers):
    # As `docker run` on a host with no GPU (or without --gpus all): CuPy is there, no device is.
    pipeline = write_pipeline(tmp_path / "pipeline.yaml", """\
        namespace: gpu
        shared_memory:
          - {name: frames, shape: [4], dtype: float32, storage: gpu, gpu_device: "cuda:0"}
          - {name: copied, shape: [4], dtype: float32, storage: gpu, gpu_device: "cuda:0"}
        kernels:
          - {name: copy, kind: gpu.copy, input: frames, output: copied}
        """)
    container = containers.start("gpu", pipeline=pipeline, health_interval_s=None)
    status = container.get_wrapped_container().wait(timeout=60)["StatusCode"]
    stderr = logs(container, stdout=False)
    assert status == 78, f"exit {status}:\n{logs(container)}"
    assert "no CUDA device is usable" in stderr, stderr


# ---------------------------------------------------------------------- real time (issue 13)
# The README's `docker run` flags grant what a pipeline's realtime block needs; the worker's policy,
# priority and locked memory are read back from /proc inside the container.  tests/realtime_support.py
# gives the containers a real-time cgroup budget where the kernel schedules real time per cgroup, and
# says which way of granting the privileges this engine can apply.

RT_PIPELINE = """\
    namespace: rt
    realtime: {policy: fifo, priority: 50, lock_memory: true, required: true}
    shared_memory:
      - {name: frames, shape: [16], dtype: float32}
      - {name: scaled, shape: [16], dtype: float32}
      - {name: commands, shape: [16], dtype: float32}
    sources:
      - {name: camera, kind: synthetic.array, stream: frames, parameters: {pattern: ramp, rate_hz: 200}}
    kernels:
      - {name: scale, kind: cpu.scale, input: frames, output: scaled, parameters: {factor: 2.0}}
      - {name: offset, kind: cpu.add_constant, input: scaled, output: commands, parameters: {constant: 1.0},
         realtime: {priority: 60}}
    """
RT_PRIORITIES = {"scale": 50, "offset": 60}
SCHED_FIFO = 1


class DockerRun:
    """`docker run` with literal command-line flags (as the README writes them); removes what it starts."""

    def __init__(self, image: str, rt_options: list[str]):
        self.image, self.rt_options, self.names = image, rt_options, []

    def start(self, label: str, *options: str, pipeline=None, command: tuple[str, ...] = ()) -> str:
        from .docker_support import container_name

        name = container_name(label)
        self.names.append(name)
        mount = ("--volume", f"{pipeline}:/etc/shmpiped/pipeline.yaml:ro") if pipeline else ()
        docker("run", "--detach", "--name", name, "--network", "none", *mount, *options, self.image, *command,
               timeout=60)
        return name

    def wait(self, name: str, timeout: float = 60) -> int:
        return int(docker("wait", name, timeout=timeout).stdout.strip())

    def logs(self, name: str) -> str:
        done = docker("logs", name, check=False, timeout=30)
        return done.stdout + done.stderr

    def status(self, name: str) -> dict | None:
        done = docker("exec", name, "shmpiped", "ctl", "status", "--json", check=False, timeout=30)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def remove_all(self) -> None:
        for name in self.names:
            docker("rm", "--force", "--volumes", name, check=False, timeout=60)


@pytest.fixture
def realtime_docker(shmpiped_image):
    from .realtime_support import rt_budget

    budget = rt_budget()
    try:
        rt_options = budget.__enter__()
    except Unavailable as exc:
        unavailable(str(exc))
    runner = DockerRun(shmpiped_image, rt_options)
    try:
        yield runner
    finally:
        runner.remove_all()  # first: the budget's cgroup can only go once its containers have
        budget.__exit__(None, None, None)


def running_workers(run: DockerRun, name: str) -> dict:
    def ready():
        status = run.status(name)
        workers = (status or {}).get("workers", {})
        return workers if workers and all(w.get("pid") and w.get("health") in ("active", "waiting-input")
                                          for w in workers.values()) else None

    return wait_until(ready, 60, interval=0.5, describe=lambda: run.logs(name))


def assert_real_time(run: DockerRun, name: str, priorities: dict[str, int]) -> None:
    from .realtime_support import proc_of

    workers = running_workers(run, name)
    assert set(workers) == set(priorities)
    for worker, priority in priorities.items():
        kernel = proc_of(name, workers[worker]["pid"])  # the kernel's view, inside the container
        assert (kernel["policy"], kernel["priority"]) == (SCHED_FIFO, priority), (worker, kernel, run.logs(name))
        assert kernel["locked_bytes"] > 64 << 20, (worker, kernel)
        effective = workers[worker]["realtime"]["effective"]  # and what status() reports agrees with it
        assert (effective["policy"], effective["priority"]) == ("fifo", priority)


def test_the_documented_docker_flags_are_the_ones_shipped():
    """The README, the compose example and the daemon's own error text name the flags tested below."""
    import yaml

    from shmpiped.realtime import fixes

    from .realtime_support import DOCUMENTED_FLAGS

    flags = " ".join(DOCUMENTED_FLAGS)
    repo = Path(__file__).resolve().parent.parent
    assert flags in (repo / "README.md").read_text() and flags in fixes()
    service = yaml.safe_load((repo / "deploy" / "docker-compose.yml").read_text())["services"]["shmpiped"]
    as_flags = [*(f"--cap-add {c}" for c in service["cap_add"]),
                *(f"--ulimit {name}={value}" for name, value in service["ulimits"].items())]
    assert " ".join(as_flags) == flags


def test_real_time_worker_runs_sched_fifo_with_locked_memory(tmp_path, realtime_docker):
    from .realtime_support import privilege_flags

    run = realtime_docker
    flags, how = privilege_flags(run.image)
    pipeline = write_pipeline(tmp_path / "pipeline.yaml", RT_PIPELINE)
    name = run.start("rt", *flags, *run.rt_options, pipeline=pipeline)
    try:
        assert_real_time(run, name, RT_PRIORITIES)
    except AssertionError as exc:
        raise AssertionError(f"granted {how}: {exc}") from None
    docker("stop", "--time", str(STOP_GRACE_S), name, timeout=STOP_GRACE_S + 30)
    assert run.wait(name) == 0, run.logs(name)


def test_without_the_privileges_a_required_pipeline_exits_78(tmp_path, realtime_docker):
    run = realtime_docker
    pipeline = write_pipeline(tmp_path / "pipeline.yaml", RT_PIPELINE)
    name = run.start("rt-none", pipeline=pipeline)
    assert run.wait(name) == 78, run.logs(name)
    output = run.logs(name)
    assert "realtime.required is true" in output and "CAP_SYS_NICE" in output and "RLIMIT_RTPRIO" in output
    assert "--cap-add SYS_NICE --ulimit rtprio=99 --ulimit memlock=-1" in output, output


def test_doctor_in_the_container(tmp_path, realtime_docker):
    from .realtime_support import cpu_controller, privilege_flags

    run = realtime_docker

    def doctor(*options: str, pipeline=None) -> tuple[int, dict]:
        name = run.start("doctor", *options, pipeline=pipeline, command=("doctor", "--json"))
        status = run.wait(name)
        report = json.loads(docker("logs", name, timeout=30).stdout)
        return status, {f["name"]: f for f in report["findings"]}

    # No privileges, and Docker's cgroups (where the kernel schedules real time per group) have no budget.
    status, found = doctor()
    assert status == 1 and found["scheduling-privileges"]["status"] == "problem"
    assert found["memory-lock-privileges"]["status"] == "problem"
    budget = found["rt-group-budget"]
    assert budget["status"] == ("problem" if cpu_controller() else "not applicable"), budget
    # With the fix: what the pipeline needs is there.
    flags, how = privilege_flags(run.image)
    status, found = doctor(*flags, *run.rt_options)
    for check in ("scheduling-privileges", "memory-lock-privileges"):
        assert found[check]["status"] == "ok", (how, found[check])
    assert found["rt-group-budget"]["status"] == ("ok" if cpu_controller() else "not applicable")
    # The container's 64 MB /dev/shm against a pipeline that needs more.
    big = write_pipeline(tmp_path / "big.yaml", "namespace: big\nshared_memory:\n"
                         "  - {name: a, shape: [4096, 4096], dtype: float32}\n"
                         "  - {name: b, shape: [4096, 4096], dtype: float32}\n"
                         "kernels:\n  - {name: k, kind: cpu.copy, input: a, output: b}\n")
    status, found = doctor(pipeline=big)
    assert found["dev-shm"]["status"] == "problem" and "--shm-size" in found["dev-shm"]["fix"], found["dev-shm"]


def test_the_charts_real_time_security_context_in_docker(tmp_path, realtime_docker):
    """The pod the Helm chart renders with realtime.enabled, as Docker runs it: its user, capabilities,
    no privilege escalation, read-only root with the pod's volumes, environment and pipeline."""
    import shutil

    import yaml

    helm = shutil.which("helm")
    if helm is None:
        unavailable("helm not installed: run .ci/install-helm.sh")
    chart = Path(__file__).resolve().parent.parent / "helm" / "shmpiped"
    rendered = subprocess.run([helm, "template", "lab", str(chart), "-f", str(chart / "ci" / "realtime-values.yaml")],
                              capture_output=True, text=True, timeout=60, check=True).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    [main] = pod["containers"]
    context = main["securityContext"]
    pipeline = write_pipeline(tmp_path / "pipeline.yaml", next(
        o for o in objects if o["kind"] == "ConfigMap")["data"]["pipeline.yaml"])
    options = ["--user", f"{context['runAsUser']}:{context['runAsGroup']}",
               *[f"--cap-drop={c}" for c in context["capabilities"]["drop"]],
               *[f"--cap-add={c}" for c in context["capabilities"]["add"]]]
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    options += ["--security-opt", "no-new-privileges", "--read-only"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in main["volumeMounts"]:
        if "emptyDir" in volumes[mount["name"]] and mount["mountPath"] != "/dev/shm":
            options += ["--tmpfs", f"{mount['mountPath']}:mode=1777"]
    options += ["--shm-size", "256m"]  # the dev-shm emptyDir's sizeLimit
    for variable in main["env"]:
        if "value" in variable:
            options += ["--env", f"{variable['name']}={variable['value']}"]
    name = realtime_docker.start("helm-rt", *options, *realtime_docker.rt_options, pipeline=pipeline)
    assert_real_time(realtime_docker, name, {"centroid": 50, "gain": 60})
    assert docker("exec", name, "id", "-u", timeout=30).stdout.strip() == "0"
    caps = docker("exec", name, "grep", "CapEff", "/proc/1/status", timeout=30).stdout.split()[1]
    assert int(caps, 16) == (1 << 23) | (1 << 14), caps  # CAP_SYS_NICE and CAP_IPC_LOCK, nothing else
