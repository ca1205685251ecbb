"""Paths that travel: an export names its base model and its own folder in ways that hold on another
machine or from another working directory, and the built-in model's folder is printed by a command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import answer_reward, child_env, one_thread, save_tiny_policy  # noqa: F401 (autouse fixture)

from grpo_lightning.hf.builtin import builtin_alias
from grpo_lightning.hf.models import main, resolve_model_path
from grpo_lightning.module import GRPOModule
from grpo_lightning.run.export_dir import staged_export
from grpo_lightning.run.exporting import write_policy

LORA = {"r": 2, "target_modules": ["q_proj", "v_proj"]}


def snippet(folder: Path) -> str:
    return re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.DOTALL).group(1)


def test_an_adapter_on_the_builtin_model_names_the_alias_and_its_card_loads_it(tmp_path, monkeypatch, capsys):
    module = GRPOModule("builtin:tiny-math", reward_funcs=[answer_reward], lora=LORA)
    module.configure_model()
    folder = Path(module.save_pretrained(str(tmp_path / "adapter")))
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "builtin:tiny-math"  # not a folder in site-packages
    # Saving leaves the policy as it was: peft keeps naming the folder it loaded.
    assert module.policy.peft_config["default"].base_model_name_or_path == resolve_model_path("builtin:tiny-math")
    card = (folder / "README.md").read_text()
    assert "python -m grpo_lightning.hf.models builtin:tiny-math" in card and str(tmp_path) not in card
    code = snippet(folder)
    assert "resolve_model_path('builtin:tiny-math')" in code and "PeftModel.from_pretrained(base, 'adapter')" in code
    monkeypatch.chdir(tmp_path)  # the folder that holds the export, as the card says
    exec(code.replace("max_new_tokens=256", "max_new_tokens=8"), {})
    assert capsys.readouterr().out.strip()  # it loaded and generated


def test_an_adapter_on_a_model_folder_names_the_folder_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_tiny_policy(tmp_path / "policy")
    module = GRPOModule("policy", reward_funcs=[answer_reward], lora=LORA)
    folder = Path(module.save_pretrained(str(tmp_path / "adapter")))
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "policy"
    assert "AutoPeftModelForCausalLM.from_pretrained('adapter')" in snippet(folder)  # peft resolves the base


def test_a_cards_snippet_names_its_folder_not_the_path_it_was_saved_by(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    module = GRPOModule("builtin:tiny-math", reward_funcs=[answer_reward])
    module.save_pretrained("runs/quickstart/version_0/hf_model")  # relative to where training ran
    folder = tmp_path / "runs" / "quickstart" / "version_0" / "hf_model"
    code = snippet(folder)
    assert "model='hf_model'" in code and "runs/quickstart" not in code
    monkeypatch.chdir(folder.parent)  # run from beside the folder: the path given when saving is gone
    exec(code.replace("max_new_tokens=256", "max_new_tokens=4"), {})
    assert capsys.readouterr().out.strip()


def test_a_staged_export_card_loads_from_its_own_folder_not_from_where_training_ran(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = GRPOModule("builtin:tiny-math", reward_funcs=[answer_reward])
    target = Path("runs") / "quickstart" / "version_0" / "hf_model"  # as fit gives it: relative to the cwd
    target.parent.mkdir(parents=True)
    with staged_export(target) as folder:
        write_policy(module, folder, target, False, None)
    card = (target / "README.md").read_text()
    assert "pipeline('text-generation', model='hf_model')" in card
    assert "runs/quickstart" not in card and "grpo-export" not in card and str(tmp_path) not in card
    code = snippet(target)
    monkeypatch.chdir(target.parent)  # a user beside the folder runs the card's code as it is
    exec(code.replace("max_new_tokens=256", "max_new_tokens=4"), {})


def test_builtin_alias_maps_only_the_packages_own_model_folders(tmp_path):
    assert builtin_alias(resolve_model_path("builtin:tiny-math")) == "builtin:tiny-math"
    assert builtin_alias(tmp_path) is None and builtin_alias("Qwen/Qwen2.5-0.5B") is None


def test_the_models_command_prints_the_builtin_folder(capsys):
    assert main(["builtin:tiny-math"]) == 0
    assert capsys.readouterr().out == resolve_model_path("builtin:tiny-math") + "\n"
    assert main(["builtin:nope"]) == 2
    assert "Unknown built-in model 'builtin:nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_python_m_grpo_lightning_models_runs_as_documented():
    done = subprocess.run(
        [sys.executable, "-m", "grpo_lightning.hf.models", "builtin:tiny-math"],
        capture_output=True, text=True, env=child_env(), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert folder == Path(resolve_model_path("builtin:tiny-math")) and (folder / "config.json").is_file()
