"""The worker process: one kernel, its streams, and the hot loop.

Started by the manager through ``shmpiped.spawning`` (a fresh interpreter
with the manager's ``sys.path``) with a pickled envelope on standard input:
where its telemetry record is, how to re-import the manager's ``__main__``
when the kernel class lives there, then the :class:`WorkerSpec` itself.  Per frame the loop waits for its
trigger input(s) (futex, no polling), hands zero-copy views of the newest
slots to the kernel, which computes straight into the next slot of each
output, publishes them with the trigger's frame id and origin timestamp, and
records the frame in its telemetry record.  It allocates no arrays, logs
nothing and sends no message per frame.

Exec time is measured from just before the kernel call to just after the
last output is published: kernel and publication, never waiting.  A GPU
kernel (``storage = "gpu"``) runs on the device of its primary output with
its streams' device memory (CPU input streams are uploaded to a device buffer
when they change); its exec time is the device time of its work,
from CUDA events recorded around the kernel call, and the loop waits for
that work to finish before it checks the inputs were not lapped and
publishes.

A kernel slower than its input's ring (the writer laps the slot it reads
before it is done) would drop every frame.  After ``COPY_AFTER_OVERRUNS``
such frames in a row a CPU worker switches, for good, to copying its trigger
inputs into buffers allocated once: it checks the copy was not lapped before
the kernel runs, so it computes the newest frame it could copy whole.  The
record's ``REC_INPUT_COPY`` word tells the manager.

Real-time settings (``spec.realtime``, the pipeline's merged with the kernel's) are applied by
the worker to itself through ``shmpiped.realtime``: its CPUs first, then, once its streams and
kernel exist, locked memory and the scheduling policy; the wait strategy and spin time of its
trigger inputs come from the same settings.

A worker that fails writes its traceback into its telemetry record, sets its
state to failed and exits 1.  It exits by itself (status 0) when the manager
asks it to stop, and when the process that started it has gone.

Its stdout and stderr are the manager's, or, when the manager relays them as
log records (``shmpiped.worker_output``), pipes: its stdout is then
line-buffered and its failure report on stderr is one framed line, so that it
is one record with the traceback inside.  Nothing per frame is written.
"""

from __future__ import annotations

import linecache
import os
import re
import signal
import time
import warnings
from dataclasses import dataclass, field

import numpy

from . import child, realtime
from .errors import KernelExecutionError
from .shm import device, layout
from .shm.device_stream import HostStreamOnDevice
from .shm.stream import Stream

PARENT_CHECK_NS = 250_000_000
#: Consecutive frames lapped while computing after which a CPU worker reads private copies of its inputs.
COPY_AFTER_OVERRUNS = 3


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable."""

    kernel: object                      # KernelConfig
    kernel_class: type                  # resolved by the manager's registry; pickled by reference
    shared_memory: dict                 # stream name -> SharedMemoryConfig
    namespace: str
    block_name: str                     # the pipeline's control block (telemetry records, pause flag)
    record_index: int
    spawn_token: int
    cpu_slot: int | None
    config_base_dir: str
    parent_pid: int
    wait_strategy: str = "futex"
    telemetry: bool = True
    extra: dict = field(default_factory=dict)
    spin_s: float = 50e-6               # hybrid: spin this long before parking
    realtime: object = None             # RealtimeConfig: this worker's merged settings (None: the defaults)
    affinity: tuple | None = None       # CPUs it runs on: (cpu_slot,), or the pipeline's pool when unpinned


class _Stop(Exception):
    pass


def _on_sigterm(signum, frame):
    raise _Stop()


def _affinity(spec: WorkerSpec):
    if spec.affinity is not None:
        return spec.affinity
    return None if spec.cpu_slot is None else (spec.cpu_slot,)


def _device_uuid(backend, index: int) -> bytes | None:
    """The 16-byte UUID of CUDA device ``index`` (cudaDeviceProp.uuid), None when the backend has none
    (the emulated backend) or the runtime does not report it."""
    if getattr(backend, "name", None) != "cuda":
        return None
    try:
        uuid = backend.xp.cuda.runtime.getDeviceProperties(index).get("uuid")
    except Exception:  # noqa: BLE001 - an identifier for the metrics only: never a reason to fail
        return None
    if isinstance(uuid, str):
        uuid = uuid.encode("latin-1")
    return bytes(uuid)[:16] if isinstance(uuid, (bytes, bytearray)) and len(uuid) >= 16 else None


def run(spec: WorkerSpec) -> int:
    """Run the worker until asked to stop; returns the process exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the manager's to handle
    signal.signal(signal.SIGTERM, _on_sigterm)
    record = None
    streams: list[Stream] = []
    try:
        block, record = child.claim_record(spec.block_name, spec.record_index, spec.spawn_token)
        record.start(os.getpid(), spec.cpu_slot)
        record.set_state(layout.WS_STARTING)
        settings = spec.realtime or realtime.RealtimeConfig()
        realtime.apply(settings, _affinity(spec), memory=False, scheduling=False)  # its CPUs, before any work

        from .kernels.registry import KernelRegistry

        config = spec.kernel
        registry = KernelRegistry(lazy_kernels={config.kind: lambda: spec.kernel_class})
        timer = None
        gpu_device = None
        if getattr(spec.kernel_class, "storage", "cpu") == "gpu":
            gpu_device = spec.shared_memory[config.output].gpu_device
            backend = device.backend()
            backend.select(device.gpu_device_index(gpu_device))  # before the kernel allocates its buffers
            timer = backend.timer()
            uuid = _device_uuid(backend, device.gpu_device_index(gpu_device))
            if uuid:
                record.set_gpu_uuid(uuid)  # shmpiped_worker_info's gpu_uuid, to join dcgm-exporter's series
        with warnings.catch_warnings():  # a legacy kind: the manager said so when it validated the file
            warnings.filterwarnings("ignore", message="kernel kind .* is deprecated", category=DeprecationWarning)
            kernel = registry.create(config, spec.shared_memory, config_base_dir=spec.config_base_dir)

        def attach(name: str, is_input: bool = True) -> Stream:
            # One writer per stream: inputs and auxiliaries are mapped with their slots read-only.
            stream = Stream.attach(name, spec.namespace, gpu_device=gpu_device,
                                   role="reader" if is_input else "producer")
            if is_input and gpu_device is not None and stream.storage == "cpu":
                stream = HostStreamOnDevice(stream, backend)  # a GPU kernel reading a CPU stream
            streams.append(stream)
            return stream

        triggers = [attach(name) for name in config.inputs]
        auxiliaries = {binding.alias: attach(binding.name) for binding in config.auxiliary}
        outputs = [attach(name, is_input=False) for name in config.outputs]
        for stream in triggers:
            stream.set_wait_strategy(spec.wait_strategy, spec.spin_s)
        loop = HotLoop(config, kernel, triggers, auxiliaries, outputs, block, record, spec, timer)
        # Once its streams and kernel exist: lock what is mapped (and what comes), then the policy.
        # Not applied (required false): it runs as it is allowed to, and status() reads back what holds.
        realtime.apply(settings, None)
        record.set_state(layout.WS_RUNNING)
        loop.run()
        record.set_state(layout.WS_STOPPED)
        return 0
    except _Stop:
        if record is not None:
            record.set_state(layout.WS_STOPPED)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, then we exit
        kernel_name = getattr(spec.kernel, "name", "?")
        return child.report_failure(record, "kernel", kernel_name,
                                    *child.explain(_explain_input_write(exc, kernel_name, streams)))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for stream in streams:
            stream.close()


class HotLoop:
    """The per-frame loop of one kernel; everything it needs is prepared here."""

    def __init__(self, config, kernel, triggers, auxiliaries, outputs, block, record, spec, timer=None):
        self.config = config
        self.timer = timer  # device timer of a GPU kernel, None on the CPU
        self.kernel = kernel
        self.triggers = triggers
        self.auxiliaries = auxiliaries
        self.outputs = outputs
        self.block = block
        self.record = record
        self.spec = spec
        self.aux_views: dict = {}
        self.aux_items = tuple(auxiliaries.items())
        self.aux_counts = [0] * len(self.aux_items)
        self.read_timeout = float(config.read_timeout)
        self.pause_sleep = float(config.pause_sleep)
        self.all_new = config.trigger_policy == "all_new"
        self.sync = config.synchronization if config.requires_matching_frame_id else None
        self.skew_started: float | None = None
        self.lapped_in_a_row = 0
        self.input_copies: list | None = None  # private copies of the trigger inputs, once too slow for them

    # -- the rare paths -----------------------------------------------------------
    def _check_parent(self) -> None:
        if os.getppid() != self.spec.parent_pid:
            raise _Stop()

    def _paused(self) -> None:
        self.record.set_state(layout.WS_PAUSED)
        while self.block.paused and not self.record.stop_requested:
            time.sleep(self.pause_sleep)
            self.record.heartbeat(time.monotonic_ns())
            self._check_parent()
        self.record.set_state(layout.WS_RUNNING)

    def _read_auxiliaries(self) -> None:
        """Point aux_views at the newest slot of each auxiliary (zeros if never written)."""
        views = self.aux_views
        counts = self.aux_counts
        for i, (alias, stream) in enumerate(self.aux_items):
            count, view = stream.latest()
            counts[i] = count
            views[alias] = view if view is not None else stream.slot_views[0]

    def _note_lapped(self) -> None:
        """Count a frame lapped while computing; switch to input copies when it keeps happening."""
        self.record.increment(layout.REC_OVERRUNS)
        self.lapped_in_a_row += 1
        if self.lapped_in_a_row >= COPY_AFTER_OVERRUNS and self.input_copies is None and self.timer is None:
            self.input_copies = [numpy.empty(t.shape, t.dtype) for t in self.triggers]
            self.record.set_input_copy()

    def _auxiliaries_intact(self) -> bool:
        counts = self.aux_counts
        for i, (_, stream) in enumerate(self.aux_items):
            if counts[i] and not stream.still_valid(counts[i]):
                return False
        return True

    # -- main loop ------------------------------------------------------------------
    def run(self) -> None:
        if len(self.triggers) == 1:
            self._run_single()
        else:
            self._run_multi()

    def _run_single(self) -> None:
        trigger = self.triggers[0]
        outputs = self.outputs
        primary = outputs[0]
        single_output = len(outputs) == 1
        kernel = self.kernel
        record = self.record
        block = self.block
        aux_views = self.aux_views
        has_aux = bool(self.auxiliaries)
        read_timeout = self.read_timeout
        wait_once = trigger.wait_once
        view_of = trigger.view_of
        slot_metadata = trigger.slot_metadata
        still_valid = trigger.still_valid
        monotonic_ns = time.monotonic_ns
        telemetry = self.spec.telemetry
        timer = self.timer
        last = trigger.count
        next_parent_check = monotonic_ns() + PARENT_CHECK_NS
        if not has_aux:
            aux_views.clear()

        while True:
            if record.stop_requested:
                return
            if block.paused:
                self._paused()
                continue
            count = trigger.count
            if count <= last:
                record.increment(layout.REC_WAITS)
                count = wait_once(last, read_timeout)
            now = monotonic_ns()
            if count <= last or block.paused:
                record.increment(layout.REC_TIMEOUTS)
                record.heartbeat(now)
                if now >= next_parent_check:
                    self._check_parent()
                    next_parent_check = now + PARENT_CHECK_NS
                continue
            if now >= next_parent_check:
                self._check_parent()
                next_parent_check = now + PARENT_CHECK_NS
            frame_id, origin_ns, _ = slot_metadata(count)
            if has_aux:
                self._read_auxiliaries()
            start = monotonic_ns()
            copies = self.input_copies
            if copies is None:
                trigger_view = view_of(count)
            else:  # too slow for the input's ring: compute on a copy checked whole before the kernel runs
                trigger_view = copies[0]
                numpy.copyto(trigger_view, view_of(count))
                if not still_valid(count):
                    last = count
                    self._note_lapped()
                    continue
            if timer is not None:
                timer.begin()
            if single_output:
                kernel.compute_into(trigger_view, primary.next_slot(), aux_views)
            else:
                kernel.compute_into_multiple(trigger_view, [o.next_slot() for o in outputs], aux_views)
            if timer is not None:
                device_ns = timer.end()  # the device finished reading the inputs
            last = count
            if (copies is None and not still_valid(count)) or (has_aux and not self._auxiliaries_intact()):
                self._note_lapped()  # lapped while computing: drop the frame
                continue
            self.lapped_in_a_row = 0
            if single_output:
                out_count = primary.publish(frame_id, origin_ns)
            else:
                out_count = 0
                for stream in outputs:
                    out_count = stream.publish(frame_id, origin_ns)
            end = monotonic_ns()
            if telemetry:
                record.record_frame(end - start if timer is None else device_ns, end, out_count, end - origin_ns)

    def _run_multi(self) -> None:
        triggers = self.triggers
        outputs = self.outputs
        kernel = self.kernel
        record = self.record
        block = self.block
        aux_views = self.aux_views
        has_aux = bool(self.auxiliaries)
        monotonic_ns = time.monotonic_ns
        telemetry = self.spec.telemetry
        timer = self.timer
        all_new = self.all_new
        n = len(triggers)
        last = [t.count for t in triggers]
        counts = list(last)
        views: list = [None] * n
        # Waiting on one of several streams: under any_new another input may
        # fire first, so wait in short slices.
        slice_s = min(self.read_timeout, 0.001 if not all_new else self.read_timeout)
        next_parent_check = monotonic_ns() + PARENT_CHECK_NS

        while True:
            if record.stop_requested:
                return
            if block.paused:
                self._paused()
                continue
            for i in range(n):
                counts[i] = triggers[i].count
            if all_new:
                pending = next((i for i in range(n) if counts[i] <= last[i]), -1)
                fire = pending < 0
            else:
                fire = any(counts[i] > last[i] for i in range(n))
                pending = 0
            now = monotonic_ns()
            if now >= next_parent_check:
                self._check_parent()
                next_parent_check = now + PARENT_CHECK_NS
            if not fire or block.paused:
                if block.paused:
                    continue
                record.increment(layout.REC_WAITS)
                got = triggers[pending].wait_once(last[pending], slice_s)
                if got <= last[pending]:
                    record.increment(layout.REC_TIMEOUTS)
                    record.heartbeat(monotonic_ns())
                continue
            frame_id = 0
            origin_ns = 0
            min_id = None
            for i in range(n):
                fid, origin, _ = triggers[i].slot_metadata(counts[i])
                if fid > frame_id:
                    frame_id = fid
                if min_id is None or fid < min_id:
                    min_id = fid
                if counts[i] > last[i] and (origin_ns == 0 or origin < origin_ns):
                    origin_ns = origin
            if self.sync is not None and not self._frames_match(frame_id, min_id, counts, last):
                continue
            self.skew_started = None
            copies = self.input_copies
            for i in range(n):
                views[i] = triggers[i].view_of(counts[i])
                if copies is not None:
                    numpy.copyto(copies[i], views[i])
                    views[i] = copies[i]
            if copies is not None and not all(triggers[i].still_valid(counts[i]) for i in range(n)):
                last[:] = counts
                self._note_lapped()
                continue
            if has_aux:
                self._read_auxiliaries()
            start = monotonic_ns()
            if timer is not None:
                timer.begin()
            trigger_input = tuple(views)
            if len(outputs) == 1:
                kernel.compute_into(trigger_input, outputs[0].next_slot(), aux_views)
            else:
                kernel.compute_into_multiple(trigger_input, [o.next_slot() for o in outputs], aux_views)
            if timer is not None:
                device_ns = timer.end()
            lapped = (copies is None and not all(triggers[i].still_valid(counts[i]) for i in range(n))) or (
                has_aux and not self._auxiliaries_intact()
            )
            last[:] = counts
            if lapped:
                self._note_lapped()
                continue
            self.lapped_in_a_row = 0
            out_count = 0
            for stream in outputs:
                out_count = stream.publish(frame_id, origin_ns)
            end = monotonic_ns()
            if telemetry:
                record.record_frame(end - start if timer is None else device_ns, end, out_count, end - origin_ns)

    def _frames_match(self, target: int, lowest: int, counts: list, last: list) -> bool:
        """The matching_frame_id barrier (drop_older); False means skip this round."""
        if lowest == target:
            return True
        record = self.record
        record.increment(layout.REC_SKEW_EVENTS)
        now = time.monotonic()
        if self.skew_started is None:
            self.skew_started = now
        max_wait = self.sync.max_wait_s
        give_up = (target - lowest) > self.sync.max_skew_generations or (
            max_wait is not None and now - self.skew_started >= max_wait
        )
        if give_up:
            record.increment(layout.REC_SYNC_TIMEOUTS)
            last[:] = counts
            self.skew_started = None
        else:
            record.increment(layout.REC_SKIPPED_GENERATIONS)
            for i, stream in enumerate(self.triggers):
                if stream.slot_metadata(counts[i])[0] < target:
                    last[i] = counts[i]
        return False


def _explain_input_write(exc: BaseException, kernel_name: str, streams) -> BaseException:
    """NumPy's "assignment destination is read-only" from a kernel that wrote into one of its
    (read-only) input or auxiliary streams, turned into an error naming the kernel and the stream.

    The stream is the one whose read-only mapping holds an array that the innermost frame of the
    traceback names on the failing line (a local, or an entry of a local dict: the auxiliaries);
    any other exception is returned unchanged.
    """
    if not isinstance(exc, ValueError) or "read-only" not in str(exc):
        return exc
    ranges = [(s.segment.address, s.segment.address + s.segment.size, s.name)
              for s in streams if s.readonly and not s.closed]

    def stream_of(value) -> str | None:
        if isinstance(value, numpy.ndarray) and not value.flags.writeable and value.size:
            address = value.__array_interface__["data"][0]
            return next((name for start, end, name in ranges if start <= address < end), None)
        return None

    def named_on(line: str, local: str, value) -> list:
        if not isinstance(value, dict):
            return [value]
        keys = [k for k in value if isinstance(k, str) and (f'"{k}"' in line or f"'{k}'" in line)]
        return [value[k] for k in keys] if keys else list(value.values())

    tracebacks = []
    tb = exc.__traceback__
    while tb is not None:
        tracebacks.append(tb)
        tb = tb.tb_next
    for tb in reversed(tracebacks):
        frame = tb.tb_frame
        line = linecache.getline(frame.f_code.co_filename, tb.tb_lineno)
        names = set(re.findall(r"[A-Za-z_]\w*", line))
        found: set[str] = set()
        for only_the_line in (True, False):  # the arrays the failing line names, else any the frame holds
            for local, value in frame.f_locals.items():
                if only_the_line and local not in names:
                    continue
                found.update(n for n in map(stream_of, named_on(line, local, value)) if n)
            if found:
                break
        if found:
            ordered = sorted(found)
            what = (f"its input stream {ordered[0]!r}" if len(ordered) == 1
                    else "one of its input streams " + ", ".join(repr(n) for n in ordered))
            error = KernelExecutionError(
                f"kernel {kernel_name!r} wrote into {what}, which it may only read: a stream has one "
                f"writer, and a kernel writes only into its output views (compute with out=..., or into "
                f"a buffer of its own) ({exc})")
            error.__cause__ = exc
            return error
    return exc


def encode_spec(spec: WorkerSpec) -> bytes:
    """What the manager writes to a new worker's standard input (see ``main``)."""
    return child.encode_envelope(spec, "kernel", spec.kernel.name)


def main() -> int:
    """Entry point of a worker process (started by ``shmpiped.spawning``)."""
    envelope = child.read_envelope()
    try:
        spec = child.load_spec(envelope)
    except BaseException as exc:  # noqa: BLE001 - reported where the manager reads failures
        return child.report_unloadable(envelope, exc)
    return run(spec)
