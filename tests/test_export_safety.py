"""The export after fit, through the command line: refused at the start when it could delete or
mix with what it did not write, never half-done, and recoverable from the checkpoint with the
printed command when it fails after training."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shlex
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers.modeling_utils
from helpers import one_thread, save_tiny_policy  # noqa: F401 (autouse fixture)
from transformers import AutoModelForCausalLM

from grpo_lightning.cli.app import console_entry, main


def fit_args(tmp: Path, *extra: str, val_size: int = 4) -> list[str]:
    """A two-step fit of a tiny policy saved under ``tmp`` (no logger unless ``extra`` sets one)."""
    policy = tmp / "policy"
    if not policy.exists():
        save_tiny_policy(policy)
    return [
        "fit",
        f"--model.model={policy}",
        "--model.reward_funcs=[gsm8k_accuracy]",
        "--model.num_generations=2",
        "--model.max_completion_length=6",
        "--model.learning_rate=1e-3",
        "--model.warmup_steps=0",
        "--data.batch_size=2",
        "--data.val_batch_size=4",
        f"--data.synthetic={{train_size: 16, val_size: {val_size}, test_size: 4}}",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        *extra,
    ]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


MARKER = ".grpo-lightning-export.json"  # what an export wrote
CSV = ["--trainer.logger=CSVLogger", "--trainer.logger.init_args.save_dir={tmp}/runs"]
# The run folder is then {tmp}/runs/lightning_logs/v.
FIXED_VERSION = [*CSV, "--trainer.logger.init_args.version=v"]


@pytest.mark.parametrize(
    "settings, why",
    [
        # The reported case: the logger's folder as the export folder, overwrite set.
        ([*CSV, "--export.dir={tmp}/runs", "--export.overwrite=true"], "contains the run folder"),
        ([*CSV, "--export.dir={tmp}", "--export.overwrite=true"], "contains the run folder"),
        ([*FIXED_VERSION, "--export.dir={tmp}/runs/lightning_logs/v"], "is the run folder"),
        (
            [*FIXED_VERSION, "--export.dir={tmp}/runs/lightning_logs/v/checkpoints/m"],
            "lies inside the run folder",
        ),
        ([*CSV, "--export.dir={tmp}/link", "--export.overwrite=true"], "contains the run folder"),
        (
            ["--trainer.default_root_dir={tmp}/root", "--trainer.logger=false", "--export.dir={tmp}/root"],
            "is the run",
        ),
        (
            ["--trainer.default_root_dir={tmp}/root", "--export.dir={tmp}/mine", "--export.overwrite=true"],
            "no export wrote",
        ),
        (
            ["--trainer.default_root_dir={tmp}/root", "--export.dir={tmp}/policy/config.json/m"],
            "which is a file",
        ),
        pytest.param(
            ["--trainer.default_root_dir={tmp}/root", "--export.dir=/proc/grpo-test/m"],
            "nothing can be written",  # /proc takes no new folder, even from root
            marks=pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc"),
        ),
        (
            ["--trainer.default_root_dir={tmp}/root", "--export.enabled=false", "--export.dir={tmp}/m"],
            "nothing is exported",
        ),
        (["--trainer.default_root_dir={tmp}/root", "--export.merge_lora=true"], "there is nothing to merge"),
    ],
    ids=[
        "save_dir",
        "parent",
        "run-folder",
        "in-checkpoints",
        "symlink",
        "root-dir",
        "user-folder",
        "below-file",
        "unwritable",
        "disabled",
        "merge-without-lora",
    ],
)
def test_an_export_folder_that_could_delete_or_mix_with_other_files_is_refused_at_the_start(
    tmp_path, settings, why
):
    save_tiny_policy(tmp_path / "policy")
    for folder in ("runs", "mine", "root"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "notes.txt").write_text("the user's")
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=why):
        main(fit_args(tmp_path, *(s.format(tmp=tmp_path) for s in settings)))
    assert snapshot(tmp_path) == before  # nothing trained, written or deleted
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["notes.txt"]


def _disk_full_after(written: int):
    """A stand-in for safetensors' writer: writes ``written`` bytes of the file, then the disk is full."""

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * written)
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    return save_file


def test_a_full_disk_during_the_export_fails_clearly_and_the_printed_command_recovers(tmp_path, monkeypatch):
    target = tmp_path / "exported"
    csv = [a.format(tmp=tmp_path) for a in CSV]
    argv = fit_args(tmp_path, *csv, f"--export.dir={target}", "--trainer.enable_checkpointing=false")
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", _disk_full_after(100))
    monkeypatch.setattr(sys, "argv", ["grpo-lightning", *argv])
    with pytest.raises(RuntimeError, match=r"Training finished \(2 optimizer steps\)") as failure:
        console_entry()  # raises: the process exits non-zero
    message = str(failure.value)
    assert "(the disk is full)" in message and f"nothing was left at {target}" in message
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["policy", "runs"]
    command = message.splitlines()[-1].strip()
    ckpt = tmp_path / "runs/lightning_logs/version_0/checkpoints/final-step=2.ckpt"
    assert shlex.split(command) == [
        "grpo-lightning",
        "export",
        "--ckpt_path",
        str(ckpt),
        "--export.dir",
        str(target),
    ]
    monkeypatch.undo()  # the disk has room again
    monkeypatch.setattr(sys, "argv", shlex.split(command))
    console_entry()
    exported = AutoModelForCausalLM.from_pretrained(target)
    trained = torch.load(ckpt, weights_only=True)["state_dict"]
    for name, value in exported.state_dict().items():
        torch.testing.assert_close(value, trained[f"policy.{name}"], rtol=0, atol=0)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A fit with no validation split, a ModelCheckpoint on val/accuracy, last.ckpt after every
    step and an export: (tmp folder, what it printed, the warnings it gave, the CLI)."""
    tmp = tmp_path_factory.mktemp("run")
    argv = fit_args(
        tmp,
        *(a.format(tmp=tmp) for a in CSV),
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.init_args.monitor=val/accuracy",
        "--trainer.callbacks.init_args.mode=max",
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.init_args.every_n_train_steps=1",
        "--trainer.callbacks.init_args.save_top_k=0",
        "--trainer.callbacks.init_args.save_last=true",
        f"--export.dir={tmp / 'exported'}",
        val_size=0,
    )
    out = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        cli = main(argv)
    torch.set_num_threads(threads)
    return tmp, out.getvalue(), [str(w.message) for w in caught], cli


def test_a_monitored_metric_without_validation_is_said_once_at_the_start_and_in_the_report(finished_run):
    _, out, caught, _ = finished_run
    said = [w for w in caught if "ModelCheckpoint(monitor='val/accuracy') will save no checkpoint" in w]
    assert len(said) == 1 and "no validation (the data has no validation split)" in said[0]
    # Lightning's own warning, which blames the module for not logging the metric, is not given.
    assert not [w for w in caught if "could not find the monitored key" in w]
    assert "nothing monitored" not in out
    assert (
        "best checkpoint  (none: ModelCheckpoint monitors val/accuracy, but this run had no validation "
        "(the data has no validation split))" in out
    )
    assert "last checkpoint  " in out and "checkpoints/last.ckpt" in out


def test_the_export_lists_what_it_wrote(finished_run):
    tmp, *_ = finished_run
    marker = json.loads((tmp / "exported" / ".grpo-lightning-export.json").read_text())
    assert marker["files"] == sorted(p.name for p in (tmp / "exported").iterdir() if p.name != MARKER)
    assert "model.safetensors" in marker["files"] and "README.md" in marker["files"]


def test_an_export_from_the_checkpoint_is_the_export_fit_wrote(finished_run, monkeypatch):
    tmp, *_ = finished_run
    target = tmp / "exported"
    by_fit = snapshot(target)
    ckpt = tmp / "runs/lightning_logs/version_0/checkpoints/last.ckpt"
    argv = ["grpo-lightning", "export", "--ckpt_path", str(ckpt), "--export.dir", str(target)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(ValueError, match=r"--export\.overwrite true"):
        console_entry()  # the folder holds fit's export
    monkeypatch.setattr(sys, "argv", [*argv, "--export.overwrite", "true", "--export.merge_lora", "true"])
    with pytest.raises(ValueError, match="trained no LoRA adapter: there is nothing to merge"):
        console_entry()  # a full fine-tuning checkpoint has no adapter to merge
    assert snapshot(target) == by_fit  # and fit's export is left as it was
    monkeypatch.setattr(sys, "argv", [*argv, "--export.overwrite", "true"])
    console_entry()
    from_checkpoint = snapshot(target)
    # The markers' files agree (their id and time differ).
    assert json.loads(from_checkpoint.pop(MARKER))["files"] == json.loads(by_fit.pop(MARKER))["files"]
    assert from_checkpoint == by_fit  # weights, config, tokenizer and model card, byte for byte
    assert "Optimizer steps: 2" in (target / "README.md").read_text()
    assert AutoModelForCausalLM.from_pretrained(target).config.model_type == "qwen2"
    assert sorted(p.name for p in tmp.iterdir()) == ["exported", "policy", "runs"]  # nothing staged is left


def test_after_a_failed_export_the_checkpoint_at_the_final_step_is_named(finished_run):
    from grpo_lightning.run.exporting import final_checkpoint

    tmp, *_, cli = finished_run
    ckpts = tmp / "runs/lightning_logs/version_0/checkpoints"
    before = sorted(p.name for p in ckpts.iterdir())
    path, note = final_checkpoint(cli.trainer)
    assert path == ckpts / "last.ckpt" and "holds the trained weights (step 2)" in note
    assert sorted(p.name for p in ckpts.iterdir()) == before  # found, not written again


def test_when_the_trained_weights_cannot_be_saved_either_the_error_says_so(tmp_path):
    from grpo_lightning.run.exporting import export_failure

    older = tmp_path / "checkpoints" / "step=1.ckpt"
    older.parent.mkdir()
    torch.save({"global_step": 1, "state_dict": {}, "pytorch-lightning_version": "2.6.0"}, older)

    def save_checkpoint(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    trainer = SimpleNamespace(
        global_step=2,
        checkpoint_callbacks=[],
        is_global_zero=True,
        strategy=SimpleNamespace(broadcast=lambda obj: obj),
        default_root_dir=str(tmp_path),
        loggers=[],
        save_checkpoint=save_checkpoint,
    )
    error = OSError(errno.ENOSPC, "No space left on device")
    message = str(export_failure(trainer, str(tmp_path / "out"), error, merge_lora=False, existed=False))
    assert "failed (the disk is full)" in message
    assert f"The trained weights could not be kept: saving the trained weights to {older.parent}" in message
    assert f"the newest checkpoint is {older}, from before the end of training" in message
    assert "grpo-lightning export" not in message  # no command that would export something else


def test_the_export_command_names_what_it_cannot_read(tmp_path, monkeypatch):
    (tmp_path / "sharded.ckpt").mkdir()
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04 cut off")
    for ckpt, why in [
        ("sharded.ckpt", "is a folder: a sharded checkpoint"),
        ("missing.ckpt", "no such checkpoint file"),
        ("cut.ckpt", "cut.ckpt"),
    ]:
        argv = [
            "grpo-lightning",
            "export",
            "--ckpt_path",
            str(tmp_path / ckpt),
            "--export.dir",
            str(tmp_path / "m"),
        ]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises((ValueError, OSError, RuntimeError), match=why):
            console_entry()
    assert not (tmp_path / "m").exists()
