"""Checkpoint files: written atomically, and a broken one gets an error naming the last good one."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    PromptsDataModule,
    child_env,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_tokenizer,
)

import grpo_lightning.run.checkpointing as checkpointing
from grpo_lightning.run.checkpointing import (
    AtomicCheckpointIO,
    CheckpointFileError,
    atomic_torch_save,
    last_good_checkpoint,
    read_checkpoint,
)


def _trained(tmp_path, max_steps=1):
    tok = tiny_tokenizer()
    module = make_module(tok)
    trainer = make_trainer(max_steps=max_steps, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=PromptsDataModule(tok))
    return module, trainer


def test_the_trainer_writes_checkpoints_with_the_atomic_writer(tmp_path):
    _, trainer = _trained(tmp_path)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    assert torch.load(tmp_path / "a.ckpt", weights_only=False)["global_step"] == 1


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    _, trainer = _trained(tmp_path)
    last = tmp_path / "last.ckpt"
    trainer.save_checkpoint(last)
    before = last.read_bytes()

    def disk_full(obj, f):
        f.write(before[: len(before) // 2])  # half of the bytes reach the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint(last)
    assert last.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def _mount_tmpfs(mount: Path, size: int) -> None:
    """A tmpfs of ``size`` bytes (only where this process may mount one, e.g. as root in a container)."""
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip("cannot mount a tmpfs here")


def test_a_real_full_disk_keeps_last_ckpt_whole(tmp_path):
    _, trainer = _trained(tmp_path)
    trainer.save_checkpoint(tmp_path / "probe.ckpt")
    size = (tmp_path / "probe.ckpt").stat().st_size
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, size * 4 // 5)  # the full checkpoint no longer fits
    try:
        last = disk / "last.ckpt"
        trainer.save_checkpoint(last, weights_only=True)  # an earlier, smaller checkpoint
        before = last.read_bytes()
        # Writing over it in place (Lightning's default) would leave a truncated last.ckpt here.
        with pytest.raises(OSError, match="the file there is unchanged"):
            trainer.save_checkpoint(last)
        assert last.read_bytes() == before
        assert torch.load(last, weights_only=False)["global_step"] == 1
        assert [p.name for p in disk.iterdir()] == ["last.ckpt"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def lightning_like(step: int) -> dict:
    """The smallest dictionary that reads as a GRPOModule's Lightning checkpoint."""
    return {
        "pytorch-lightning_version": "2.6.0",
        "global_step": step,
        "state_dict": {"policy.w": torch.ones(2)},
    }


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: b"", "is empty"),
        (lambda data: data[: len(data) // 2], "is truncated"),
        (lambda data: b"not a checkpoint at all" * 100, "is not a checkpoint"),
    ],
)
def test_a_broken_checkpoint_is_named_with_the_last_good_one(tmp_path, damage, message):
    good, broken = tmp_path / "epoch=0-step=2.ckpt", tmp_path / "last.ckpt"
    atomic_torch_save(lightning_like(2), good)
    atomic_torch_save(lightning_like(3), broken)
    broken.write_bytes(damage(broken.read_bytes()))
    with pytest.raises(CheckpointFileError, match=message) as info:
        read_checkpoint(broken)
    assert f"resume with --ckpt_path {good}." in str(info.value)
    assert "weights_only" not in str(info.value)
    assert last_good_checkpoint(tmp_path, exclude=broken) == good


def test_fit_from_a_truncated_checkpoint_fails_clearly(tmp_path):
    _, trainer = _trained(tmp_path / "run")
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    tok = tiny_tokenizer()
    with pytest.raises(CheckpointFileError, match=r"truncated.*No checkpoint that loads"):
        make_trainer(max_steps=2).fit(
            make_module(tok), datamodule=PromptsDataModule(tok), ckpt_path=str(ckpt)
        )


def test_no_temp_file_is_left_after_a_successful_write(tmp_path):
    atomic_torch_save({"x": torch.ones(3)}, tmp_path / "sub" / "a.ckpt")
    assert [p.name for p in Path(tmp_path / "sub").iterdir()] == ["a.ckpt"]


def test_fsdp2_checkpoints_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    # Lightning writes a sharded checkpoint's files in place; FSDP2Strategy stages them beside it.
    from lightning.pytorch.strategies import ModelParallelStrategy

    from grpo_lightning.training.strategies import FSDP2Strategy

    target = tmp_path / "last.ckpt"
    target.mkdir()
    (target / "shard0").write_text("old")

    def half_write(self, checkpoint, filepath, storage_options=None):
        Path(filepath).mkdir(parents=True, exist_ok=True)
        (Path(filepath) / "shard0").write_text("new, cut short")
        raise OSError(28, "No space left on device")

    def full_write(self, checkpoint, filepath, storage_options=None):
        Path(filepath).mkdir(parents=True, exist_ok=True)
        (Path(filepath) / "shard0").write_text("new")

    strategy = FSDP2Strategy()
    monkeypatch.setattr(ModelParallelStrategy, "save_checkpoint", half_write)
    with pytest.raises(OSError, match="No space left"):
        strategy.save_checkpoint({}, target)
    assert (target / "shard0").read_text() == "old"  # the previous checkpoint is whole
    monkeypatch.setattr(ModelParallelStrategy, "save_checkpoint", full_write)
    strategy.save_checkpoint({}, target)
    assert (target / "shard0").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # nothing left beside it


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_checkpoint_gets_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_torch_save({"x": 1}, tmp_path / "a.ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.ckpt").stat().st_mode) == mode


def test_a_replaced_checkpoint_keeps_its_permissions(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"x": 1}, target)
    target.chmod(0o640)
    atomic_torch_save({"x": 2}, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert torch.load(target, weights_only=True) == {"x": 2}


def _ended_pid() -> int:
    """The id of a process that has ended."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_stale_temp_files_of_this_writer_are_removed_by_the_next_write(tmp_path):
    host = checkpointing._HOST
    old = time.time() - 3600
    dead = tmp_path / f".last.ckpt.{host}-{_ended_pid()}-ab12cd34.tmp"  # its process has ended
    legacy = tmp_path / ".last.ckpt.k3j_9x2q.tmp"  # the older writer's name, from before this run
    live = tmp_path / f".last.ckpt.{host}-{os.getppid()}-0a0b0c0d.tmp"  # a write in progress elsewhere
    elsewhere = tmp_path / ".last.ckpt.otherhost-1-0a0b0c0d.tmp"  # another host's, recently written
    foreign = [tmp_path / ".notes.txt.k3j_9x2q.tmp", tmp_path / "data.tmp"]  # not checkpoint temp files
    for path in (dead, legacy, live, elsewhere, *foreign):
        path.write_bytes(b"partial")
    for path in (legacy, *foreign):
        os.utime(path, (old, old))
    atomic_torch_save({"x": 1}, tmp_path / "epoch=0-step=1.ckpt")
    assert not dead.exists() and not legacy.exists()
    assert live.exists() and elsewhere.exists() and all(p.exists() for p in foreign)


def test_a_write_killed_midway_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    # The writer process is killed while its temp file is half written (SIGKILL: no clean-up runs).
    code = (
        "import time, grpo_lightning.run.checkpointing as c\n"
        "def slow(obj, f):\n"
        "    f.write(b'x' * 100); f.flush(); time.sleep(60)\n"
        "c.torch.save = slow\n"
        f"c.atomic_torch_save({{}}, {str(tmp_path / 'last.ckpt')!r})\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], env=child_env(str(Path(__file__).parents[1])))
    deadline = time.time() + 60
    while not list(tmp_path.glob(".last.ckpt.*.tmp")) and time.time() < deadline:
        time.sleep(0.1)
    writer.kill()
    writer.wait()
    (left,) = tmp_path.glob(".last.ckpt.*.tmp")
    atomic_torch_save({"x": 1}, tmp_path / "last.ckpt")
    assert not left.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
