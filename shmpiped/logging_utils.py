"""Console logging for scripts: ``configure_colored_logging`` and its ``ColorFormatter`` (shmpipeline's names).

Colours only where they can be seen: on a terminal, and not when ``NO_COLOR``
is set, so logs that go to the journal or a file stay plain text.  The daemon
configures its own logging; this is for the user's scripts.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO

__all__ = ["ColorFormatter", "DEFAULT_FORMAT", "configure_colored_logging", "get_logger"]

DEFAULT_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


class ColorFormatter(logging.Formatter):
    """A formatter that paints the level name with an ANSI colour per level."""

    RESET = "\033[0m"
    COLORS = {
        logging.DEBUG: "\033[36m",     # cyan
        logging.INFO: "\033[32m",      # green
        logging.WARNING: "\033[33m",   # yellow
        logging.ERROR: "\033[31m",     # red
        logging.CRITICAL: "\033[35m",  # magenta
    }

    def __init__(self, fmt: str = DEFAULT_FORMAT, *, use_color: bool = True) -> None:
        super().__init__(fmt)
        self.use_color = use_color

    def format(self, record: logging.LogRecord) -> str:
        color = self.COLORS.get(record.levelno) if self.use_color else None
        if color is None:
            return super().format(record)
        plain = record.levelname
        record.levelname = f"{color}{plain}{self.RESET}"
        try:
            return super().format(record)
        finally:
            record.levelname = plain


def _wants_color(stream: IO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return "NO_COLOR" not in os.environ and callable(isatty) and bool(isatty())


def get_logger(name: str) -> logging.Logger:
    """The logger ``shmpiped.<name>``."""
    return logging.getLogger(f"shmpiped.{name}")


def configure_colored_logging(*, level: int = logging.INFO, fmt: str = DEFAULT_FORMAT,
                              stream: IO | None = None) -> None:
    """Send the root logger's records to ``stream`` (stdout), coloured on a terminal.

    Replaces the root logger's handlers, like ``logging.basicConfig(force=True)``.
    """
    stream = sys.stdout if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ColorFormatter(fmt, use_color=_wants_color(stream)))
    logging.basicConfig(level=level, handlers=[handler], force=True)
