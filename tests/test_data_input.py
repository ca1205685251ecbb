"""Data files from the command line and bad data files: each works or fails naming the cause."""

from __future__ import annotations

import warnings

import datasets
import pytest
from datasets import Dataset
from lightning.pytorch import Trainer
from torch.utils.data import TensorDataset

from grpo_lightning.batch import PROMPT_KEYS
from grpo_lightning.cli.app import main
from grpo_lightning.data import DataSourceError, PromptDataModule
from grpo_lightning.data.sources import RESERVED_COLUMNS, InMemoryDataset
from grpo_lightning.hf.tiny import build_char_tokenizer

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


def test_in_memory_dataset_stands_for_dataset_and_datasetdict_only():
    table = Dataset.from_list([{"question": "What is 7 + 7?", "answer": "14"}])
    assert isinstance(table, InMemoryDataset)
    assert isinstance(datasets.DatasetDict({"train": table}), InMemoryDataset)
    for other in ("synthetic", {"train": "q.csv"}, [{"question": "q", "answer": "1"}], TensorDataset()):
        assert not isinstance(other, InMemoryDataset), other


def test_a_dataset_given_to_the_cli_from_python_is_kept_as_the_object():
    table = Dataset.from_list([{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(3)])
    args = {
        "model": {"model": "builtin:tiny-math", "reward_funcs": ["gsm8k_accuracy"]},
        "data": {"dataset": table, "synthetic": None, "val_fraction": 0, "batch_size": 1},
    }
    cli = main(args, run=False)
    assert cli.datamodule.dataset is table
    cli.datamodule.setup("fit")
    assert len(cli.datamodule.train_dataset) == 3


def test_a_value_no_source_form_takes_is_refused_naming_the_forms(capsys):
    args = {"model": {"model": "builtin:tiny-math"}, "data": {"dataset": 5}}
    with pytest.raises(SystemExit):
        main(args, run=False)
    error = capsys.readouterr().err
    assert "data.dataset" in error and "datasets.Dataset or DatasetDict object" in error


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


def test_a_batch_is_the_prompt_keys_plus_the_data_set_columns():
    """The keys the module takes as the prompt are the ones the data module adds; a source column of
    such a name is dropped (it would be overwritten), so every other key is a column for the rewards."""
    rows = [
        {"question": f"What is {i} + 1?", "answer": str(i + 1), "level": "1", "input_ids": [i]}
        for i in range(4)
    ]
    dm = PromptDataModule(
        Dataset.from_list(rows), tokenizer=build_char_tokenizer(), batch_size=2, val_fraction=0
    )
    with pytest.warns(UserWarning, match=r"columns \['input_ids'\] clash with names the data module uses"):
        dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(PROMPT_KEYS) <= set(RESERVED_COLUMNS)
    assert set(batch) - set(PROMPT_KEYS) == {"question", "answer", "level"}
    assert batch["input_ids"].shape[0] == 2


@pytest.mark.parametrize("setting", ["prompt_template", "system_prompt"])
def test_a_backslash_n_typed_as_two_characters_warns_naming_the_fix(setting):
    value = "Q: {question}\\nA: "
    with pytest.warns(UserWarning, match=rf"(?s){setting} holds a backslash followed by 'n'.*YAML double quotes"):
        PromptDataModule(**{setting: value})
    with warnings.catch_warnings():  # a real line break, and LaTeX commands, are fine
        warnings.simplefilter("error")
        PromptDataModule(**{setting: "Q: {question}\nA: with \\neq, \\nabla or \\boxed{}"})


def test_yaml_double_quotes_give_a_line_break_and_single_quotes_warn(tmp_path):
    for quote, breaks in (('"', True), ("'", False)):
        config = tmp_path / "run.yaml"
        config.write_text(f"data:\n  prompt_template: {quote}Q: {{question}}\\nA: {quote}\n")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cli = main([*CLI, f"--config={config}"], run=False)
        template = cli.datamodule.hparams.prompt_template
        assert template == ("Q: {question}\nA: " if breaks else "Q: {question}\\nA: ")
        warned = [str(w.message) for w in caught if "backslash followed by 'n'" in str(w.message)]
        assert len(warned) == (0 if breaks else 1), warned
