"""Lazy package attributes: a package names what it exports, and each is imported on first access.

``import grpo_lightning`` then costs almost nothing, and ``from grpo_lightning import GRPOModule``
loads only what the module needs: the reward model, math-verify, the data stack (``datasets``) and
the command line (``jsonargparse``) load when something first uses them. :func:`instance_check_type`
keeps a signature's types from importing their library (transformers' modeling code, ``datasets``)
when the command line is built.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str,
    exports: Mapping[str, Iterable[str]],
    namespace: dict[str, Any],
    submodules: Iterable[str] = (),
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` for ``package`` (PEP 562).

    ``exports`` maps a module path to the names it defines that the package exports
    (``{"grpo_lightning.data.prompts": ("PromptCollator", ...)}``); each of ``submodules``
    (``"grpo_lightning.rewards.length"``) is an attribute named like the last part of its path. The
    first access imports the module and caches the value in ``namespace`` (the package's ``globals()``),
    so later accesses are plain lookups.
    """
    targets = {path.rpartition(".")[2]: path for path in submodules}
    module_names = set(targets)  # the names that stand for a submodule itself
    for module, names in exports.items():
        for name in names:
            if name in targets:
                raise ValueError(f"{package}: {name!r} is exported by both {targets[name]} and {module}.")
            targets[name] = module

    def __getattr__(name: str) -> Any:
        target = targets.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(target)
        value = module if name in module_names else getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *targets})

    return __getattr__, __dir__


class _LazyInstanceCheck(type):
    """The metaclass of :func:`instance_check_type`'s classes."""

    _module: str
    _classes: tuple[str, ...]

    def __instancecheck__(cls, value: Any) -> bool:
        # No instance can exist before its module is imported, so the check never needs to import it.
        module = sys.modules.get(cls._module)
        targets = tuple(getattr(module, name, None) for name in cls._classes) if module else ()
        return any(target is not None and isinstance(value, target) for target in targets)


def instance_check_type(name: str, defined_in: str, module: str, classes: tuple[str, ...], doc: str) -> type:
    """A class standing for ``module``'s ``classes`` in a signature without importing ``module``:
    ``isinstance(value, it)`` is ``isinstance(value, module.<class>)`` for any of ``classes``.

    jsonargparse builds the command line from signatures, and resolving a type there would import its
    library just to print ``--help``. ``defined_in`` is the module that exposes the class (its import path).
    """
    namespace = {"__module__": defined_in, "__qualname__": name, "__doc__": doc}
    cls = _LazyInstanceCheck(name, (), namespace)
    cls._module, cls._classes = module, classes
    return cls
