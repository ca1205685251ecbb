"""Files given as a checkpoint that cannot be resumed from: one clear error each, naming the file, what
it is and what to use; a checkpoint suggested instead really loads."""

from __future__ import annotations

import datetime
import os
import struct
import time
import zipfile

import lightning.pytorch as pl
import pytest
import torch
from helpers import (
    PromptsDataModule,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_tokenizer,
)
from lightning.pytorch.demos.boring_classes import BoringModel

from grpo_lightning.run.checkpointing import CheckpointFileError, check_checkpoint_file, last_good_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A module after one training step, and its checkpoint."""
    root = tmp_path_factory.mktemp("trained")
    tok = tiny_tokenizer()
    module = make_module(tok)
    trainer = make_trainer(max_steps=1, default_root_dir=str(root))
    trainer.fit(module, datamodule=PromptsDataModule(tok))
    trainer.save_checkpoint(root / "good.ckpt")
    return module, root / "good.ckpt"


def _resume(ckpt, **fit_kwargs):
    tok = tiny_tokenizer()
    trainer = make_trainer(max_steps=2)
    trainer.fit(make_module(tok), datamodule=PromptsDataModule(tok), ckpt_path=str(ckpt), **fit_kwargs)
    return trainer


def _plain_state_dict(folder, module, _):
    torch.save(module.policy.state_dict(), folder / "weights.pt")
    return folder / "weights.pt"


def _hf_bin(folder, module, _):
    module.policy.save_pretrained(folder / "hf")
    torch.save(module.policy.state_dict(), folder / "hf" / "pytorch_model.bin")  # the older weights format
    return folder / "hf" / "pytorch_model.bin"


def _safetensors(folder, module, _):
    module.policy.save_pretrained(folder / "hf")
    return folder / "hf" / "model.safetensors"


def _random_zip(folder, *_):
    with zipfile.ZipFile(folder / "notes.zip", "w") as archive:
        archive.writestr("notes.txt", "hello")
    return folder / "notes.zip"


def _truncated(folder, _, good):
    (folder / "cut.ckpt").write_bytes(good.read_bytes()[:5000])
    return folder / "cut.ckpt"


def _empty(folder, *_):
    (folder / "empty.ckpt").write_bytes(b"")
    return folder / "empty.ckpt"


def _model_folder(folder, module, _):
    module.policy.save_pretrained(folder / "hf")
    return folder / "hf"


def _other_module(folder, *_):
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(BoringModel())
    trainer.save_checkpoint(folder / "boring.ckpt")
    return folder / "boring.ckpt"


def _missing(folder, *_):
    return folder / "nothing.ckpt"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_plain_state_dict, r"it holds model weights only \(a state dict of \d+ tensor"),
        (
            _hf_bin,
            r"it holds model weights only .*pass the model folder that holds them as --model.model .*hf",
        ),
        (_safetensors, r"it is a safetensors file of model weights.*--model.model"),
        (_random_zip, r"it is a zip archive, but not a checkpoint.*\['notes.txt'\]"),
        (_truncated, r"it is truncated: its zip directory"),
        (_empty, r"it is empty \(0 bytes\)"),
        (
            _model_folder,
            r"it is a folder, not a checkpoint file\. It holds a Hugging Face model: .*--model.model",
        ),
        (_other_module, r"it was written by another LightningModule: .*'layer.weight'"),
        (_missing, r"it does not exist"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_gets_one_clear_error(tmp_path, trained, make, message):
    module, good = trained
    path = make(tmp_path, module, good)
    with pytest.raises(CheckpointFileError, match=message) as early:  # the command line's check
        check_checkpoint_file(path)
    assert f"Cannot resume from {path}:" in str(early.value)
    with pytest.raises(CheckpointFileError, match=message):  # trainer.fit(ckpt_path=...)
        _resume(path)


def test_a_run_folder_given_as_checkpoint_names_the_checkpoint_in_it(tmp_path, trained):
    _, good = trained
    checkpoints = tmp_path / "runs" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(good.read_bytes())
    with pytest.raises(CheckpointFileError, match="is a folder") as info:
        check_checkpoint_file(tmp_path / "runs")
    assert f"resume with --ckpt_path {checkpoints / 'last.ckpt'}." in str(info.value)


def test_a_checkpoint_needing_weights_only_false_names_the_flag_and_loads_with_it(tmp_path, trained):
    _, good = trained
    checkpoint = torch.load(good, weights_only=False)
    checkpoint["hyper_parameters"]["started"] = datetime.date(2025, 1, 1)  # not on the allow-list
    torch.save(checkpoint, tmp_path / "dated.ckpt")
    check_checkpoint_file(tmp_path / "dated.ckpt")  # intact: whether to unpickle it is the load's call
    with pytest.raises(CheckpointFileError, match=r"datetime\.date\. The file is intact") as info:
        _resume(tmp_path / "dated.ckpt")
    assert "add --weights_only false to the command" in str(info.value)
    assert "cannot be read" not in str(info.value)
    assert _resume(tmp_path / "dated.ckpt", weights_only=False).global_step == 2


def _corrupt_largest_record(path):
    """Flip bytes inside the largest record: the zip directory stays readable, its CRC does not match."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    data[start + 8 : start + 16] = bytes(b ^ 0xFF for b in data[start + 8 : start + 16])
    path.write_bytes(bytes(data))


def test_the_suggested_checkpoint_really_loads(tmp_path, trained):
    _, good = trained
    older, damaged, foreign, last = (
        tmp_path / n for n in ("step=1.ckpt", "step=2.ckpt", "b.ckpt", "last.ckpt")
    )
    older.write_bytes(good.read_bytes())
    damaged.write_bytes(good.read_bytes())
    _corrupt_largest_record(damaged)
    _other_module(tmp_path).rename(foreign)
    last.write_bytes(b"")
    now = time.time()
    for age, path in enumerate((last, foreign, damaged, older)):  # the older good one is the oldest
        os.utime(path, (now - age * 10, now - age * 10))
    assert zipfile.ZipFile(damaged).namelist()  # its zip directory alone looks fine
    with pytest.raises(CheckpointFileError, match=f"resume with --ckpt_path {older}\\."):
        check_checkpoint_file(last)
    assert last_good_checkpoint(tmp_path) == older


def test_a_sharded_checkpoint_folder_under_a_single_file_strategy_says_which_strategy_reads_it(tmp_path):
    folder = tmp_path / "last.ckpt"
    folder.mkdir()
    (folder / ".metadata").write_bytes(b"index")
    check_checkpoint_file(folder)  # the command line cannot tell which strategy the run uses
    with pytest.raises(CheckpointFileError, match=r"is a sharded checkpoint folder.*--trainer\.strategy"):
        _resume(folder)
