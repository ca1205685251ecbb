"""Checkpoint files that are either whole or absent, written like any other file.

Lightning's default writer stages a checkpoint in the system temp folder and then moves it over
the target: across file systems that move is a copy, so a full disk or a kill mid-write leaves a
truncated ``last.ckpt`` behind. :class:`AtomicCheckpointIO` writes a temp file *in the target's own
folder*, flushes it to disk and renames it over the target (``os.replace``, atomic on POSIX and
Windows): the old file stays intact until the new one is complete.

The temp file is created the way ``open(path, "wb")`` creates a file, so the checkpoint gets the
permissions the umask gives (those of the file it replaces, when there is one). Its name,
``.<target>.<host>-<pid>-<token>.tmp``, says which process writes it: a write that was killed
leaves it behind, and the next checkpoint written in that folder removes it once that process is
gone (or the file is older than this run).

Reading is :mod:`grpo_lightning.run.checkpoint_check`: a file that cannot be resumed from gets one clear
error, with the newest checkpoint beside it that really loads.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from grpo_lightning.run.checkpoint_check import (
    CKPT_SUFFIX,
    CheckpointFileError,
    check_checkpoint_file,
    is_local_path,
    last_good_checkpoint,
    local_path,
    read_checkpoint,
)

__all__ = [
    "CKPT_SUFFIX",
    "AtomicCheckpointIO",
    "CheckpointFileError",
    "atomic_torch_save",
    "check_checkpoint_file",
    "last_good_checkpoint",
    "read_checkpoint",
    "remove_stale_temp_files",
]

#: When this process began writing (a temp file older than that is not one of its writes in flight).
_STARTED = time.time()
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
# ".<target>.<host>-<pid>-<token>.tmp"; the older form ".<target>.<8 characters>.tmp" (tempfile's) too.
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?:(?P<host>\w+)-(?P<pid>\d+)-[0-9a-f]+|\w{8})\.tmp$")


def _temp_path(target: Path) -> Path:
    return target.parent / f".{target.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would end the process there: only the age rule applies
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove this writer's temp files in ``folder`` that no write in progress owns; returns them.

    A temp file is stale when the process that wrote it, on this host, is gone, or when it was last
    written before this process started (a write in progress keeps its file's time current). Only
    names of this writer's pattern for a checkpoint (``.<name>.ckpt.<...>.tmp``) are considered.
    """
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            found = _TEMP_NAME.match(entry.name)
            if found is None or not found["target"].endswith(CKPT_SUFFIX) or not entry.is_file():
                continue
            pid = int(found["pid"]) if found["pid"] else None
            if pid == os.getpid() and found["host"] == _HOST:
                continue  # this process's own write
            gone = pid is not None and found["host"] == _HOST and not _process_alive(pid)
            with contextlib.suppress(OSError):
                if gone or entry.stat().st_mtime < _STARTED:
                    os.remove(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _create_like_open(tmp: Path, target: Path) -> int:
    """Create ``tmp`` as ``open(target, "wb")`` would: mode 0o666 less the umask for a new file, the
    target's own permissions when it replaces one."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    with contextlib.suppress(OSError):
        os.chmod(tmp, target.stat().st_mode & 0o7777)  # no target yet: the umask's mode stays
    return fd


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``.

    The bytes go to a hidden temp file next to ``path`` (same file system, so the final rename is
    atomic), are flushed with ``fsync``, and only then replace ``path``. On any error (a full disk,
    an interrupt) the temp file is removed and ``path`` keeps its previous content. Stale temp files
    of earlier writes that were killed are removed first (:func:`remove_stale_temp_files`).
    """
    target = local_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(target.parent)
    tmp = _temp_path(target)
    fd = _create_like_open(tmp, target)
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic local writes and clear errors for broken files.

    ``Trainer(plugins=[AtomicCheckpointIO()])``; GRPOModule's :class:`~grpo_lightning.run.interrupt.RunGuard`
    installs it by itself when the strategy uses the plain Torch writer. Remote paths (``s3://``)
    keep Lightning's behaviour.

    Args:
        module_keys: the names of the weights of the module that loads the checkpoints (called at load
            time); a checkpoint sharing none of them is refused as another module's. None: a
            GRPOModule's (see :func:`~grpo_lightning.run.checkpoint_check.content_problem`).
    """

    def __init__(self, module_keys: Callable[[], Collection[str]] | None = None) -> None:
        super().__init__()
        self.module_keys = module_keys

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
        keys = self.module_keys() if self.module_keys is not None else None
        return read_checkpoint(
            path, lambda: super(AtomicCheckpointIO, self).load_checkpoint(path, **kwargs), keys
        )
