"""What a pipeline file may cost, and the sizes the segments' fixed fields can hold.

Owns the named limits that keep loading and validating any input file bounded
in time and memory (file size, YAML nodes, aliases, nesting, integer digits,
operation length and nesting, error-message length), the limits that the
``/dev/shm`` file names and the segment headers (``shm/layout.py``) put on
user-chosen names, and the small pure helpers that check them and print a
user's value without ever printing all of a huge one (``short_repr``).

Each limit is generous for real pipelines (a 1 MiB file of thousands of
streams loads in seconds) and tight enough that the worst file that passes
it costs seconds and a few hundred MB, never minutes or the machine.
Nothing here reads files or touches shared memory; the sizes of header
fields are repeated here (not imported: loading a file imports nothing of
``shm``) and a test checks them against ``shm/layout.py``.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

# ----------------------------------------------------------------------------- reading YAML

#: Bytes of the largest pipeline file read.  Real pipelines are KiBs; one of
#: thousands of streams, or with inline initial values of tens of thousands of
#: elements, is about 1 MiB.  What a file costs to load is its values (below);
#: this refuses a file that is mostly something else (comments, padding, a
#: device that never ends) before reading it all.
MAX_FILE_BYTES = 4 * 1024 * 1024

#: Values (nodes: scalars, lists, mappings) of the YAML document with every
#: alias expanded.  A 1 MiB pipeline of thousands of streams holds about
#: 150,000; one of 200,000 inline numbers, 200,000.  Loading costs about 10 us
#: and 0.4 KB per value here, so the worst file that passes takes ~5 s and
#: ~200 MB.  An alias bomb (a list of ten aliases of a list of ten aliases ...)
#: reaches it after six levels instead of expanding to billions, and anything
#: that walks the loaded data (copies, error messages, JSON) walks at most this.
MAX_DOCUMENT_NODES = 500_000

#: Aliases (``*name``) in one document.  A pipeline that merges one block of
#: defaults into each of hundreds of kernels uses hundreds.
MAX_ALIASES = 10_000

#: Nesting of mappings and sequences.  Pipelines nest about 8 levels (the
#: document, a section, an entry, its parameters, a matrix of initial values);
#: the loader and every walker of the data recurse once or twice per level,
#: so this stays far below Python's recursion limit.
MAX_NESTING_DEPTH = 64

#: Decimal digits of an integer.  Python's own default for converting text to
#: int (``sys.get_int_max_str_digits``); a bigger one could not even be printed
#: in an error message.  Hexadecimal, octal and binary ones are held to the same
#: magnitude (``MAX_INTEGER``).
MAX_INTEGER_DIGITS = 4300
MAX_INTEGER = 10 ** MAX_INTEGER_DIGITS

# ----------------------------------------------------------------------------- error messages

#: Characters of a user's value quoted in an error message (``short_repr``).
MAX_QUOTED_CHARS = 80

#: Characters of one error message before its location; longer ones are cut.
MAX_MESSAGE_CHARS = 1000

#: Errors listed for one file; the rest are counted.  A file repeating one
#: mistake thousands of times needs one screen, not thousands.
MAX_REPORTED_ERRORS = 100

# ----------------------------------------------------------------------------- custom_operation

#: Characters of a ``custom_operation`` expression.  Real ones are one line;
#: this bounds the instructions (and full-size temporaries) one may compile to.
MAX_OPERATION_CHARS = 4096

#: Nesting of an expression: each operator, call or unary sign is a level,
#: so a sum of n terms nests n deep.  The compiler recurses (at most twice) per
#: level, which keeps it far below Python's recursion limit.
MAX_OPERATION_DEPTH = 200

# ----------------------------------------------------------------------------- names and sizes

#: Bytes a segment's file name may have.  A /dev/shm name has at most 255
#: bytes (NAME_MAX), and a segment is first created under a hidden temporary
#: name ``.<name>.<pid>.<8 hex>.tmp`` (``shm/segment.py``): 22 bytes more with
#: a 7-digit pid.
MAX_SEGMENT_NAME_BYTES = 255 - 22

#: Bytes of a namespace: the segment header's namespace field
#: (``layout.H_NAMESPACE``, NUL-terminated).
MAX_NAMESPACE_BYTES = 127

#: Bytes of a kernel name: the worker telemetry record's name field
#: (``layout.REC_NAME``, NUL-terminated), which the daemon reads back.
MAX_KERNEL_NAME_BYTES = 63

#: Bytes of a ``gpu_device`` (``layout.H_GPU_DEVICE``).
MAX_GPU_DEVICE_BYTES = 31

#: Kernels of one pipeline: the worker records of its control block.
MAX_KERNELS = 256

#: Dimensions of a stream (``layout.H_SHAPE``).
MAX_DIMENSIONS = 8

#: Bytes of one stream's payload.  Its ring (up to 4 slots and the header)
#: must fit a signed 64-bit file size and NumPy's index type; no machine has
#: the exbibyte this allows, so it refuses only nonsense (which would otherwise
#: fail while the streams are built, with a number overflow).
MAX_STREAM_BYTES = 1 << 60


# ----------------------------------------------------------------------------- helpers


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = MAX_QUOTED_CHARS
_REPR.maxother = MAX_QUOTED_CHARS
for _attribute in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_REPR, _attribute, 8)


def _repr_int(value: int, level: int) -> str:
    bits = value.bit_length()
    if bits > 128:  # never converts more than 40 digits (a huge int cannot even be converted)
        return f"<an integer of about {int(bits * 0.30103) + 1} digits>"
    return repr(value)


_REPR.repr_int = _repr_int  # type: ignore[method-assign]


def short_repr(value: Any) -> str:
    """``repr(value)`` for messages: nested and long values elided, never more than ~100 characters.

    The cost is bounded too: a list of a million items is not walked.
    """
    text = _REPR.repr(value)
    if len(text) > MAX_QUOTED_CHARS + 20:
        text = text[:MAX_QUOTED_CHARS] + "..."
    return text


def bounded_message(message: str) -> str:
    """``message`` cut to ``MAX_MESSAGE_CHARS`` (before its location is appended)."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[:MAX_MESSAGE_CHARS] + f"... ({len(message) - MAX_MESSAGE_CHARS} more characters)"


def utf8_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


#: The shared namespace of pipelines that name none (``layout.DEFAULT_NAMESPACE``).
DEFAULT_NAMESPACE = "default"


def segment_name_bytes(namespace: str | None, stream: str | None = None) -> int:
    """Bytes of ``shmpiped.<namespace>[.<stream>]`` as ``layout`` names the file.

    '%', '.' and '@' of the namespace are percent-escaped there (3 bytes each).
    """
    namespace = namespace or DEFAULT_NAMESPACE
    escaped = utf8_length(namespace) + 2 * sum(namespace.count(char) for char in "%.@")
    return len("shmpiped.") + escaped + (0 if stream is None else 1 + utf8_length(stream))


def namespace_problem(namespace: str) -> str | None:
    """Why ``namespace`` cannot name segments (header field, file name length); None if it can."""
    size = utf8_length(namespace)
    if size > MAX_NAMESPACE_BYTES:
        return (f"pipeline config field 'namespace' is {size} bytes long; segment headers hold at most "
                f"{MAX_NAMESPACE_BYTES} bytes: choose a shorter namespace")
    block = segment_name_bytes(namespace, "s")  # with a stream of one character
    if block > MAX_SEGMENT_NAME_BYTES:
        return (f"pipeline config field 'namespace' {short_repr(namespace)} makes /dev/shm file names of "
                f"{block} bytes or more ('%', '.' and '@' take 3 bytes each there), over the "
                f"{MAX_SEGMENT_NAME_BYTES} bytes a segment name may have: choose a shorter namespace")
    return None


def stream_name_problem(name: str, namespace: str | None) -> str | None:
    """Why stream ``name`` in ``namespace`` cannot name its /dev/shm file; None if it can."""
    size = segment_name_bytes(namespace, name)
    if size <= MAX_SEGMENT_NAME_BYTES:
        return None
    room = MAX_SEGMENT_NAME_BYTES - (size - utf8_length(name))
    return (f"shared memory name {short_repr(name)} is {utf8_length(name)} bytes long: its /dev/shm file "
            f"name 'shmpiped.<namespace>.<name>' would be {size} bytes, over the {MAX_SEGMENT_NAME_BYTES} "
            f"bytes a segment name may have; in namespace {short_repr(namespace or DEFAULT_NAMESPACE)} "
            f"a stream name may have at most {max(room, 0)} bytes")


def kernel_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a kernel's worker record; None if it can."""
    size = utf8_length(name)
    if size > MAX_KERNEL_NAME_BYTES:
        return (f"kernel name {short_repr(name)} is {size} bytes long; a worker's telemetry record holds "
                f"at most {MAX_KERNEL_NAME_BYTES} bytes: choose a shorter name")
    return None


def shape_problem(name: str, shape: tuple[int, ...], itemsize: int) -> str | None:
    """Why a stream of ``shape`` cannot be laid out in a segment; None if it can."""
    if len(shape) > MAX_DIMENSIONS:
        return (f"shape for {short_repr(name)} has {len(shape)} dimensions; a stream has at most "
                f"{MAX_DIMENSIONS} dimensions")
    nbytes = math.prod(shape) * itemsize
    if nbytes > MAX_STREAM_BYTES:
        return (f"shape for {short_repr(name)} makes a payload of {_magnitude(nbytes)} bytes, over the "
                "2**60 bytes (1 EiB) one stream may have")
    return None


def _magnitude(number: int) -> str:
    return f"about 2**{number.bit_length() - 1}" if number.bit_length() > 64 else str(number)
