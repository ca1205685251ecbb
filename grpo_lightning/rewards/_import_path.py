"""Importing a reward given by import path (``my_rewards:accuracy``), with errors that say what to do.

A module in the current folder is found as ``python -m`` would find it: the ``grpo-lightning``
command (a console script) does not put the current folder on ``sys.path``, so without this
``--model.reward_funcs '[my_rewards:accuracy]'`` run next to ``my_rewards.py`` would fail.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from importlib.machinery import PathFinder
from types import ModuleType
from typing import Any


def _on_sys_path(folder: str) -> bool:
    """``folder`` is searched by imports (``""`` and relative entries count from the current folder)."""
    return any(os.path.abspath(entry or os.curdir) == folder for entry in sys.path if isinstance(entry, str))


def _findable(top: str) -> bool:
    """A top-level module or package ``top`` is already imported or can be found on ``sys.path``."""
    if top in sys.modules:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _origin(module_name: str) -> str:
    """Where ``module_name`` would be loaded from, for messages (without running it)."""
    try:
        spec = importlib.util.find_spec(module_name)
    except Exception:  # a parent package that fails to import: the error itself says more
        spec = None
    origin = getattr(spec, "origin", None)
    return origin if isinstance(origin, str) else "a namespace package" if spec else "location unknown"


def import_reward_module(spec: str, module_name: str) -> ModuleType:
    """Import ``module_name`` for the reward ``spec``, finding it in the current folder as well.

    The current folder is appended to ``sys.path`` (only when the module is nowhere else and is
    there): appended, not put first as ``python -m`` does, so that a file in it (``datasets/``, a
    ``json.py``) never hides an installed module that something else imports. Worker processes
    (``reward_workers``) start with this ``sys.path``, so they find the module too.

    Raises ValueError naming the spec, the module and the fix when it cannot be imported.
    """
    top = module_name.partition(".")[0]
    cwd = os.path.abspath(os.curdir)
    cwd_searched = _on_sys_path(cwd)
    if not cwd_searched and not _findable(top) and PathFinder.find_spec(top, [cwd]) is not None:
        sys.path.append(cwd)
        importlib.invalidate_caches()
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            where = (
                f"sys.path, which includes the current folder {cwd}"
                if cwd_searched
                else f"sys.path and the current folder {cwd} (as `python -m` does)"
            )
            raise ValueError(
                f"Could not import reward {spec!r}: no module named {missing!r} in {where}. Run from the folder "
                f"that holds {top}.py (or the package folder {top}/), or add that folder to PYTHONPATH (e.g. "
                "PYTHONPATH=/path/to/folder grpo-lightning fit ...)."
            ) from err
        raise ValueError(
            f"Could not import reward {spec!r}: its module {module_name!r} ({_origin(module_name)}) was found, "
            f"but it imports {missing!r}, which is not installed for this Python ({sys.executable}): {err}. "
            f"Install the package that provides {missing!r} in this environment, or fix that import."
        ) from err
    except Exception as err:  # a syntax error, an exception raised while the module runs
        raise ValueError(
            f"Could not import reward {spec!r}: importing its module {module_name!r} "
            f"({_origin(module_name)}) raised {type(err).__name__}: {err}"
        ) from err


def reward_attribute(spec: str, module: ModuleType, attr: str) -> Any:
    """``module.attr`` for the reward ``spec``; a missing one names the module's file and its functions."""
    try:
        return getattr(module, attr)
    except AttributeError as err:
        functions = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        file = getattr(module, "__file__", None) or "a namespace package"
        hint = ""
        top = module.__name__.partition(".")[0]
        cwd = os.path.abspath(os.curdir)
        mine = os.path.join(cwd, f"{top}.py")
        if os.path.exists(mine) and not str(file).startswith(cwd + os.sep):
            hint = (
                f" {mine} is not the module imported: another module named {top!r} comes first on sys.path; "
                "rename your file."
            )
        raise ValueError(
            f"Could not import reward {spec!r}: module {module.__name__!r} ({file}) has no attribute {attr!r}. "
            f"Its functions: {', '.join(functions) or '(none)'}.{hint}"
        ) from err
