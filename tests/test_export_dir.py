"""The export folder: checked before training, written beside the target and swapped in whole;
only files an export wrote are ever deleted, and a killed export is repaired next time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import child_env

from grpo_lightning.run.export_dir import (
    MARKER,
    ExportTargetError,
    StagedExport,
    _exchange,
    check_export_target,
    recover_leftovers,
    remove_export,
    staged_export,
)

ROOT = str(Path(__file__).resolve().parent.parent)


def make_export(target: Path, files: dict[str, str]) -> None:
    """A complete export of ``files`` (name -> text) at ``target``, written as the package writes one."""
    with staged_export(target) as folder:
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the marker left out) with its text."""
    return {
        str(p.relative_to(folder)): p.read_text()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def test_a_file_or_a_path_below_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportTargetError, match="is a file, not a folder"):
        check_export_target(tmp_path / "afile", overwrite=True)
    with pytest.raises(ExportTargetError, match=r"lies below .*afile, which is a file"):
        check_export_target(tmp_path / "afile" / "model", overwrite=False)
    check_export_target(tmp_path / "new" / "deeper", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_export_target(tmp_path / "empty", overwrite=False)


def test_overwrite_replaces_a_previous_export_and_nothing_else(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # overwrite does not make a user's folder replaceable
        with pytest.raises(ExportTargetError, match=r"holds files that no export wrote \(notes.txt\)"):
            check_export_target(user, overwrite=overwrite)
    previous = tmp_path / "previous"
    make_export(previous, {"config.json": "old", "adapter_model.safetensors": "old"})
    with pytest.raises(ExportTargetError, match=r"previous export\. Set --export.overwrite true"):
        check_export_target(previous, overwrite=False)
    check_export_target(previous, overwrite=True)
    (previous / "sub").mkdir()
    (previous / "sub" / "eval.jsonl").write_text("mine")
    with pytest.raises(ExportTargetError, match=r"did not write \(sub/\)"):
        check_export_target(previous, overwrite=True)
    with pytest.raises(ExportTargetError, match="did not write"):
        StagedExport(previous)
    assert tree(previous) == {
        "config.json": "old",
        "adapter_model.safetensors": "old",
        "sub/eval.jsonl": "mine",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous", "user"]  # nothing staged is left


@pytest.mark.parametrize(
    "target, why",
    [
        ("runs/q/v0", "is the run folder"),
        ("runs", "contains the run folder"),
        (".", "contains the run folder"),
        ("runs/q/v0/checkpoints", "lies inside the run folder"),
        ("runs/q/v0/checkpoints/model", "lies inside the run folder"),
        ("link", "contains the run folder"),  # a symlink to runs/q
        ("ckpts/model", "lies inside the checkpoint folder"),
    ],
)
def test_a_target_that_is_contains_or_lies_inside_a_run_folder_is_refused(tmp_path, monkeypatch, target, why):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "q").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "runs" / "q")
    avoid = {"the run folder": "runs/q/v0", "the checkpoint folder": "ckpts"}
    with pytest.raises(ExportTargetError, match=why):
        check_export_target(target, overwrite=True, avoid=avoid, allowed="runs/q/v0/hf_model")
    check_export_target("runs/q/v0/hf_model", overwrite=False, avoid=avoid, allowed="runs/q/v0/hf_model")
    check_export_target("exports/model", overwrite=False, avoid=avoid)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_folder_where_nothing_can_be_written_is_refused():
    # /proc takes no new folders, even from root (permission bits would not tell).
    with pytest.raises(ExportTargetError, match=r"nothing can be written in /proc"):
        check_export_target("/proc/grpo-export-test/model", overwrite=False)


def test_the_export_replaces_the_previous_one_whole_and_a_failed_one_changes_nothing(tmp_path):
    target = tmp_path / "export"
    make_export(target, {"adapter_model.safetensors": "stale adapter", "config.json": "old"})
    make_export(target, {"model.safetensors": "new", "config.json": "new"})
    assert tree(target) == {"model.safetensors": "new", "config.json": "new"}
    assert json.loads((target / MARKER).read_text())["files"] == ["config.json", "model.safetensors"]
    with pytest.raises(OSError, match="No space"), staged_export(target) as folder:
        (folder / "model.safetensors").write_text("half")
        raise OSError(28, "No space left on device")
    assert tree(target) == {"model.safetensors": "new", "config.json": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_file_added_during_training_stops_the_swap(tmp_path):
    target = tmp_path / "export"
    make_export(target, {"config.json": "old"})
    staged = StagedExport(target)
    (staged.path / "config.json").write_text("new")
    (target / "notes.txt").write_text("written while training ran")
    with pytest.raises(ExportTargetError, match=r"did not write \(notes.txt\)"):
        staged.commit()
    assert tree(target) == {"config.json": "old", "notes.txt": "written while training ran"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


# A child process exports ("new") over a previous export ("old") and SIGKILLs itself before its
# Nth file-system operation (file writes, renames, unlinks, rmdirs, the atomic exchange).
KILLED_EXPORT = r"""
import os, signal, sys
from pathlib import Path
import grpo_lightning.run.export_dir as export_dir

target, mode, kill_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
count = 0

def step():
    global count
    count += 1
    if count == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

def counted(fn):
    def run(*args, **kwargs):
        step()
        return fn(*args, **kwargs)
    return run

os.rename, os.unlink, os.rmdir = counted(os.rename), counted(os.unlink), counted(os.rmdir)
export_dir._exchange = (lambda a, b: False) if mode == "renames" else counted(export_dir._exchange)
with export_dir.staged_export(target) as folder:
    for name in ("config.json", "model.safetensors", "README.md"):
        step()
        (folder / name).write_text("new")
"""

OLD = {"config.json": "old", "model.safetensors": "old", "adapter_model.safetensors": "old"}
NEW = {"config.json": "new", "model.safetensors": "new", "README.md": "new"}


def complete_export(target: Path) -> dict[str, str] | None:
    """The files of the complete export at ``target`` (None when it is missing or incomplete)."""
    marker = target / MARKER
    if not marker.is_file():
        return None
    files = tree(target)
    return files if sorted(files) == json.loads(marker.read_text())["files"] else None


@pytest.mark.parametrize("mode", ["exchange", "renames"])
def test_a_kill_at_any_point_leaves_the_old_or_the_new_export_and_the_next_check_repairs(tmp_path, mode):
    if mode == "exchange":
        (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
        if not _exchange(tmp_path / "a", tmp_path / "b"):
            pytest.skip("this system or file system has no atomic exchange")
        (tmp_path / "a").rmdir(), (tmp_path / "b").rmdir()
    outcomes = []
    for kill_at in range(1, 40):
        work = tmp_path / f"kill{kill_at}"
        target = work / "export"
        make_export(target, OLD)
        run = subprocess.run(
            [sys.executable, "-c", KILLED_EXPORT, str(target), mode, str(kill_at)],
            env=child_env(ROOT),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if run.returncode == 0:
            assert complete_export(target) == NEW
            assert [p.name for p in work.iterdir()] == ["export"]
            break
        assert run.returncode == -signal.SIGKILL, run.stderr
        found = complete_export(target)
        if mode == "exchange":  # one atomic step: the target is never missing nor mixed
            assert found in (OLD, NEW), (kill_at, found)
        else:  # between the two renames the target may be missing, never mixed
            assert found in (OLD, NEW, None) and (found is not None or not target.exists()), (kill_at, found)
        notes = recover_leftovers(target)
        after = complete_export(target)
        assert after in (OLD, NEW), (kill_at, notes)
        left = sorted(p.name for p in work.iterdir() if p.name != "export")
        # Only a complete new export that was stopped before the swap is kept (and reported).
        assert not left or (len(left) == 1 and any(n.startswith("Left") for n in notes)), (
            kill_at,
            left,
            notes,
        )
        assert recover_leftovers(target) == [n for n in notes if n.startswith("Left")]  # nothing more to do
        outcomes.append(after == NEW)
    else:
        pytest.fail("the export never completed")
    assert kill_at > 5 and False in outcomes and True in outcomes  # killed before and after the swap


def test_leftovers_of_killed_exports_are_repaired_or_reported(tmp_path):
    target = tmp_path / "export"
    dead = 2**22 + 12345  # above the default pid_max: no such process
    unfinished = tmp_path / f".export.grpo-export-{dead}-aa"
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_text("half")
    make_export(tmp_path / "old", {"config.json": "old"})
    (tmp_path / "old").rename(tmp_path / f".export.grpo-export-{dead}-bb.old")  # swapped out, not swapped in
    notes = recover_leftovers(target)
    assert [n.split(":")[0].split(" ")[0] for n in notes] == ["Removed", "Moved"]
    assert complete_export(target) == {"config.json": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    legacy = tmp_path / f".export.previous-{dead}"  # what grpo-lightning before the staged export left
    legacy.mkdir()
    (legacy / "model.safetensors").write_text("old")
    (note,) = recover_leftovers(target)
    assert note.startswith(f"Left {legacy}: the previous export, moved aside by an older grpo-lightning")
    assert note.endswith(f"rm -r {target} && mv {legacy} {target}") and legacy.is_dir()
    legacy.rename(tmp_path / "kept")
    running = tmp_path / f".export.grpo-export-{os.getpid()}-cc"
    running.mkdir()
    assert recover_leftovers(target) == [
        f"Left {running}: process {os.getpid()}, which is writing it, is still running."
    ]


def test_a_marker_never_leads_a_deletion_outside_its_folder(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's")
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / MARKER).write_text(json.dumps({"files": ["../outside.txt"]}))
    with pytest.raises(ExportTargetError, match="no export wrote"):
        check_export_target(forged, overwrite=True)
    # A listed file reached through a folder link lies elsewhere: it is kept.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "weights.bin").write_text("the user's")
    export = tmp_path / "export"
    make_export(export, {"sub/weights.bin": "exported"})
    (export / "sub" / "weights.bin").unlink()
    (export / "sub").rmdir()
    (export / "sub").symlink_to(elsewhere)
    assert remove_export(export) == ["sub"]
    assert outside.read_text() == (elsewhere / "weights.bin").read_text() == "the user's"
