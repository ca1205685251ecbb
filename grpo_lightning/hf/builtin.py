"""Built-in model aliases, ``"builtin:<name>"``: the models shipped inside the package (``assets/``)
and those of other wheels (:data:`~grpo_lightning.hf.gguf.WHEEL_MODELS`).

Both the loading code (:mod:`grpo_lightning.hf.models`) and the model card
(:mod:`grpo_lightning.hf.model_card`) tell an alias from a Hub id or a path; they read it here.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from grpo_lightning.hf.gguf import WHEEL_MODELS, wheel_model_path

BUILTIN_PREFIX = "builtin:"


def _assets() -> Path:
    """The folder of the models shipped inside this installation."""
    return Path(str(importlib.resources.files("grpo_lightning") / "assets"))


def builtin_models() -> list[str]:
    """The aliases ``"builtin:<name>"``: the models inside the package, and those of other wheels
    (:data:`~grpo_lightning.hf.gguf.WHEEL_MODELS`; they load once their wheel is installed)."""
    assets = _assets()
    shipped = [p.name for p in assets.iterdir() if p.is_dir()] if assets.is_dir() else []
    return sorted(BUILTIN_PREFIX + name for name in [*shipped, *WHEEL_MODELS])


def builtin_model_path(alias: str) -> str:
    """The folder inside the package (or the GGUF file of a wheel model) of ``alias``
    (``"builtin:<name>"``); an unknown name is an error that lists the known ones."""
    name = alias[len(BUILTIN_PREFIX) :]
    if name in WHEEL_MODELS:
        return wheel_model_path(name)
    folder = _assets() / name
    if not folder.is_dir():
        raise ValueError(
            f"Unknown built-in model {alias!r}. Available: {', '.join(builtin_models()) or '(none installed)'}; "
            "or pass a Hub id, a local path, or a built PreTrainedModel."
        )
    return str(folder)


def builtin_alias(path: str | os.PathLike[str]) -> str | None:
    """``"builtin:<name>"`` when ``path`` is the folder of a model shipped inside this package, else None.

    A built-in model's folder lies inside this installation (site-packages): files that name it, such
    as an exported adapter's base, name the alias instead, which any installation resolves.
    """
    assets = _assets().resolve()
    try:
        where = Path(path).expanduser().resolve()
    except (OSError, RuntimeError):  # not a path at all
        return None
    return BUILTIN_PREFIX + where.name if where.parent == assets and where.is_dir() else None
