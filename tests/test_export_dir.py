"""The export folder is checked before training and replaced whole, never merged into."""

from __future__ import annotations

import pytest
from helpers import one_thread, tiny_model, tiny_tokenizer  # noqa: F401 (autouse fixture)

from grpo_lightning.cli import main
from grpo_lightning.export_dir import check_export_dir, replacing


def test_a_file_or_a_folder_with_files_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_export_dir(tmp_path / "afile", overwrite=True)
    old = tmp_path / "old"
    old.mkdir()
    (old / "adapter_config.json").write_text("{}")
    with pytest.raises(
        ValueError, match=r"already holds files \(adapter_config.json\).*--export.overwrite true"
    ):
        check_export_dir(old, overwrite=False)
    check_export_dir(old, overwrite=True)
    check_export_dir(tmp_path / "new" / "deeper", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_export_dir(tmp_path / "empty", overwrite=False)


def test_replacing_leaves_no_old_file_and_restores_on_failure(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "adapter_model.safetensors").write_text("stale adapter")
    with replacing(target) as folder:
        folder.mkdir()
        (folder / "model.safetensors").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
    with pytest.raises(RuntimeError, match="disk"), replacing(target) as folder:
        folder.mkdir()
        (folder / "half").write_text("")
        raise RuntimeError("disk went away")
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_the_cli_refuses_a_used_export_folder_before_training(tmp_path):
    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    used = tmp_path / "export"
    used.mkdir()
    (used / "config.json").write_text("{}")
    args = [
        "fit",
        f"--model.model={tmp_path / 'policy'}",
        "--model.reward_funcs=[gsm8k_accuracy]",
        "--data.synthetic={train_size: 16, val_size: 4, test_size: 4}",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=1",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        f"--export.dir={used}",
    ]
    with pytest.raises(ValueError, match="already holds files"):
        main(args)
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # nothing was trained
