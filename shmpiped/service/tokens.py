"""Bearer tokens of the HTTP control plane: the token file and the scope a request's token grants.

The token file (``--token-file``, ``$SHMPIPED_TOKEN_FILE``) is UTF-8 text, one
grant a line: ``TOKEN`` alone grants ``admin``; ``SCOPE TOKEN`` grants SCOPE
(``read`` < ``control`` < ``admin``).  Blank lines and lines starting with
``#`` are ignored; a token listed twice keeps the highest scope it is given.
A Kubernetes Secret key mounted as a file (one bare token, perhaps a trailing
newline) is a valid token file as it is.

Loading refuses, naming the file (and the line where there is one), a file
that is missing, unreadable, readable by others (``chmod o-r``), empty, or
that names an unknown scope; the daemon exits 78 on it at start.

A presented token is compared with every known token with
``hmac.compare_digest`` and without stopping at the first match, so the time
a check takes says nothing about which token, or how much of one, matched.
Tokens never appear in a log line or an error message.
"""

from __future__ import annotations

import hmac
import os
import stat
from dataclasses import dataclass

from ..errors import ConfigValidationError

__all__ = ["SCOPES", "TokenFileError", "TokenTable", "load_token_file", "scope_level"]

SCOPES = ("read", "control", "admin")  # each implies the ones before it
MAX_TOKEN_FILE_BYTES = 64 * 1024


class TokenFileError(ConfigValidationError):
    """The token file cannot be used; the message names the file, the line and the fix."""


def scope_level(scope: str) -> int:
    return SCOPES.index(scope)


@dataclass(frozen=True)
class TokenTable:
    """The known tokens (as bytes) and the scope level each grants; ``source`` says where they came from."""

    grants: tuple[tuple[bytes, int], ...] = ()
    source: str = ""
    has_read_line: bool = False        # some line grants ``read``: read endpoints need a token

    @property
    def enabled(self) -> bool:
        """Are control requests possible at all (some token is configured)?"""
        return bool(self.grants)

    @property
    def protects_reads(self) -> bool:
        """Does some line of the file grant ``read``?  Then read endpoints need a token too."""
        return self.has_read_line

    def level_of(self, presented: str | None) -> int | None:
        """The scope level ``presented`` grants, or None when it matches no token (constant time in it)."""
        if presented is None:
            return None
        candidate = presented.encode("utf-8", "surrogateescape")
        granted = -1
        for token, level in self.grants:  # every token is compared: no early exit on a match
            match = hmac.compare_digest(candidate, token)
            granted = max(granted, level if match else -1)
        return granted if granted >= 0 else None

    @classmethod
    def single(cls, token: str, source: str = "--token") -> "TokenTable":
        if not token or any(ch.isspace() for ch in token):
            raise TokenFileError(f"{source}: a token must be one word without spaces")
        return cls(((token.encode(), scope_level("admin")),), source)


def parse_token_text(text: str, source: str) -> TokenTable:
    """The grants of a token file's ``text``; ``source`` names it in errors."""
    levels: dict[bytes, int] = {}
    read_line = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) == 1:
            scope, token = "admin", words[0]
        elif len(words) == 2:
            scope, token = words
        else:
            raise TokenFileError(f"{source}, line {number}: expected 'TOKEN' or 'SCOPE TOKEN' "
                                 f"(SCOPE one of {', '.join(SCOPES)}), found {len(words)} words")
        if scope not in SCOPES:
            raise TokenFileError(f"{source}, line {number}: unknown scope {scope!r}: use one of "
                                 f"{', '.join(SCOPES)}")
        read_line = read_line or scope == "read"
        key = token.encode("utf-8")
        levels[key] = max(levels.get(key, -1), scope_level(scope))
    if not levels:
        raise TokenFileError(f"{source}: the token file holds no token: write one token per line "
                             f"('TOKEN' for admin, or 'SCOPE TOKEN')")
    return TokenTable(tuple(levels.items()), source, read_line)


def load_token_file(path: str) -> TokenTable:
    """Read and check the token file at ``path``; raises TokenFileError saying what to change."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TokenFileError(f"{path}: token file not found: create it (one token per line) or fix "
                             "--token-file / SHMPIPED_TOKEN_FILE") from None
    except OSError as exc:
        raise TokenFileError(f"{path}: token file unreadable: {exc.strerror}: let the daemon's user "
                             "read it") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileError(f"{path}: the token file must be a regular file")
        if info.st_mode & 0o004:
            raise TokenFileError(f"{path}: the token file is readable by every user: run `chmod o-r {path}`")
        data = os.read(fd, MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise TokenFileError(f"{path}: token file unreadable: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise TokenFileError(f"{path}: the token file is larger than {MAX_TOKEN_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise TokenFileError(f"{path}, line {line}: not UTF-8 text") from None
    return parse_token_text(text, path)
