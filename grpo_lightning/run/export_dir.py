"""The export folder: checked before training, written beside the target and swapped in whole.

``save_pretrained`` writes its files into a folder and leaves whatever else is there, and a
folder deleted to make room cannot be brought back. So an export here:

- is written into a staging folder next to the target (``.<name>.grpo-export-<pid>-<id>``) and ends
  with a marker file (:data:`MARKER`) that lists every file the export wrote; only a complete
  export has one;
- replaces the target in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two
  renames, whose gap the next export repairs), so the target always holds either the old
  complete export or the new one, even if the process is killed;
- replaces only an empty folder or a previous export (a folder with the marker and nothing that
  the marker does not list), and then deletes only the files the marker lists: a folder with any
  other file is refused, whatever ``overwrite`` says;
- is checked before training (:func:`check_export_target`): a path below a file, a folder that
  cannot be written, a folder that contains or lies inside a folder the run writes to (its run
  folder, logger folders, checkpoint folders; symlinks resolved) are refused with the fix.

What a killed export leaves beside the target is recognised by its name and repaired or reported
by the next check (:func:`recover_leftovers`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

#: The file in each export that lists what the export wrote (paths relative to the folder).
MARKER = ".grpo-lightning-export.json"
_LEFTOVER = r"\.{name}\.grpo-export-(?P<pid>\d+)-(?P<id>[0-9a-f]+)(?P<old>\.old)?"
# Where grpo-lightning before the staged export moved the previous export while it wrote the new
# one into the target itself: a kill left that folder, and a target without weights.
_LEGACY_ASIDE = r"\.{name}\.previous-(?P<pid>\d+)"


class ExportTargetError(ValueError):
    """The export folder cannot receive the export; the message says why and what to do."""


def resolve(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute with ``~`` expanded and symlinks resolved (also for the part of the
    path that does not exist yet)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def read_marker(folder: Path) -> dict | None:
    """The marker of the export in ``folder``, or None when ``folder`` is not a complete export."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) and _plain_relative(f) for f in files):
        return None  # not one the package wrote: its list must not lead a deletion outside the folder
    return marker


def _plain_relative(name: str) -> bool:
    """A path below its folder: relative, without ``..`` or empty parts."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and name == str(Path(name))


def unlisted_entries(folder: Path, marker: dict) -> list[str]:
    """What ``folder`` holds that its marker does not list (relative paths, sorted): files, links,
    and folders that hold no listed file. Symlinks are not followed."""
    listed = set(marker["files"]) | {MARKER}
    needed_dirs = {str(Path(f).parent) for f in listed}
    needed_dirs |= {str(p) for f in listed for p in Path(f).parents}
    extra = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        for name in files:
            if str(rel_root / name) not in listed:
                extra.append(str(rel_root / name))
        for name in list(dirs):
            rel = rel_root / name
            if (Path(root) / name).is_symlink() or str(rel) not in needed_dirs:
                extra.append(f"{rel}/")
                dirs.remove(name)  # reported whole: not walked
    return sorted(extra)


def _listing(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _check_contents(target: Path, overwrite: bool) -> None:
    """Refuse a target folder that holds files the export may not replace (see the module docs)."""
    if not target.is_dir() or not any(target.iterdir()):
        return
    marker = read_marker(target)
    if marker is None:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir())
        what = "--export.overwrite only replaces a previous export (a folder with " + MARKER + "). "
        raise ExportTargetError(
            f"--export.dir {target} holds files that no export wrote ({_listing(names)}): exporting there "
            f"would mix the model with them or delete them. {what if overwrite else ''}Give a new or "
            "empty folder, or move those files away first (if the folder is an export from an older "
            "grpo-lightning, without that file, delete it yourself)."
        )
    extra = unlisted_entries(target, marker)
    if extra:
        raise ExportTargetError(
            f"--export.dir {target} is a previous export, but it also holds files that the export did not "
            f"write ({_listing(extra)}): replacing it would delete them. Move them out of the folder, or "
            "give another --export.dir."
        )
    if not overwrite:
        raise ExportTargetError(
            f"--export.dir {target} already holds a previous export. Set --export.overwrite true to "
            "replace it (only the files that export wrote are deleted), or give a new folder."
        )


def _blocking_file(target: Path) -> Path | None:
    """The first part of ``target``'s path that exists and is not a folder (None if none)."""
    for part in reversed([target, *target.parents]):
        if part.exists() and not part.is_dir():
            return part
        if not part.exists():
            return None
    return None


def _probe_writable(folder: Path) -> str | None:
    """Why a folder cannot be created in ``folder`` (None when it can). Tried for real: permission
    bits do not tell a read-only file system, and root ignores them."""
    try:
        probe = tempfile.mkdtemp(prefix=".grpo-lightning-probe-", dir=folder)
    except OSError as err:
        return err.strerror or str(err)
    os.rmdir(probe)
    return None


def _overlap(target: Path, label: str, folder: Path, allowed: Path | None) -> str | None:
    """Why ``target`` may not be exported into, next to the run's ``folder`` (None if it may)."""
    if target == folder or target in folder.parents:
        return (
            f"it {'is' if target == folder else 'contains'} {label}: replacing it would delete the run's "
            "files (checkpoints, config, logs)"
        )
    if folder in target.parents and target != allowed:
        return f"it lies inside {label}, where the run writes its own files"
    return None


def check_export_target(
    path: str | os.PathLike[str],
    overwrite: bool,
    avoid: Mapping[str, str | os.PathLike[str]] | None = None,
    allowed: str | os.PathLike[str] | None = None,
) -> Path:
    """Check before any training that ``path`` can receive an export; returns it resolved.

    Args:
        path: the export folder (``--export.dir``).
        overwrite: a previous export there may be replaced.
        avoid: the folders the run writes into, by a label for the message (see
            :func:`~grpo_lightning.run.folders.run_output_folders`): the target may neither be one of them,
            contain one, nor lie inside one.
        allowed: the one folder inside those that may be used (the default ``<run folder>/hf_model``).

    Raises:
        ExportTargetError: naming the cause and the fix.
    """
    target = resolve(path)
    blocker = _blocking_file(target)
    if blocker == target:
        raise ExportTargetError(f"--export.dir {target} is a file, not a folder: give a folder path.")
    if blocker is not None:
        raise ExportTargetError(
            f"--export.dir {target} lies below {blocker}, which is a file: no folder can be made there. "
            "Give another path."
        )
    allowed_path = resolve(allowed) if allowed is not None else None
    for label, folder in (avoid or {}).items():
        why = _overlap(target, label, resolve(folder), allowed_path)
        if why is not None:
            raise ExportTargetError(
                f"--export.dir {path} ({target}) cannot be used: {why}. Give a folder outside the run's "
                "folders, or leave --export.dir unset to export into <run folder>/hf_model."
            )
    _check_contents(target, overwrite)
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    reason = _probe_writable(parent)
    if reason is not None:
        raise ExportTargetError(
            f"--export.dir {target}: nothing can be written in {parent} ({reason}), where the export is "
            "staged before it replaces the folder. Give a path in a writable folder."
        )
    return target


# ---- leftovers of a killed export ---------------------------------------------------------------


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to someone else
        return True
    return True


def _leftovers(target: Path) -> list[tuple[Path, re.Match[str]]]:
    if not target.parent.is_dir():
        return []
    pattern = re.compile(_LEFTOVER.format(name=re.escape(target.name)))
    found = [(p, pattern.fullmatch(p.name)) for p in target.parent.iterdir()]
    return sorted(((p, m) for p, m in found if m is not None), key=lambda pm: pm[1]["old"] is not None)


def recover_leftovers(path: str | os.PathLike[str]) -> list[str]:
    """Repair what exports into ``path`` that were killed left next to it; returns one line per
    folder, saying what was done (or why it was left: to report).

    - a staging folder without a marker (killed while writing): removed;
    - a complete new export that was not swapped in: moved into place when the target is missing
      (killed between the two renames), else left and reported (the target holds the old export);
    - an old export that was swapped out: moved back when the target is missing, else its listed
      files are deleted (:func:`remove_export`).
    - the previous export that grpo-lightning before the staged export moved aside
      (``.<name>.previous-<pid>``): reported, with the command that puts it back.
    Folders of a process that is still running are left alone.
    """
    target = resolve(path)
    notes = []
    legacy = re.compile(_LEGACY_ASIDE.format(name=re.escape(target.name)))
    parent = target.parent if target.parent.is_dir() else None
    for folder in sorted(parent.iterdir()) if parent is not None else []:
        match = legacy.fullmatch(folder.name)
        if match is not None and folder.is_dir() and not _alive(int(match["pid"])):
            notes.append(
                f"Left {folder}: the previous export, moved aside by an older grpo-lightning whose export "
                f"into {target} was stopped, so {target} may be incomplete. To get the previous export back: "
                f"rm -r {shlex.quote(str(target))} && mv {shlex.quote(str(folder))} {shlex.quote(str(target))}"
            )
    for folder, match in _leftovers(target):
        pid = int(match["pid"])
        if _alive(pid):
            notes.append(f"Left {folder}: process {pid}, which is writing it, is still running.")
            continue
        marker = read_marker(folder)
        if marker is None:
            shutil.rmtree(folder, ignore_errors=True)
            notes.append(f"Removed {folder}: an export that was stopped while it was being written.")
            continue
        new = match["old"] is None and marker.get("id") == match["id"]
        if not target.exists():
            os.rename(folder, target)
            what = "the export that was being swapped in" if new else "the previous export"
            notes.append(f"Moved {what} from {folder} back into {target}: an export was stopped mid-swap.")
        elif new:
            notes.append(
                f"Left {folder}: a complete export that was stopped before it replaced {target} (which "
                "still holds the previous export). Delete it, or move it in place of that folder."
            )
        else:
            left = remove_export(folder)
            notes.append(
                f"Removed {folder}: the previous export, swapped out by an export that was then stopped."
                + (f" Kept what the export did not write: {_listing(left)}." if left else "")
            )
    return notes


# ---- writing -------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_marker(folder: Path, export_id: str) -> None:
    """List every file in ``folder`` in its marker, after flushing them to disk: the marker is
    written last, so a folder that has one is complete."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    for name in files:
        _fsync(folder / name)
    marker = {"written_by": "grpo-lightning", "id": export_id, "created": time.time(), "files": files}
    (folder / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    _fsync(folder / MARKER)
    with contextlib.suppress(OSError):
        _fsync(folder)


def remove_export(folder: Path) -> list[str]:
    """Delete the files the marker of ``folder`` lists, the marker, then the folders left empty.
    Returns what stays (files the export did not write; the folder is then kept)."""
    marker = read_marker(folder)
    if marker is None:
        return sorted(p.name for p in folder.iterdir())
    real = os.path.realpath(folder)
    for name in marker["files"]:
        path = folder / name
        # Through a folder link the file would lie elsewhere: not one the export wrote there.
        inside = os.path.realpath(path.parent) == os.path.join(real, os.path.dirname(name)).rstrip(os.sep)
        if inside and (path.is_file() or path.is_symlink()):
            path.unlink()
    (folder / MARKER).unlink()
    dirs = sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True)
    for d in [*dirs, folder]:
        with contextlib.suppress(OSError):  # not empty: holds something the export did not write
            d.rmdir()
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _exchange(a: Path, b: Path) -> bool:
    """Swap the two paths in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False
    where the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), str(b))


class StagedExport:
    """An export being written beside its target: write into :attr:`path`, then :meth:`commit`
    (or :meth:`discard`). Use :func:`staged_export` unless the writing is split across ranks."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = resolve(target)
        if self.target.is_dir():
            _check_contents(self.target, overwrite=True)
        elif self.target.exists():
            raise ExportTargetError(
                f"--export.dir {self.target} is a file, not a folder: give a folder path."
            )
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.id = secrets.token_hex(6)
        self.path = self.target.with_name(f".{self.target.name}.grpo-export-{os.getpid()}-{self.id}")
        self.path.mkdir()

    def commit(self) -> list[str]:
        """Mark the export complete and swap it in for the target. Returns notes on the previous
        export (what of it was kept: files it did not write, left in its folder beside the target).
        On an error before the swap the staging folder is removed and the target is untouched."""
        target, aside = self.target, self.path.with_name(self.path.name + ".old")
        try:
            write_marker(self.path, self.id)
            if not target.exists() or (target.is_dir() and not any(target.iterdir())):
                os.rename(self.path, target)  # replaces an empty folder in the same step
                return []
            _check_contents(target, overwrite=True)  # again: files may have appeared during training
            if _exchange(self.path, target):
                old = self.path
            else:  # two renames; a kill between them is repaired by recover_leftovers
                os.rename(target, aside)
                try:
                    os.rename(self.path, target)
                except BaseException:
                    os.rename(aside, target)
                    raise
                old = aside
        except BaseException:
            self.discard()
            raise
        try:
            kept = remove_export(old)
        except OSError as err:
            return [f"The previous export, moved to {old}, could not be removed ({err}): delete it yourself."]
        return (
            [f"Kept {old}: it holds files the previous export did not write ({_listing(kept)})."]
            if kept
            else []
        )

    def discard(self) -> None:
        """Remove the staging folder (the target is untouched)."""
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def staged_export(target: str | os.PathLike[str]) -> Iterator[Path]:
    """``with staged_export(target) as folder:`` write the export into ``folder``; on a normal exit
    it replaces ``target`` whole, on an error the target is left as it was."""
    staged = StagedExport(target)
    try:
        yield staged.path
    except BaseException:
        staged.discard()
        raise
    for note in staged.commit():
        print(note, file=sys.stderr, flush=True)
