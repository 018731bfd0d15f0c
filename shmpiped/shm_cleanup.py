"""Closing stream handles and removing their segments (shmpipeline's ``shm_cleanup``).

``close_stream(stream, unlink=True)`` removes the segment even when closing
the handle fails.  ``unlink_stream_name`` takes the name a segment has in
``/dev/shm`` (``SharedMemoryConfig.resource_name``, ``Stream.resource_name``)
or a plain stream name, meaning that stream in the default namespace, as an
unnamespaced shmpipeline stream's name is its resource name.  A missing
segment is not an error.
"""

from __future__ import annotations

from typing import Any

from .shm import layout
from .streams import unlink_segment

__all__ = ["close_stream", "unlink_stream_name"]


def close_stream(stream: Any, *, unlink: bool) -> None:
    """Close one stream handle and, with ``unlink``, remove its segment (even if closing fails)."""
    if not unlink:
        stream.close()
        return
    resource = stream.resource_name
    try:
        stream.close()
    finally:
        unlink_stream_name(resource)


def unlink_stream_name(stream_name: str) -> None:
    """Remove the segment ``stream_name`` (a resource name, or a stream of the default namespace)."""
    if not stream_name or "/" in stream_name or "\0" in stream_name:
        raise ValueError(f"invalid stream name {stream_name!r}")
    parsed = layout.parse_segment_name(stream_name)
    if parsed is None or parsed[1] is None:
        stream_name = layout.stream_segment_name(None, stream_name)
    unlink_segment(stream_name)
