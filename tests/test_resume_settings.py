"""Resuming from the command line: changed settings are applied and recorded, or refused by name."""

from __future__ import annotations

import datetime
import glob
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import one_thread, tiny_model, tiny_tokenizer  # noqa: F401 (autouse fixture)

from grpo_lightning.cli.app import main
from grpo_lightning.run.checkpointing import CheckpointFileError
from grpo_lightning.run.resume import apply_optimizer_settings, changed_settings, check_resume_settings


def _policy(path):
    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _fit(root, model_dir, *extra: str):
    return main(
        [
            "fit",
            f"--model.model={model_dir}",
            "--model.reward_funcs=[helpers:char_code_mean]",  # dense: every step has a signal
            "--model.num_generations=2",
            "--model.max_completion_length=6",
            "--model.learning_rate=1e-3",
            "--model.warmup_steps=8",
            "--model.beta=0.1",
            "--data.prompt_template={question}\n",
            "--data.batch_size=2",
            "--data.synthetic={train_size: 16, val_size: 4, test_size: 4}",
            "--trainer.accelerator=cpu",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}",
            "--export.enabled=false",
            *extra,
        ]
    )


@pytest.fixture
def first_run(tmp_path):
    model_dir = _policy(tmp_path / "policy")
    _fit(tmp_path / "first", model_dir)
    (ckpt,) = glob.glob(str(tmp_path / "first" / "**" / "*.ckpt"), recursive=True)
    return model_dir, ckpt


def test_a_changed_learning_rate_is_applied_and_recorded(tmp_path, first_run, capsys):
    model_dir, ckpt = first_run
    cli = _fit(
        tmp_path / "second",
        model_dir,
        f"--ckpt_path={ckpt}",
        "--model.learning_rate=1e-2",
        "--trainer.max_steps=3",
    )
    assert "learning_rate: 0.001 -> 0.01" in capsys.readouterr().err
    assert cli.model.hparams.learning_rate == 1e-2
    # After 3 of 8 warmup steps, at the new rate (the old one would give 5e-4).
    assert cli.model.optimizers().param_groups[0]["lr"] == pytest.approx(1e-2 * 4 / 8)
    assert cli.trainer.lr_scheduler_configs[0].scheduler.base_lrs == [pytest.approx(1e-2)] * 2
    (config,) = glob.glob(str(tmp_path / "second" / "**" / "config.yaml"), recursive=True)
    assert Path(config).read_text().startswith(f"# This run resumed from {ckpt} (--ckpt_path).")
    saved = yaml.safe_load(Path(config).read_text())
    assert saved["model"]["learning_rate"] == 1e-2
    # The settings, not the one-time resume: running this file again starts a new run.
    assert saved["ckpt_path"] is None


def test_a_changed_num_generations_is_refused_by_name(tmp_path, first_run):
    model_dir, ckpt = first_run
    with pytest.raises(ValueError, match="num_generations: checkpoint 2, now 4"):
        _fit(
            tmp_path / "second",
            model_dir,
            f"--ckpt_path={ckpt}",
            "--model.num_generations=4",
            "--trainer.max_steps=3",
        )


def test_a_moved_model_folder_can_be_given_anew(tmp_path, first_run):
    model_dir, ckpt = first_run
    moved = tmp_path / "moved"
    shutil.move(model_dir, moved)
    cli = _fit(tmp_path / "second", moved, f"--ckpt_path={ckpt}", "--trainer.max_steps=3")
    assert cli.trainer.global_step == 3
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert not torch.equal(
        cli.model.policy.model.embed_tokens.weight, state["policy.model.embed_tokens.weight"]
    )


def test_settings_comparison():
    saved = {"learning_rate": 1e-3, "beta": 0.0, "num_generations": 8, "only_old": 1}
    now = {"learning_rate": 1e-3, "beta": 0.1, "num_generations": 8, "only_new": 2}
    assert changed_settings(saved, now) == {"beta": (0.0, 0.1)}
    assert check_resume_settings({"lora": None}, {"lora": None}) == {}
    with pytest.raises(ValueError, match=r"--model.lora None"):
        check_resume_settings({"lora": None}, {"lora": {"r": 8}})


def test_optimizer_state_is_rescaled_to_the_new_learning_rate():
    ckpt = {
        "optimizer_states": [
            {
                "param_groups": [
                    {"lr": 5e-4, "initial_lr": 1e-3, "weight_decay": 0.1},
                    {"lr": 5e-4, "weight_decay": 0.0},
                ]
            }
        ],
        "lr_schedulers": [{"base_lrs": [1e-3, 1e-3], "_last_lr": [5e-4, 5e-4]}],
    }
    apply_optimizer_settings(ckpt, old_lr=1e-3, new_lr=2e-3, old_weight_decay=0.1, new_weight_decay=0.2)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3)] * 2 and groups[0][
        "initial_lr"
    ] == pytest.approx(2e-3)
    assert [g["weight_decay"] for g in groups] == [0.2, 0.0]
    assert ckpt["lr_schedulers"][0]["base_lrs"] == [pytest.approx(2e-3)] * 2
    assert ckpt["lr_schedulers"][0]["_last_lr"] == [pytest.approx(1e-3)] * 2


@pytest.mark.parametrize("named", [True, False])
def test_a_new_weight_decay_from_zero_reaches_the_decayed_group_only(named):
    # Both groups hold 0.0 when the run started without decay: only the matrices' group may change.
    groups = [{"lr": 1e-3, "weight_decay": 0.0}, {"lr": 1e-3, "weight_decay": 0.0}]
    if named:
        groups = [{**groups[0], "name": "decay"}, {**groups[1], "name": "no_decay"}]
    ckpt = {"optimizer_states": [{"param_groups": groups}]}
    apply_optimizer_settings(ckpt, old_lr=1e-3, new_lr=1e-3, old_weight_decay=0.0, new_weight_decay=0.1)
    assert [g["weight_decay"] for g in ckpt["optimizer_states"][0]["param_groups"]] == [0.1, 0.0]


def test_the_default_optimizer_names_its_groups():
    from helpers import make_module

    module = make_module(tiny_tokenizer(), weight_decay=0.1)
    optimizer = module.configure_optimizers()["optimizer"]
    assert [(g["name"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("decay", 0.1),
        ("no_decay", 0.0),
    ]


def test_a_custom_optimizer_learning_rate_given_on_resume_is_applied(tmp_path):
    from helpers import PromptsDataModule, make_module, make_trainer

    tok = tiny_tokenizer()

    def sgd(lr):
        return lambda params: torch.optim.SGD(params, lr=lr)

    trainer = make_trainer(max_steps=2, enable_checkpointing=True, default_root_dir=str(tmp_path / "a"))
    trainer.fit(make_module(tok, optimizer=sgd(0.1)), datamodule=PromptsDataModule(tok))
    (ckpt,) = glob.glob(str(tmp_path / "a" / "**" / "*.ckpt"), recursive=True)
    resumed = make_module(tok, optimizer=sgd(0.01))
    make_trainer(max_steps=3, default_root_dir=str(tmp_path / "b")).fit(
        resumed, datamodule=PromptsDataModule(tok), ckpt_path=ckpt
    )
    # Lightning restores the checkpoint's optimizer (lr 0.1) over the new one: the new rate must win.
    assert resumed.optimizers().param_groups[0]["lr"] == pytest.approx(0.01)
    assert resumed.trainer.global_step == 3


def test_a_checkpoint_needing_weights_only_false_resumes_with_the_flag_the_error_names(tmp_path, first_run):
    model_dir, ckpt = first_run
    checkpoint = torch.load(ckpt, weights_only=False)
    checkpoint["hyper_parameters"]["started"] = datetime.date(
        2025, 1, 1
    )  # not on the weights-only allow-list
    torch.save(checkpoint, ckpt)
    with pytest.raises(CheckpointFileError, match="add --weights_only false to the command") as info:
        _fit(tmp_path / "second", model_dir, f"--ckpt_path={ckpt}", "--trainer.max_steps=3")
    flag = str(info.value).split("add ")[1].split(" to the command")[0].split()
    cli = _fit(tmp_path / "third", model_dir, f"--ckpt_path={ckpt}", *flag, "--trainer.max_steps=3")
    assert cli.trainer.global_step == 3


def test_a_changed_batch_size_mid_epoch_is_refused_from_the_command_line(tmp_path):
    model_dir = _policy(tmp_path / "policy")
    every_step = [
        "--trainer.callbacks+=ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
        "--trainer.callbacks.every_n_train_steps=1",
        "--trainer.callbacks.save_top_k=-1",
    ]
    _fit(tmp_path / "first", model_dir, *every_step)
    ckpt = tmp_path / "ckpt" / "epoch=0-step=1.ckpt"  # after batch 1 of the 8 of epoch 0
    with pytest.raises(ValueError, match=r"data\.batch_size: 2 -> 4") as info:
        _fit(tmp_path / "second", model_dir, f"--ckpt_path={ckpt}", "--data.batch_size=4")
    assert "Resume with the checkpoint's values (--data.batch_size 2)" in str(info.value)


def test_a_changed_batch_size_at_an_epoch_boundary_is_applied_and_said(tmp_path, first_run, capsys):
    # Stopped by max_steps, a run's checkpoint is written at the end of its epoch: Lightning resumes
    # with the next one, which then runs on the new batches.
    model_dir, ckpt = first_run
    cli = _fit(
        tmp_path / "second", model_dir, f"--ckpt_path={ckpt}", "--data.batch_size=4", "--trainer.max_steps=3"
    )
    err = capsys.readouterr().err
    assert (
        "data.batch_size: 2 -> 4" in err
        and "at the start of epoch 1, so that epoch runs on the new ones" in err
    )
    assert cli.trainer.global_step == 3
