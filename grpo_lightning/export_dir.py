"""The export folder: checked before training, and replaced whole, never merged into.

``save_pretrained`` writes its files into a folder and leaves whatever else is there: a LoRA
adapter left by an earlier export would be loaded on top of a new full model, and another model's
``config.json`` would be overwritten without a word. So a folder that is not empty is refused unless
``overwrite`` is set, and then the new export replaces it as a whole.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_export_dir(path: str | os.PathLike[str], overwrite: bool) -> None:
    """Raise before any training when ``path`` cannot receive the export.

    A file there, or a folder with files while ``overwrite`` is False, is refused with the fix.
    """
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"--export.dir {target} is a file, not a folder: give a folder path.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        contents = sorted(p.name for p in target.iterdir())
        raise ValueError(
            f"--export.dir {target} already holds files ({', '.join(contents[:5])}{', ...' if len(contents) > 5 else ''}): "
            "exporting into it would mix the new model with them. Give an empty or new folder, or set "
            "--export.overwrite true to replace the folder as a whole."
        )
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--export.dir {target}: the folder {parent} is not writable.")


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Around an export into ``path``: the old folder is moved aside first and deleted once the new
    export is complete; if the export fails, the old folder is put back."""
    target = Path(path).expanduser()
    aside = target.with_name(f".{target.name}.previous-{os.getpid()}")
    moved = target.is_dir() and any(target.iterdir())
    if moved:
        target.rename(aside)
    try:
        yield target
    except BaseException:
        if moved:
            shutil.rmtree(target, ignore_errors=True)
            aside.rename(target)
        raise
    if moved:
        shutil.rmtree(aside, ignore_errors=True)
