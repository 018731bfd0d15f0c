"""Stream handles answer pyshmem's calls with pyshmem's semantics.

Every behaviour test runs twice: on a real pyshmem stream (the reference) and
on a shmpiped stream, through the same calls.  Writers and readers are
separate handles; the edge- and level-triggered waits are also fed by a
writer in another process.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from shmpiped.shm import Stream
from shmpiped.shm.pyshmem_style import Publication

pyshmem = pytest.importorskip("pyshmem", reason="pyshmem is in the test extra: pip install -e '.[test]'")

SHAPE = (2, 3)


@pytest.fixture
def pyshmem_locks(tmp_path, monkeypatch):
    """pyshmem's lock files go to this test's directory (they live outside /dev/shm, and pyshmem keeps them)."""
    monkeypatch.setenv("PYSHMEM_LOCK_DIR", str(tmp_path / "pyshmem-locks"))


class Pair:
    """A writer handle and a separate reader handle on one stream of either implementation."""

    def __init__(self, implementation: str, namespace: str):
        self.implementation = implementation
        self.name = f"{namespace}-style"
        self.namespace = namespace
        if implementation == "pyshmem":
            self.writer = pyshmem.create(self.name, shape=SHAPE, dtype=np.float64, notify=True)
            self.reader = pyshmem.open(self.name)
        else:
            self.writer = Stream.create(self.name, SHAPE, np.float64, namespace=namespace)
            self.reader = Stream.attach(self.name, namespace)

    def open_readonly(self):
        if self.implementation == "pyshmem":
            return pyshmem.open(self.name, readonly=True)
        return Stream.attach(self.name, self.namespace, readonly=True)

    def writer_process_code(self) -> str:
        """Python that attaches this stream in another process and publishes 7.0 with frame id 77 via
        write_view after reading one line of stdin."""
        if self.implementation == "pyshmem":
            attach = "import pyshmem; s = pyshmem.open(sys.argv[1])"
        else:
            attach = "from shmpiped.shm import Stream; s = Stream.attach(sys.argv[1], sys.argv[2])"
        return (f"import sys\n{attach}\nprint('ready', flush=True)\nsys.stdin.readline()\n"
                "with s.write_view(frame_id=77) as view:\n    view[...] = 7.0\n"
                "print('written', flush=True)\ns.close()\n")

    def close(self):
        self.reader.close()
        if self.implementation == "pyshmem":
            self.writer.close()
            pyshmem.unlink(self.name)
        else:
            self.writer.close()
            self.writer.unlink()


@pytest.fixture(params=["pyshmem", "shmpiped"])
def pair(request, namespace, pyshmem_locks):
    created = Pair(request.param, namespace)
    yield created
    created.close()
    assert created.name not in pyshmem.list_streams()


def test_publication_has_pyshmem_fields():
    ours = [f.name for f in dataclasses.fields(Publication)]
    theirs = [f.name for f in dataclasses.fields(pyshmem.Publication)]
    assert ours[:len(theirs)] == theirs


def test_write_view_publishes_on_exit_with_its_frame_id(pair):
    before = pair.reader.count
    with pair.writer.write_view(frame_id=41) as view:
        view[...] = 3.5
        assert pair.reader.count == before  # nothing visible inside the block
    assert pair.reader.count == before + 1
    publication = pair.reader.read_publication()
    assert publication.frame_id == 41 and publication.count == before + 1
    np.testing.assert_array_equal(publication.payload, np.full(SHAPE, 3.5))


def test_write_view_that_raises_publishes_nothing(pair):
    pair.writer.write(np.ones(SHAPE), frame_id=1)
    with pytest.raises(RuntimeError, match="camera glitch"):
        with pair.writer.write_view(frame_id=2) as view:
            view[...] = 9.0
            raise RuntimeError("camera glitch")
    assert pair.reader.count == 1


def test_write_view_on_shmpiped_is_the_next_slot_itself(namespace):
    stream = Stream.create("zero", SHAPE, np.float64, namespace=namespace)
    try:
        slot = stream.slot_views[stream.count % stream.nslots]
        with stream.write_view(frame_id=5) as view:
            assert np.shares_memory(view, slot)
            view[...] = 2.0
        count, newest = stream.latest()
        assert count == 1 and np.shares_memory(newest, slot) and stream.frame_id == 5
        # and after an abort the previous publication is still readable (pyshmem raises there instead)
        with pytest.raises(ValueError):
            with stream.write_view() as view:
                view[...] = -1.0
                raise ValueError("abort")
        np.testing.assert_array_equal(stream.read(), np.full(SHAPE, 2.0))
    finally:
        stream.close()
        stream.unlink()


def test_read_publication_fields_and_missed_publications(pair):
    pair.reader.read_publication()  # this handle's baseline
    for i in range(1, 6):
        pair.writer.write(np.full(SHAPE, float(i)), frame_id=100 + i)
    publication = pair.reader.read_publication()
    assert (publication.count, publication.frame_id, publication.missed_publications) == (5, 105, 4)
    assert isinstance(publication.payload, np.ndarray) and publication.payload.shape == SHAPE
    assert isinstance(publication.write_time, float) and abs(publication.write_time - time.time()) < 60
    assert pair.reader.missed_writes == 4 and pair.reader.last_read_count == 5
    publication.payload[...] = -1.0  # a private copy
    np.testing.assert_array_equal(pair.reader.read(), np.full(SHAPE, 5.0))


def test_read_into_out_and_locked_read(pair):
    pair.writer.write(np.arange(6.0).reshape(SHAPE), frame_id=9)
    out = np.zeros(SHAPE)
    assert pair.reader.read(safe=True, out=out) is out
    np.testing.assert_array_equal(out, np.arange(6.0).reshape(SHAPE))
    with pair.reader.locked(timeout=0.5) as handle:  # shmpipeline's read_auxiliary
        assert handle is pair.reader
        np.testing.assert_array_equal(handle.read(safe=True), out)
    with pytest.raises(ValueError):
        pair.reader.read(safe=False, out=out)


def test_wait_for_count_is_level_triggered(pair):
    pair.writer.write(np.ones(SHAPE))
    assert pair.reader.wait_for_count(after=0, timeout=0.5) == 1  # published before the call: no wait
    with pytest.raises(TimeoutError):
        pair.reader.wait_for_count(after=1, timeout=0.05)
    with pytest.raises(ValueError):
        pair.reader.wait_for_count(after=-1)
    with pytest.raises(ValueError):
        pair.reader.wait_for_count(after=0, timeout=-1.0)


def test_read_after_publication_returns_the_newest_after_a_count(pair):
    for i in range(1, 4):
        pair.writer.write(np.full(SHAPE, float(i)), frame_id=i)
    publication = pair.reader.read_after_publication(1, timeout=0.5)
    assert (publication.count, publication.frame_id) == (3, 3)
    np.testing.assert_array_equal(pair.reader.read_after(2, timeout=0.5), np.full(SHAPE, 3.0))
    assert pair.reader.last_read_count == 3
    with pytest.raises(TimeoutError):
        pair.reader.read_after_publication(3, timeout=0.05)


def test_read_new_publication_waits_for_a_write_after_the_call(pair):
    pair.writer.write(np.ones(SHAPE), frame_id=1)
    with pytest.raises(TimeoutError):  # the existing publication does not count: edge-triggered
        pair.reader.read_new_publication(timeout=0.05)
    writer = subprocess.Popen([sys.executable, "-c", pair.writer_process_code(), pair.name, pair.namespace],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        result = {}
        waiting = threading.Thread(target=lambda: result.update(p=pair.reader.read_new_publication(timeout=10)))
        waiting.start()
        time.sleep(0.1)
        writer.stdin.write("go\n")
        writer.stdin.flush()
        waiting.join(15)
        assert writer.stdout.readline().strip() == "written"
    finally:
        writer.stdin.close()
        writer.wait(10)
    publication = result["p"]
    assert (publication.count, publication.frame_id) == (2, 77)
    np.testing.assert_array_equal(publication.payload, np.full(SHAPE, 7.0))


def test_clear_publishes_zeros(pair):
    pair.writer.write(np.full(SHAPE, 4.0))
    pair.writer.clear()
    assert pair.reader.count == 2
    np.testing.assert_array_equal(pair.reader.read(), np.zeros(SHAPE))


def test_read_only_handles_refuse_writes(pair):
    readonly = pair.open_readonly()
    try:
        with pytest.raises(PermissionError):
            readonly.clear()
        with pytest.raises(PermissionError):
            with readonly.write_view() as view:
                view[...] = 1.0
        assert pair.reader.count == 0
    finally:
        readonly.close()


def test_the_handle_attributes_scripts_read_match_pyshmem(pair):
    for handle, owner in ((pair.writer, True), (pair.reader, False)):
        assert handle.gpu_enabled is False
        assert handle.size == 2 * 3 * 8
        assert handle.owner is owner
        assert tuple(handle.shape) == SHAPE and handle.dtype == np.float64
