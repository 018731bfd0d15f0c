"""The child side of a worker or source process: its envelope, its telemetry record, its failure report.

The manager writes an *envelope* on the child's standard input: a pickled dict
naming the child (``role`` "kernel" or "source", ``name``), its telemetry
record (``block_name``, ``record_index``, ``spawn_token``), how to re-run the
manager's main module when the spec refers to classes defined there
(``main``), and the pickled spec itself.  The child reads it, claims its
record, loads the spec, and, when anything fails before or during its loop,
writes the traceback into the record (where the manager reads failures) and
to stderr.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import traceback
import types

from . import spawning, worker_output
from .shm import layout
from .shm.telemetry import NamespaceBlock

#: The exit status of a child whose kernel or source failed.
EXIT_FAILED = 1


class _MainNoticer(pickle.Pickler):
    """Pickles a spec and notes whether it refers to anything defined in ``__main__``."""

    uses_main = False

    def reducer_override(self, obj):
        if getattr(obj, "__module__", None) == "__main__" and isinstance(obj, (type, types.FunctionType)):
            self.uses_main = True
        return NotImplemented


def encode_envelope(spec, role: str, name: str) -> bytes:
    """What the manager writes to a new child's standard input; ``spec`` carries the record fields."""
    buffer = io.BytesIO()
    pickler = _MainNoticer(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dump(spec)
    envelope = {
        "role": role,
        "name": name,
        "block_name": spec.block_name,
        "record_index": spec.record_index,
        "spawn_token": spec.spawn_token,
        "main": spawning.main_module_reference() if pickler.uses_main else None,
        "spec": buffer.getvalue(),
    }
    return pickle.dumps(envelope, protocol=pickle.HIGHEST_PROTOCOL)


def read_envelope() -> dict:
    """The envelope on standard input (closed after); stdout made line-buffered when the manager relays it."""
    if os.environ.get(worker_output.RELAY_VARIABLE):
        sys.stdout.reconfigure(line_buffering=True)  # a pipe to the manager's relay: a print is a line at once
    envelope = pickle.load(sys.stdin.buffer)
    sys.stdin.close()
    return envelope


def load_spec(envelope: dict):
    """Import what the spec refers to (the manager's main module, shmpipeline plugins), then unpickle it."""
    from .compat import install_shmpipeline_fallback

    install_shmpipeline_fallback()  # plugins written against shmpipeline import it even where it is absent
    if envelope["main"] is not None:
        spawning.import_parent_main(envelope["main"])
    try:
        return pickle.loads(envelope["spec"])
    except (AttributeError, ImportError) as exc:
        raise RuntimeError(f"{envelope['role']} {envelope['name']!r}: its class cannot be loaded in its "
                           f"process: {exc}") from exc


def claim_record(block_name: str, index: int, spawn_token: int):
    """(block, record) of this spawn; raises if the manager gave the record to another spawn meanwhile."""
    block = NamespaceBlock.attach_segment(block_name)
    record = block.worker_record(index)
    if record.get(layout.REC_SPAWN_TOKEN) != spawn_token:
        raise RuntimeError("telemetry record was reassigned before this process started")
    return block, record


def explain(exc: BaseException, typed: bool = True) -> tuple[str, str]:
    """(error line, traceback text) of ``exc``; the error line names the exception type when ``typed``."""
    error = f"{type(exc).__name__}: {exc}" if typed else (str(exc) or type(exc).__name__)
    return error, "".join(traceback.format_exception(exc))


def report_unloadable(envelope: dict, exc: BaseException) -> int:
    """Report a failure to load the spec, in the record when it can still be claimed."""
    try:
        _, record = claim_record(envelope["block_name"], envelope["record_index"], envelope["spawn_token"])
    except Exception:  # noqa: BLE001 - the record is gone too: stderr is all we have
        record = None
    return report_failure(record, envelope["role"], envelope["name"], *explain(exc))


def report_failure(record, role: str, name: str, error: str, text: str) -> int:
    """Write the error and traceback where the manager reads them (and to stderr); the failure status.

    When the manager relays this process's output as log records, the report on
    stderr is one framed line, so that it is one record with the traceback inside.
    """
    if record is not None:
        record.write_error(f"{error}\n{text}")
        record.set_state(layout.WS_FAILED)
    summary = f"shmpiped {'worker' if role == 'kernel' else role} {name!r} (pid {os.getpid()}) failed: {error}"
    try:
        if os.environ.get(worker_output.RELAY_VARIABLE):
            sys.stderr.write(worker_output.format_event_line("ERROR", summary, text.rstrip("\n")))
        else:
            sys.stderr.write(f"{summary}\n{text}")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # no stderr left (the manager is gone): the record holds the report
    return EXIT_FAILED
