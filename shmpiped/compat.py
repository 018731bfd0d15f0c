"""The ``shmpipeline`` import name served by shmpiped, for code written against shmpipeline 1.3.0.

Scripts and plugins import ``shmpipeline``, ``shmpipeline.kernel``,
``shmpipeline.logging_utils`` ...; shmpiped's public modules carry the same
names (``shmpiped.kernel`` ...).  This module maps one onto the other, by
module object: ``shmpipeline.config`` *is* ``shmpiped.config``, so classes,
``isinstance`` and pickles agree.

- ``install_shmpipeline_fallback()`` adds the mapping where the real
  shmpipeline is not installed.  Its finder sits at the end of
  ``sys.meta_path``, so an installed shmpipeline is always found first and
  wins; the registry calls it before importing a plugin, the worker before it
  unpickles its kernel.  Idempotent and cheap: it imports nothing but
  ``importlib``.
- ``alias_shmpipeline()`` makes the mapping unconditional; the optional
  compatibility distribution (``compat/shmpipeline`` in the repository) calls
  it from its ``shmpipeline/__init__.py``.
- ``plugin_config_errors()``: the exception classes by which a plugin says a
  configuration is invalid (shmpiped's, and the real shmpipeline's when that
  is what the plugin imported).

A name shmpiped does not provide (``shmpipeline.gui``) stays an ordinary
``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading

__all__ = ["alias_shmpipeline", "install_shmpipeline_fallback", "plugin_config_errors"]

ALIAS = "shmpipeline"
TARGET = "shmpiped"

_install_lock = threading.Lock()


def _target_of(fullname: str) -> str:
    return TARGET + fullname[len(ALIAS):]


def _aliased() -> bool:
    """Is ``shmpipeline`` in this process shmpiped itself (not the real package)?"""
    module = sys.modules.get(ALIAS)
    return module is not None and module is sys.modules.get(TARGET)


class _AliasLoader(importlib.abc.Loader):
    """Loads ``shmpipeline.X`` by importing ``shmpiped.X`` and registering that module under both names."""

    def create_module(self, spec):
        return None  # a placeholder, replaced in sys.modules by exec_module

    def exec_module(self, module) -> None:
        # importlib returns whatever sys.modules holds under the name after exec_module.
        sys.modules[module.__name__] = importlib.import_module(_target_of(module.__name__))


_LOADER = _AliasLoader()


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``shmpipeline`` (``top_level``) or its submodules once it is aliased."""

    def __init__(self, top_level: bool) -> None:
        self.top_level = top_level

    def find_spec(self, fullname, path=None, target=None):
        if fullname == ALIAS:
            if not self.top_level:
                return None
        elif not (fullname.startswith(ALIAS + ".") and _aliased()):
            return None
        try:
            found = importlib.util.find_spec(_target_of(fullname))
        except (ImportError, ValueError):
            found = None
        if found is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _LOADER)

    def __repr__(self) -> str:
        return f"<shmpiped.compat finder for {ALIAS!r}{'' if self.top_level else ' submodules'}>"


def _finders() -> tuple[_AliasFinder | None, _AliasFinder | None]:
    top = sub = None
    for finder in sys.meta_path:
        if isinstance(finder, _AliasFinder):
            if finder.top_level:
                top = finder
            else:
                sub = finder
    return top, sub


def install_shmpipeline_fallback() -> None:
    """Serve ``import shmpipeline[.X]`` from shmpiped where no real shmpipeline is installed.

    The top-level finder goes last on ``sys.meta_path`` (every installed
    package is found before it); the submodule finder goes first, but only
    answers once ``shmpipeline`` is shmpiped, so that ``shmpipeline.config``
    is the module object ``shmpiped.config`` rather than a second copy of it.
    """
    top, sub = _finders()
    if top is not None and sub is not None:
        return
    with _install_lock:
        top, sub = _finders()
        if sub is None:
            sys.meta_path.insert(0, _AliasFinder(top_level=False))
        if top is None:
            sys.meta_path.append(_AliasFinder(top_level=True))


def alias_shmpipeline():
    """Make ``shmpipeline`` shmpiped in this process, whatever else is installed; returns the package."""
    package = importlib.import_module(TARGET)
    install_shmpipeline_fallback()
    sys.modules[ALIAS] = package
    return package


def plugin_config_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that mean "this configuration is invalid" when a plugin raises them.

    shmpiped's ``ConfigValidationError`` (also shmpipeline's when aliased) and,
    when the real shmpipeline is loaded, its ``ConfigValidationError``, which
    derives from ``Exception`` only.
    """
    from .errors import ConfigValidationError

    errors = sys.modules.get(ALIAS + ".errors")
    foreign = getattr(errors, "ConfigValidationError", None)
    if isinstance(foreign, type) and issubclass(foreign, BaseException) and foreign is not ConfigValidationError:
        return (ConfigValidationError, foreign)
    return (ConfigValidationError,)
