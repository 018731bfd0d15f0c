"""Starting shmpiped's own Python child processes so that they import what this process imported.

Workers, viewers and benchmark helpers are fresh interpreters, never forks
(a fork would inherit threads, locks and CUDA state).  A fresh interpreter
started with ``-m`` puts the current directory first on ``sys.path``: run from
a source checkout, it would import the checkout's uncompiled ``shmpiped/``
instead of the installed package the parent runs.  So every child starts as
``python -c BOOTSTRAP module:function ARGS...``: the bootstrap replaces
``sys.path`` with the parent's (handed over in the environment) before it
imports anything else, then calls ``module.function()`` with ``sys.argv`` set
to ``[module:function, *ARGS]``.

A kernel class defined in the user's script lives in ``__main__``.  As
multiprocessing's spawn does, a worker that needs such a class re-runs the
parent's main module under the name ``__mp_main__`` (so its
``if __name__ == "__main__":`` block does not run) and makes it ``__main__``
before it unpickles anything.  ``why_unloadable`` tells the parent, before any
worker starts, when a class cannot be loaded that way.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import types

from .errors import SystemLimitError

#: Environment variable carrying the parent's sys.path to the child (hex of the NUL-joined entries).
PATH_VARIABLE = "SHMPIPED_PARENT_SYS_PATH"

# Only `os` and `sys` are touched before sys.path is replaced; both are loaded by
# the time a program's code runs, so neither is looked up in the current directory.
BOOTSTRAP = (
    "import os, sys\n"
    f"sys.path[:] = bytes.fromhex(os.environ.pop({PATH_VARIABLE!r})).decode('utf-8', 'surrogateescape')"
    ".split('\\0')\n"
    "sys.argv[:] = sys.argv[1:]\n"
    "import importlib\n"
    "module, _, function = sys.argv[0].partition(':')\n"
    "sys.exit(getattr(importlib.import_module(module), function)())\n"
)

#: True while this process re-runs its parent's main module (see ``import_parent_main``).
running_parent_main = False


def parent_sys_path() -> list[str]:
    """This process's sys.path as a child should see it ('' made the absolute current directory)."""
    entries = []
    for entry in sys.path:
        if isinstance(entry, (str, bytes, os.PathLike)):
            entries.append(os.fsdecode(entry) or os.getcwd())
    return entries


def child_environment(extra: dict | None = None) -> dict:
    """os.environ plus ``extra`` plus the parent's sys.path for the bootstrap."""
    encoded = "\0".join(parent_sys_path()).encode("utf-8", "surrogateescape").hex()
    return {**os.environ, **(extra or {}), PATH_VARIABLE: encoded}


def child_argv(target: str, *args: str) -> list[str]:
    """The command line of a child that runs ``target`` ("module:function") with ``args``."""
    flags = subprocess._args_from_interpreter_flags()  # -W, -X, -O ... as the parent got them
    return [sys.executable, *flags, "-c", BOOTSTRAP, target, *map(str, args)]


def start_child(target: str, *args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """Start ``target`` ("module:function") in a fresh interpreter that imports what this one imported.

    Out of file descriptors, memory or processes, it raises ``SystemLimitError`` naming the limit.
    """
    try:
        return subprocess.Popen(child_argv(target, *args), env=child_environment(env), **popen)
    except (OSError, MemoryError) as exc:
        limit = SystemLimitError.of(exc, f"starting a process for {target} {' '.join(args)}".rstrip(),
                                    starting_process=True)
        if limit is None:
            raise
        raise limit from exc


# ----------------------------------------------------------------------------- the parent's main module


def main_module_reference() -> dict | None:
    """How a child re-imports this process's ``__main__``: its module name or file; None when impossible."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in (None, "__main__"):
        return {"name": spec.name}  # run with `python -m package.module`
    path = getattr(main, "__file__", None)
    if path and os.path.isfile(path):
        return {"path": os.path.abspath(path)}
    return None  # an interactive session, `python -c`, or a script read from stdin


def import_parent_main(reference: dict) -> None:
    """Re-run the parent's main module as ``__mp_main__`` and make it this process's ``__main__``."""
    global running_parent_main
    running_parent_main = True
    try:
        if "name" in reference:
            namespace = runpy.run_module(reference["name"], run_name="__mp_main__", alter_sys=False)
        else:
            namespace = runpy.run_path(reference["path"], run_name="__mp_main__")
    finally:
        running_parent_main = False
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(namespace)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def why_unloadable(cls) -> str | None:
    """Why a child process could not import ``cls`` by module and qualified name; None when it can."""
    module_name = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", "")
    if "<locals>" in qualname:
        return "it is defined inside a function; define it at module level"
    module = sys.modules.get(module_name)
    if module is None:
        return f"its module {module_name!r} is not imported in this process"
    if module_name == "__main__":
        if main_module_reference() is None:
            return ("it is defined in __main__, which has no file to re-run (an interactive session, "
                    "python -c or a script on stdin); define it in a module or a script file")
    elif getattr(module, "__spec__", None) is None:
        return "its module was created at run time, not imported from a file on sys.path"
    target = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if target is not cls:
        return f"{module_name}.{qualname} names another object (was the class replaced or renamed?)"
    return None
