"""Data files from the command line and bad data files: each works or fails naming the cause."""

from __future__ import annotations

import datasets
import pytest
from datasets import Dataset
from lightning.pytorch import Trainer

from grpo_lightning.cli import main
from grpo_lightning.data import DataSourceError, PromptDataModule
from grpo_lightning.tiny import build_char_tokenizer

CLI = ["--model.model=builtin:tiny-math", "--model.reward_funcs=[gsm8k_accuracy]", "--data.synthetic=null"]


@pytest.fixture(autouse=True)
def hermetic_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize(
    ("name", "content", "rows"),
    [
        ("q.csv", "question,answer\nWhat is 7 + 7?,14\nWhat is 2 + 2?,4\n", 2),
        ("one.jsonl", '{"question": "What is 7 + 7?", "answer": "14"}\n', 1),
    ],
)
def test_a_csv_or_one_line_jsonl_file_is_used_by_name_from_the_cli(tmp_path, name, content, rows):
    path = tmp_path / name
    path.write_text(content)
    cli = main([*CLI, f"--data.dataset={path}", "--data.val_fraction=0", "--data.batch_size=1"], run=False)
    # The command line used to pass the file's *contents* on (a string, or a dict for one JSON line).
    assert cli.datamodule.dataset == str(path)
    cli.datamodule.setup("fit")
    assert len(cli.datamodule.train_dataset) == rows


def test_the_same_works_from_a_yaml_config(tmp_path):
    data = tmp_path / "q.csv"
    data.write_text("question,answer\nWhat is 7 + 7?,14\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  dataset: {data}\n  val_fraction: 0\n  batch_size: 1\n")
    cli = main([*CLI, f"--config={config}"], run=False)
    assert cli.datamodule.dataset == str(data)


def test_empty_and_malformed_jsonl_name_the_cause(tmp_path):
    tok = build_char_tokenizer()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataSourceError, match=r"empty\.jsonl' is empty: it holds no rows"):
        PromptDataModule(str(empty), tokenizer=tok).setup("fit")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"question": "a", "answer": "1"}\n{"question": "b", "answer": 2\n{"question": "c", "answer": "3"}\n'
    )
    with pytest.raises(DataSourceError, match=r"line 2 is not valid JSON \(Expecting ',' delimiter"):
        PromptDataModule(str(bad), tokenizer=tok).setup("fit")


def test_synthetic_settings_left_over_from_a_config_name_the_fix():
    with pytest.raises(ValueError, match=r"--data\.synthetic null"):
        PromptDataModule("my.jsonl", synthetic={"train_size": 10})


def test_a_validation_split_emptied_by_the_length_filter_is_fine_when_validation_is_off():
    tok = build_char_tokenizer(model_max_length=4096)
    rows = [{"question": "x" * 5, "answer": "1"}] * 8
    val = [{"question": "y" * 80, "answer": "1"}] * 2
    data = datasets.DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(val)})
    on = PromptDataModule(
        data, tokenizer=tok, max_prompt_length=20, batch_size=2, prompt_template="{question}"
    )
    with (
        pytest.warns(UserWarning, match="longer than max_prompt_length"),
        pytest.raises(DataSourceError, match="no usable"),
    ):
        on.setup("fit")
    off = PromptDataModule(
        data, tokenizer=tok, max_prompt_length=20, batch_size=2, prompt_template="{question}"
    )
    off.trainer = Trainer(limit_val_batches=0, logger=False, enable_checkpointing=False)
    off.setup("fit")
    assert len(off.train_dataset) == 8
