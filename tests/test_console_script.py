"""The installed ``grpo-lightning`` script exits 0 after a real run (returning the CLI object to the
script wrapper would make it exit 1), and ``python -m grpo_lightning`` works the same way."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from helpers import tiny_model, tiny_tokenizer


@pytest.mark.parametrize("launcher", ["script", "module"])
def test_validate_runs_and_exits_zero(tmp_path, launcher):
    if launcher == "script" and shutil.which("grpo-lightning") is None:
        pytest.skip("the console script is not installed in this environment")
    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    command = ["grpo-lightning"] if launcher == "script" else [sys.executable, "-m", "grpo_lightning"]
    args = [
        "validate",
        f"--model.model={tmp_path / 'policy'}",
        "--model.reward_funcs=[gsm8k_accuracy]",
        "--model.max_completion_length=4",
        "--data.synthetic={train_size: 8, val_size: 4, test_size: 0}",
        "--data.val_batch_size=4",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
    ]
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "val/accuracy" in done.stdout
