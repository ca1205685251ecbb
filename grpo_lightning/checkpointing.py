"""Checkpoint files that are either whole or absent, and clear errors for broken ones.

Lightning's default writer stages a checkpoint in the system temp folder and then moves it over
the target: across file systems that move is a copy, so a full disk or a kill mid-write leaves a
truncated ``last.ckpt`` behind. :class:`AtomicCheckpointIO` writes a temp file *in the target's own
folder*, flushes it to disk and renames it over the target (``os.replace``, atomic on POSIX and
Windows): the old file stays intact until the new one is complete.

Reading, it tells a checkpoint that is empty, truncated or not a checkpoint at all apart from other
errors, and names the newest complete checkpoint in the same folder to resume from instead.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

CKPT_SUFFIX = ".ckpt"


class CheckpointFileError(RuntimeError):
    """A checkpoint file is empty, truncated, or not a checkpoint."""


def is_local_path(path: str | os.PathLike[str]) -> bool:
    """True for a plain file-system path (no ``s3://``-style URL)."""
    return "://" not in str(path) or str(path).startswith("file://")


def _local(path: str | os.PathLike[str]) -> Path:
    text = str(path)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``.

    The bytes go to a hidden temp file next to ``path`` (same file system, so the final rename is
    atomic), are flushed with ``fsync``, and only then replace ``path``. On any error (a full disk,
    an interrupt) the temp file is removed and ``path`` keeps its previous content.
    """
    target = _local(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(err, Exception):  # not KeyboardInterrupt / SystemExit: those pass unchanged
            state = "is unchanged" if target.exists() else "was not created"
            raise OSError(
                f"Writing the checkpoint {target} failed ({type(err).__name__}: {err}); the file there {state}. "
                "A full disk is the usual cause: free space in that folder (a checkpoint is written next to "
                "the previous one before it replaces it)."
            ) from err
        raise
    # The rename itself is durable only once the folder's entry is on disk (POSIX).
    with contextlib.suppress(OSError):
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def looks_complete(path: str | os.PathLike[str]) -> bool:
    """Cheap check that ``path`` is a whole ``torch.save`` file: a zip archive whose central
    directory (written last) can be read. A truncated or empty file fails it."""
    try:
        with zipfile.ZipFile(_local(path)) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def last_good_checkpoint(
    folder: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None
) -> Path | None:
    """The most recently written complete ``*.ckpt`` in ``folder`` other than ``exclude`` (None if none)."""
    folder, skip = Path(folder), Path(exclude).resolve() if exclude is not None else None
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.glob(f"*{CKPT_SUFFIX}") if p.is_file() and p.resolve() != skip]
    for p in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        if looks_complete(p):
            return p
    return None


def broken_checkpoint_error(path: str | os.PathLike[str], what: str) -> CheckpointFileError:
    """The error for an unreadable checkpoint: what is wrong, and which checkpoint to use instead."""
    path = _local(path)
    good = last_good_checkpoint(path.parent, exclude=path)
    hint = (
        f"The newest complete checkpoint in that folder is {good}: resume with --ckpt_path {good}."
        if good is not None
        else "No complete checkpoint was found next to it: start the run again without --ckpt_path."
    )
    return CheckpointFileError(f"The checkpoint {path} {what}. {hint}")


def check_checkpoint_file(path: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointFileError` if the local file ``path`` is empty or truncated."""
    if not is_local_path(path):
        return
    local = _local(path)
    if local.is_file() and local.stat().st_size == 0:
        raise broken_checkpoint_error(local, "is empty (0 bytes): its write was cut off")
    if local.is_file() and not looks_complete(local):
        raise broken_checkpoint_error(
            local, "is truncated or not a checkpoint (not a complete torch.save archive)"
        )


def read_checkpoint(
    path: str | os.PathLike[str], load: Callable[[], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Load a checkpoint with ``load`` (default: a weights-only ``torch.load`` of ``path`` on the CPU),
    turning the errors of a broken file into one that says so and names the last good checkpoint."""
    check_checkpoint_file(path)
    if load is None:

        def load() -> dict[str, Any]:
            return torch.load(_local(path), map_location="cpu", weights_only=True, mmap=True)

    try:
        return load()
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise broken_checkpoint_error(path, f"cannot be read ({type(err).__name__})") from err
    except RuntimeError as err:
        text = str(err)
        if "PytorchStreamReader" in text or "zip archive" in text or "Weights only load failed" in text:
            raise broken_checkpoint_error(path, "is damaged (its archive cannot be read)") from err
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic local writes and clear errors for broken files.

    ``Trainer(plugins=[AtomicCheckpointIO()])``; GRPOModule's :class:`~grpo_lightning.interrupt.RunGuard`
    installs it by itself when the strategy uses the plain Torch writer. Remote paths (``s3://``)
    keep Lightning's behaviour.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not is_local_path(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"weights_only": weights_only}
        if map_location is not None:
            kwargs["map_location"] = map_location
        return read_checkpoint(path, lambda: super(AtomicCheckpointIO, self).load_checkpoint(path, **kwargs))
