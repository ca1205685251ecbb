"""Lazy package attributes: a package names what it exports, and each is imported on first access.

``import grpo_lightning`` then costs almost nothing, and ``from grpo_lightning import GRPOModule``
loads only what the module needs: the reward model, math-verify, the data stack (``datasets``) and
the command line (``jsonargparse``) load when something first uses them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` for ``package`` (PEP 562).

    ``exports`` maps an attribute to the module that defines it; an attribute named like the last part
    of its module path (``"rewards": "grpo_lightning.rewards"``) is that module itself. The first
    access imports the module and caches the value in ``namespace`` (the package's ``globals()``), so
    later accesses are plain lookups.
    """

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(target)
        value = module if target.rpartition(".")[2] == name else getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
