"""Input files named on the ``shmpiped`` command line: one that is missing or unreadable exits 66 (EX_NOINPUT)."""

from __future__ import annotations

import os

import click

from .service.daemon import EXIT_NOINPUT


class NoInput(click.ClickException):
    """An input file that does not exist or cannot be read: exit 66 (EX_NOINPUT)."""

    exit_code = EXIT_NOINPUT


def input_problem(path: str) -> str | None:
    """Why ``path`` cannot be read as an input file; None when it can."""
    if not os.path.exists(path):
        return f"{path}: no such file"
    if not os.access(path, os.R_OK):
        return f"{path}: permission denied (not readable by this user)"
    return None


def require_input(ctx, param, value):
    """A click callback: an input file argument that must exist and be readable (else exit 66)."""
    problem = value and input_problem(value)
    if problem:
        raise NoInput(problem)
    return value
