"""Hostile pipeline files: ``shmpiped validate`` answers 0 or 78 for any of them, in bounded time and memory.

Each case writes one file (an alias bomb, deep nesting, a NUL byte, a 5000-digit
integer, a 50 MB file, operations that nest 20,000 levels or sum 50,000 terms,
names too long for /dev/shm or the segment headers ...) and runs the real
``shmpiped validate`` in a subprocess whose address space is limited to
``MEMORY_LIMIT`` and whose run time is limited to ``TIMEOUT_S``.  It must exit
78 with a short message naming the file and the field at fault (or exit 0 for
the valid file over a huge stream).  The name-limit cases also go through
``shmpiped run``, which must exit 78 and leave nothing in /dev/shm.

``HOSTILE_CASES`` is also what the hostile-input table of issue 12 is measured
over (``python3 -m tests.test_hostile_inputs DIR`` writes the files to DIR).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from shmpiped import config_limits as limits
from shmpiped.config import PipelineConfig
from shmpiped.config_entries import plain_data
from shmpiped.errors import ConfigValidationError
from shmpiped.shm import layout

from .conftest import segments_of

SHMPIPED = [sys.executable, "-m", "shmpiped.cli"]
MEMORY_LIMIT = 1 << 30  # 1 GiB of address space for the whole validating process
TIMEOUT_S = 120  # proves "bounded" only: every case takes seconds
DAEMON_ARGS = ["--http-address", "none", "--control-socket", "none", "--duration", "5"]


@dataclass(frozen=True)
class Case:
    """One hostile file: its text, the exit status wanted, and what the message must say."""

    name: str
    text: str | bytes
    status: int = 78
    says: tuple[str, ...] = ()   # case-insensitive fragments the message must contain
    line: int | None = None      # the line the message must name
    runs: bool = False           # also checked through `shmpiped run`


def _streams(*entries: str) -> str:
    return "shared_memory:\n" + "".join(f"  - {entry}\n" for entry in entries)


def pipeline(namespace: str = "hostile", *, input_name: str = "input", kernel: str = "stage",
             kind: str = "cpu.copy", shape: str = "[4]", extra: str = "") -> str:
    """A small valid pipeline; the arguments put a hostile value in one place."""
    return (
        f"namespace: {namespace}\n"
        + _streams(f"{{name: {input_name}, shape: {shape}, dtype: float32}}",
                   f"{{name: output, shape: {shape}, dtype: float32}}")
        + "kernels:\n"
        f"  - name: {kernel}\n    kind: {kind}\n    input: {input_name}\n    output: output\n{extra}"
    )


def anchors(levels: int, indent: int, width: int = 10) -> str:
    """``levels`` anchored lists, each of ``width`` aliases of the one before: width**levels leaves."""
    pad = " " * indent
    lines = [f"{pad}l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"{pad}l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def operation(text: str) -> str:
    return f"    operation: '{text}'\n"


def custom(namespace: str, op: str, shape: str = "[4]") -> str:
    return pipeline(namespace, kind="cpu.custom_operation", shape=shape, extra=operation(op))


def hostile_cases(namespace: str = "hostile") -> list[Case]:
    """Every hostile file, for ``namespace`` (the name-limit cases derive theirs from it)."""
    ns = namespace
    padding = "#" + "x" * 1022 + "\n"
    long_namespace = (ns + "n" * 128)[:128]
    huge_stream = "[750000000]"
    return [
        Case("alias_bomb", pipeline(ns, extra="    parameters:\n" + anchors(9, 6)), says=("alias",)),
        Case("alias_bomb_as_shape", "anchors:\n" + anchors(8, 2) + pipeline(ns, shape="*l7"),
             says=("alias",)),
        Case("alias_shape_within_limits", "anchors:\n" + anchors(5, 2) + pipeline(ns, shape="*l4"),
             says=("shape for 'input'", "unsupported fields: 'anchors'"), line=9),
        Case("recursive_alias", pipeline(ns, extra="    parameters: &p {self: *p}\n"),
             says=("alias",), line=10),
        Case("deep_flow_nesting", pipeline(ns, extra="    parameters: {deep: " + "[" * 100_000
                                           + "]" * 100_000 + "}\n"), says=("nest",), line=10),
        Case("deep_block_nesting", pipeline(ns, extra="    parameters:\n" + "".join(
            " " * (6 + depth) + f"k{depth}:\n" for depth in range(1000))), says=("nest",)),
        Case("nul_byte", pipeline(ns) + "# a comment with a \0 in it\n", says=("NUL",), line=10),
        Case("integer_of_5000_digits", pipeline(ns, extra="    parameters: {seed: " + "7" * 5000 + "}\n"),
             says=("digits",), line=10),
        Case("shape_of_5000_digits", pipeline(ns, shape="[" + "9" * 5000 + "]"), says=("digits",), line=3),
        Case("shape_too_large", pipeline(ns, shape="[1000000000000, 1000000000000]"),
             says=("shape for 'input'", "bytes"), line=3),
        Case("shape_of_nine_dimensions", pipeline(ns, shape="[1, 1, 1, 1, 1, 1, 1, 1, 1]"),
             says=("shape for 'input'", "dimensions"), line=3),
        Case("file_of_50_MB", pipeline(ns) + padding * (50 * 1024), says=("MiB",)),
        Case("operation_of_20000_unary_minus", custom(ns, "-" * 20_000 + "input"),
             says=("kernel 'stage' operation is 20005 characters long", "at most 4096"), line=6),
        Case("operation_of_50000_terms", custom(ns, " + ".join(["input"] * 50_000)),
             says=("kernel 'stage' operation is", "at most 4096"), line=6),
        Case("operation_of_300_terms", custom(ns, " + ".join(["input"] * 300)),
             says=("kernel 'stage' operation nests deeper than 200 levels",), line=6),
        Case("operation_of_300_unary_minus", custom(ns, "-" * 300 + "input"),
             says=("kernel 'stage' operation nests deeper than 200 levels",), line=6),
        Case("operation_divides_by_zero", custom(ns, "input * (1/0)"), says=("kernel 'stage'", "finite"),
             line=6),
        Case("operation_constant_1e999", custom(ns, "input + 1e999"), says=("kernel 'stage'", "finite"),
             line=6),
        Case("operation_over_750M_elements", custom(ns, "(input - 1.5) * 2 + input", huge_stream), status=0),
        Case("operation_over_750M_elements_wrong_output",
             custom(ns, "input * 2", huge_stream).replace("{name: output, shape: [750000000], dtype: float32}",
                                                          "{name: output, shape: [750000000], dtype: int8}"),
             says=("kernel 'stage'", "dtype"), line=6),
        Case("stream_name_of_255_characters", pipeline(ns, input_name="s" * 255),
             says=("shared memory name", "bytes"), line=3, runs=True),
        Case("stream_name_of_300_characters", pipeline(ns, input_name="s" * 300),
             says=("shared memory name", "bytes"), line=3, runs=True),
        Case("namespace_of_128_bytes", pipeline(long_namespace), says=("namespace", "127 bytes"), line=1,
             runs=True),
        Case("namespace_of_dots", pipeline(ns + "." * 90), says=("namespace", "bytes"), line=1, runs=True),
        Case("kernel_name_with_NUL", pipeline(ns, kernel='"st\\0age"'), says=("kernel name", "NUL"), line=6,
             runs=True),
        Case("kernel_name_of_64_bytes", pipeline(ns, kernel="k" * 64), says=("kernel name", "63 bytes"),
             line=6, runs=True),
        Case("initial_constant_out_of_range", pipeline(ns).replace(
            "{name: input, shape: [4], dtype: float32}",
            "{name: input, shape: [4], dtype: uint8, initial: {pattern: constant, value: 300}}").replace(
            "{name: output, shape: [4], dtype: float32}", "{name: output, shape: [4], dtype: uint8}"),
             says=("initial value", "uint8"), line=3, runs=True),
        Case("too_many_kernels", f"namespace: {ns}\n" + _streams(*(
            f"{{name: s{index}, shape: [1], dtype: uint8}}" for index in range(301))) + "kernels:\n" + "".join(
            f"  - {{name: k{index}, kind: cpu.copy, input: s{index}, output: s{index + 1}}}\n"
            for index in range(300)), says=("kernels", "256")),
    ]


# ---------------------------------------------------------------------------------------------- running


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def shmpiped(*args: str) -> subprocess.CompletedProcess:
    """The real command line, in an address space of ``MEMORY_LIMIT`` and at most ``TIMEOUT_S``."""
    return subprocess.run([*SHMPIPED, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          preexec_fn=_limit_memory)


def write_case(directory: Path, case: Case) -> Path:
    path = directory / f"{case.name}.yaml"
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    else:
        path.write_text(case.text, encoding="utf-8")
    return path


CASES = {case.name: case for case in hostile_cases()}


def check_message(case: Case, path: Path, output: str) -> None:
    """The message names the file (and line), says what is wrong, and stays short."""
    assert "Traceback" not in output, output[-3000:]
    assert str(path) in output, output[-3000:]
    lowered = output.lower()
    for fragment in case.says:
        assert fragment.lower() in lowered, (fragment, output[-3000:])
    if case.line is not None:
        assert f"line {case.line})" in output, output[-3000:]
    assert len(output) < 20_000, f"{len(output)} characters of message"


@pytest.mark.parametrize("name", sorted(CASES))
def test_validate_answers_every_hostile_file_with_0_or_78(tmp_path, namespace, name):
    case = next(case for case in hostile_cases(namespace) if case.name == name)
    path = write_case(tmp_path, case)
    result = shmpiped("validate", str(path))
    output = result.stdout + result.stderr
    assert result.returncode == case.status, output[-3000:]
    if case.status == 0:
        assert f"{path}: valid" in result.stdout
    else:
        check_message(case, path, output)


@pytest.mark.parametrize("name", sorted(name for name, case in CASES.items() if case.runs))
def test_run_refuses_names_the_segments_cannot_hold(tmp_path, namespace, name):
    case = next(case for case in hostile_cases(namespace) if case.name == name)
    path = write_case(tmp_path, case)
    result = shmpiped("run", str(path), *DAEMON_ARGS)
    output = result.stdout + result.stderr
    assert result.returncode == 78, output[-3000:]
    check_message(case, path, output)
    assert not [entry for entry in os.listdir(layout.DEV_SHM) if namespace in entry]
    assert not segments_of(namespace)


def test_a_large_real_pipeline_still_loads(tmp_path, namespace):
    """A 1 MiB file of 2000 streams and 250 kernels is no hostile input: it validates."""
    streams = [f"{{name: stream_{index:04d}, shape: [64, 64], dtype: float32}}  # {'padding ' * 30}"
               for index in range(2000)]
    kernels = "".join(
        f"  - name: stage_{index:04d}\n    kind: cpu.scale\n    input: stream_{index:04d}\n"
        f"    output: stream_{index + 1:04d}\n    parameters: {{factor: 0.5}}\n"
        for index in range(250)
    )
    path = tmp_path / "large.yaml"
    path.write_text(f"namespace: {namespace}\n" + _streams(*streams) + "kernels:\n" + kernels)
    assert path.stat().st_size > 1 << 19
    result = shmpiped("validate", str(path))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def test_the_limits_are_the_segment_layout_s():
    """config_limits repeats the header fields' sizes (loading a file imports nothing of shm)."""
    def capacity(field) -> int:
        return int(field[1][:-1]) - 1  # NUL-terminated

    assert limits.MAX_NAMESPACE_BYTES == capacity(layout.H_NAMESPACE)
    assert limits.MAX_KERNEL_NAME_BYTES == capacity(layout.REC_NAME)
    assert limits.MAX_GPU_DEVICE_BYTES == capacity(layout.H_GPU_DEVICE)
    assert limits.MAX_SEGMENT_NAME_BYTES < capacity(layout.H_NAME)
    assert limits.MAX_KERNELS == layout.REC_CAPACITY and limits.MAX_DIMENSIONS == layout.MAX_DIMS
    assert limits.DEFAULT_NAMESPACE == layout.DEFAULT_NAMESPACE
    for namespace in (None, "ao", "a.b%c@d", "é" * 20):
        for stream in ("s", "frames.raw", "ü" * 30):
            expected = len(layout.stream_segment_name(namespace, stream).encode())
            assert limits.segment_name_bytes(namespace, stream) == expected


def test_a_name_at_the_limit_runs_and_leaves_nothing(tmp_path, namespace):
    """The longest stream name the limit allows is created and removed for real."""
    room = limits.MAX_SEGMENT_NAME_BYTES - limits.segment_name_bytes(namespace, "")
    path = tmp_path / "longest.yaml"
    path.write_text(pipeline(namespace, input_name="s" * room, kernel="k" * limits.MAX_KERNEL_NAME_BYTES))
    result = shmpiped("run", str(path), *DAEMON_ARGS[:-1], "1")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert not segments_of(namespace)


def test_a_namespace_given_on_the_command_line_is_checked_against_the_stream_names(tmp_path, namespace):
    path = tmp_path / "p.yaml"
    path.write_text(pipeline(namespace, input_name="s" * 200))
    config = PipelineConfig.from_yaml(path)
    with pytest.raises(ConfigValidationError, match=r"shared memory name 's+\.\.\.s+' is 200 bytes long.*line 3\)"):
        config.replace(namespace=namespace + "n" * 40)
    result = shmpiped("run", str(path), "--namespace", namespace + "n" * 40, *DAEMON_ARGS)
    assert result.returncode == 78 and "is 200 bytes long" in result.stderr, result.stderr[-3000:]
    assert not segments_of(namespace + "n" * 40)


def test_a_config_built_in_python_meets_the_same_limits_before_its_build(namespace):
    from shmpiped.config import KernelConfig, SharedMemoryConfig
    from shmpiped.manager import PipelineManager

    config = PipelineConfig(
        shared_memory=(SharedMemoryConfig("s" * 300, (4,), "float32"), SharedMemoryConfig("out", (4,), "float32")),
        kernels=(KernelConfig("st\0age", "cpu.copy", inputs=("s" * 300,), outputs=("out",)),),
        namespace=namespace)
    manager = PipelineManager(config)
    with pytest.raises(ConfigValidationError) as raised:
        manager.build()
    messages = "\n".join(raised.value.errors)
    assert "is 300 bytes long" in messages and "must not contain NUL" in messages
    manager.shutdown(force=True)
    assert not segments_of(namespace)


def test_out_of_file_descriptors_at_build_exits_71_naming_the_limit(tmp_path, namespace):
    """`ulimit -n 64` and 40 streams: the machine's limit (71, EX_OSERR), the fix named, nothing left."""
    path = tmp_path / "many.yaml"
    path.write_text(f"namespace: {namespace}\n" + _streams(*(
        f"{{name: s{index}, shape: [4], dtype: float32}}" for index in range(40))) + "kernels:\n" + "".join(
        f"  - {{name: k{index}, kind: cpu.copy, input: s{index}, output: s{index + 1}}}\n"
        for index in range(39)))

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    result = subprocess.run([*SHMPIPED, "run", str(path), *DAEMON_ARGS], capture_output=True, text=True,
                            timeout=TIMEOUT_S, preexec_fn=few_files)
    assert result.returncode == 71, result.stderr[-3000:]
    assert "EMFILE" in result.stderr and "ulimit -n" in result.stderr and "Traceback" not in result.stderr
    assert not segments_of(namespace)


def test_messages_quote_huge_values_briefly():
    assert len(limits.short_repr(list(range(10**6)))) < 120
    assert len(limits.short_repr("x" * 10**6)) < 120
    assert "digits" in limits.short_repr(10**5000)  # repr() itself would raise
    shared = [[1, 2, 3]] * 3
    copied = plain_data({"a": shared, "b": shared})
    assert copied == {"a": shared, "b": shared} and copied["a"] is copied["b"]  # an alias stays one copy


if __name__ == "__main__":  # write the files, for measuring them by hand
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for case in hostile_cases():
        print(write_case(target, case))


def test_a_named_pipe_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipeline.yaml"
    os.mkfifo(fifo)  # nobody writes it: reading it would block forever
    result = shmpiped("validate", str(fifo))
    assert result.returncode == 78, result.stdout + result.stderr
    assert f"{fifo} is not a regular file" in result.stdout + result.stderr
