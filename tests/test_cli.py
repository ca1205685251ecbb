"""The command line: every shipped config parses, --print_config round-trips, and fit runs end to end."""

from __future__ import annotations

import glob
import os

import pytest
import torch
from helpers import one_thread, save_tiny_policy  # noqa: F401 (autouse fixture)
from transformers import AutoModelForCausalLM

from grpo_lightning.cli.app import main
from grpo_lightning.hf.models import BuiltModel
from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
RECIPES = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))
PRESETS = sorted(glob.glob(os.path.join(CONFIG_DIR, "trainer", "*.yaml")))


def print_config(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("recipe", RECIPES, ids=os.path.basename)
def test_every_recipe_parses_alone_and_with_every_trainer_preset(capsys, recipe):
    alone = print_config(capsys, "--config", recipe)
    assert "model:" in alone and "data:" in alone
    for preset in PRESETS:
        combined = print_config(capsys, "--config", recipe, "--config", preset)
        assert "trainer:" in combined


def test_presets_change_what_they_say(capsys):
    recipe = os.path.join(CONFIG_DIR, "gsm8k_qwen2.5_0.5b.yaml")
    by_name = {os.path.basename(p): print_config(capsys, "--config", recipe, "--config", p) for p in PRESETS}
    assert "strategy: ddp" in by_name["ddp.yaml"]
    assert "FSDP2Strategy" in by_name["fsdp.yaml"]
    assert "precision: bf16-mixed" in by_name["bf16.yaml"]


def test_print_config_feeds_back_into_fit(capsys, tmp_path):
    recipe = os.path.join(CONFIG_DIR, "gsm8k_qwen2.5_0.5b.yaml")
    first = print_config(capsys, "--config", recipe, "--model.beta", "0.04", "--data.batch_size", "4")
    saved = tmp_path / "resolved.yaml"
    saved.write_text(first)
    second = print_config(capsys, "--config", str(saved))
    assert second == first
    assert "beta: 0.04" in second and "batch_size: 4" in second


def test_data_tokenizer_follows_the_model(tmp_path):
    model_dir = str(save_tiny_policy(tmp_path / "policy"))
    cli = main(["--model.model", model_dir, "--model.reward_funcs", "[gsm8k_accuracy]"], run=False)
    assert cli.datamodule.tokenizer == model_dir  # linked: set once, under model


def test_fit_runs_exports_and_says_where_everything_is(capsys, tmp_path):
    model_dir = save_tiny_policy(tmp_path / "policy")
    export_dir = tmp_path / "export"
    main(
        [
            "fit",
            f"--model.model={model_dir}",
            "--model.reward_funcs=[gsm8k_accuracy]",
            "--model.num_generations=2",
            "--model.max_completion_length=6",
            "--model.learning_rate=1e-3",
            "--data.prompt_template={question}\n",
            "--data.batch_size=2",
            "--data.val_batch_size=4",
            "--data.synthetic={train_size: 16, val_size: 4, test_size: 4}",
            "--trainer.accelerator=cpu",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
            f"--export.dir={export_dir}",
        ]
    )
    out = capsys.readouterr().out
    assert "GRPO run finished." in out and str(export_dir) in out
    # The resolved configuration is saved in the run's log folder.
    assert glob.glob(str(tmp_path / "runs" / "**" / "config.yaml"), recursive=True)
    # The exported policy loads back as a plain Hugging Face model.
    assert AutoModelForCausalLM.from_pretrained(export_dir).config.model_type == "qwen2"
    # Its model card says how it was trained: the rewards, the optimizer steps, the last metrics.
    card = (export_dir / "README.md").read_text()
    assert "Rewards: gsm8k_accuracy" in card and "Optimizer steps: 2" in card and "| train/reward |" in card


def test_a_model_built_in_python_is_given_to_the_cli_as_the_object():
    tokenizer = build_char_tokenizer(model_max_length=64)
    model = build_tiny_model(tokenizer, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1)
    assert isinstance(model, BuiltModel)
    assert not isinstance(torch.nn.Linear(2, 2), BuiltModel) and not isinstance("builtin:tiny-math", BuiltModel)
    args = {
        "model": {"model": model, "tokenizer": tokenizer, "reward_funcs": ["gsm8k_accuracy"]},
        "data": {"synthetic": {"train_size": 8, "val_size": 0, "test_size": 0}},
    }
    cli = main(args, run=False)
    assert cli.model.policy is model
