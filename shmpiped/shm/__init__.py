"""Streams and telemetry in /dev/shm: layout, creation, publish/wait, ownership, cleanup."""

from .layout import DEFAULT_NAMESPACE, DEFAULT_SLOTS, namespace_segment_name, stream_segment_name
from .stream import WAIT_STRATEGIES, Stream
from .telemetry import NamespaceBlock, RecordSnapshot, WorkerRecord

__all__ = [
    "DEFAULT_NAMESPACE", "DEFAULT_SLOTS", "NamespaceBlock", "RecordSnapshot", "Stream",
    "WAIT_STRATEGIES", "WorkerRecord", "namespace_segment_name", "stream_segment_name",
]
