"""The command line as operators use it: one inherited --log-level, env twins in --help, exit 66 for a
missing input, --json results, rows printed as measured, and `ctl`/`view` finding the running daemon."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import click
import pytest
from click.testing import CliRunner

from shmpiped.cli import main

from .conftest import segments_of, wait_for
from .daemon_support import write_pipeline

SHMPIPED = [sys.executable, "-m", "shmpiped.cli"]


def shmpiped(*args, env=None, timeout=60):
    return subprocess.run([*SHMPIPED, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def every_command(group=main, path=()):
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from every_command(command, (*path, name))


# ---------------------------------------------------------------------- options and exit statuses
def test_every_environment_twin_is_shown_in_help():
    runner = CliRunner()
    checked = 0
    for path, command in [((), main), *every_command()]:
        help_text = " ".join(runner.invoke(main, [*path, "--help"], terminal_width=200).output.split())
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar and not param.hidden:
                assert f"env var: {param.envvar}" in help_text, (path, param.name)
                checked += 1
            elif isinstance(param, click.Argument) and param.envvar:  # click shows no env var of an argument
                assert f"${param.envvar}" in help_text, (path, param.name)
                checked += 1
    assert checked >= 20  # run alone has more than a dozen


def test_shm_ls_and_rm_read_the_namespace_from_the_environment(namespace, make_stream):
    make_stream("cam")  # a live owner: this test process
    listed = json.loads(shmpiped("shm", "ls", "--json", env={"SHMPIPED_NAMESPACE": namespace}).stdout)
    assert {row["namespace"] for row in listed} == {namespace} and any(row["stream"] == "cam" for row in listed)
    result = shmpiped("shm", "rm", "--json", env={"SHMPIPED_NAMESPACE": namespace})
    answer = json.loads(result.stdout)
    assert answer["removed"] == [] and f"shmpiped.{namespace}.cam" in [row["segment"] for row in answer["left"]]
    assert all(row["why"] == "its owner runs" and row["owner_pid"] == os.getpid() for row in answer["left"])
    assert result.returncode == 1  # a namespace was asked for and its segments were left


@pytest.mark.parametrize("args", [
    ("validate", "{missing}"), ("describe", "{missing}"), ("run", "{missing}"), ("doctor", "{missing}"),
    ("bench", "pipeline", "{missing}"), ("benchmark", "{missing}"), ("bench", "load", "{missing}"),
])
def test_a_missing_input_file_exits_66_naming_it(tmp_path, args):
    missing = str(tmp_path / "nope.yaml")
    result = shmpiped(*(arg.format(missing=missing) for arg in args))
    assert result.returncode == 66, result
    assert f"{missing}: no such file" in result.stdout + result.stderr


def test_validate_reports_the_missing_file_and_still_checks_the_others(tmp_path, namespace):
    good = write_pipeline(tmp_path / "good.yaml", namespace)
    result = shmpiped("validate", "--json", str(good), str(tmp_path / "gone.yaml"))
    assert result.returncode == 66
    files = json.loads(result.stdout)["files"]
    assert [f["valid"] for f in files] == [True, False] and "no such file" in files[1]["errors"][0]


def test_the_daemon_log_level_is_inherited_from_the_group_and_run_can_override_it(tmp_path, namespace):
    path = write_pipeline(tmp_path / "p.yaml", namespace)
    common = ["run", str(path), "--http-address", "none", "--duration", "1"]
    env = {"RUNTIME_DIRECTORY": str(tmp_path)}
    inherited = shmpiped("--log-level", "debug", *common, env=env)
    assert inherited.returncode == 0 and " DEBUG shmpiped.control: control socket listening" in inherited.stderr
    overridden = shmpiped("--log-level", "debug", *common, "--log-level", "warning", env=env)
    assert overridden.returncode == 0 and " DEBUG " not in overridden.stderr and " INFO " not in overridden.stderr
    from_env = shmpiped(*common, env={**env, "SHMPIPED_LOG_LEVEL": "DEBUG"})
    assert " DEBUG shmpiped.control" in from_env.stderr


def test_shell_completion_completes_commands():
    script = os.path.join(os.path.dirname(sys.executable), "shmpiped")  # the installed command, as a shell runs it
    result = subprocess.run([script], capture_output=True,
                            text=True, timeout=30, env={**os.environ, "_SHMPIPED_COMPLETE": "bash_complete",
                                                        "COMP_WORDS": "shmpiped ct", "COMP_CWORD": "1"})
    assert result.stdout.split() == ["plain,ctl"], result


def test_bench_prints_each_row_as_soon_as_it_is_measured():
    process = subprocess.Popen([*SHMPIPED, "bench", "hop", "--frames", "1500"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
        # Three more measurements of 1500 frames (over a second at 1 kHz) are still to come.
        assert first.startswith("hop ") and process.poll() is None, first
        rest = process.stdout.read().splitlines()
    finally:
        process.wait(timeout=120)
    assert process.returncode == 0 and len(rest) == 3


def test_describe_names_a_source_upstream_of_a_kernel(tmp_path, namespace):
    text = shmpiped("describe", str(write_pipeline(tmp_path / "p.yaml", namespace))).stdout
    assert "upstream=camera (source)" in next(line for line in text.splitlines() if line.startswith("- stage "))


# ---------------------------------------------------------------------- finding the running daemon
@pytest.fixture
def runtime(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    return directory


def start_in(daemons, tmp_path, runtime, namespace):
    path = write_pipeline(tmp_path / f"{namespace}.yaml", namespace)
    daemon = daemons(path, namespace, tmp_path, "--control-socket", "", env={"RUNTIME_DIRECTORY": str(runtime)})
    daemon.wait_ready()
    return daemon


def test_ctl_and_view_find_the_one_running_daemon(tmp_path, runtime, namespace, daemons):
    daemon = start_in(daemons, tmp_path, runtime, namespace)
    env = {"RUNTIME_DIRECTORY": str(runtime)}
    status = shmpiped("ctl", "status", "--json", env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["namespace"] == namespace
    paused = shmpiped("ctl", "--json", "pause", env=env)
    assert paused.returncode == 0 and json.loads(paused.stdout)["state"] == "paused"
    assert shmpiped("ctl", "resume", env=env).stdout.strip() == "resume: ok (state: running)"
    viewed = shmpiped("view", "output", "--mode", "text", "--frames", "1")
    assert viewed.returncode == 0 and viewed.stdout.startswith(f"output @ {namespace}"), viewed
    # The status line (every 0.5 s) names the output rate and where it is measured; the first lines
    # may still show the worker waiting or paused (active=0/1).
    wait_for(lambda: "workers active=1/1 failed=0, output " in daemon.output, timeout=10, describe=lambda: daemon.output)
    assert re.search(r"workers active=1/1 failed=0, output [\d.]+ Hz at stage", daemon.output), daemon.output


def test_with_several_daemons_ctl_and_view_say_which_are_running(tmp_path, runtime, namespace, daemons):
    other = f"t{uuid.uuid4().hex[:10]}"
    started = [start_in(daemons, tmp_path, runtime, namespace), start_in(daemons, tmp_path, runtime, other)]
    env = {"RUNTIME_DIRECTORY": str(runtime)}
    chosen = shmpiped("ctl", "status", env=env)
    assert chosen.returncode == 69 and "2 daemons answer" in chosen.stderr
    assert namespace in chosen.stderr and other in chosen.stderr and "--namespace" in chosen.stderr
    wrong = shmpiped("ctl", "--namespace", "nothere", "status", env=env)
    assert wrong.returncode == 69 and "control sockets answering" in wrong.stderr
    assert ", ".join(sorted((namespace, other))) in wrong.stderr
    assert shmpiped("ctl", "--namespace", other, "status", env=env).returncode == 0
    ambiguous = shmpiped("view", "output", "--mode", "text", "--frames", "1")
    assert ambiguous.returncode == 1 and "several running namespaces" in ambiguous.stderr
    missing = shmpiped("view", "nothere", "--mode", "text", "--frames", "1")
    assert missing.returncode == 1 and "running namespaces:" in missing.stderr and namespace in missing.stderr
    assert [daemon.stop() for daemon in started] == [0, 0]
    assert segments_of(other) == []
