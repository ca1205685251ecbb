"""PromptDataModule: every source kind, the batch format, splits, prompt formatting and bad input."""

import json

import datasets
import pandas as pd
import pytest
import torch
from datasets import Dataset, DatasetDict

from grpo_lightning.data import DataSourceError, PromptDataModule
from grpo_lightning.hf.tiny import build_char_tokenizer

GSM8K_ROWS = [
    {
        "question": f"Tom has {i} apples and buys {i + 1} more. How many now?",
        "answer": f"{i}+{i + 1}={2 * i + 1}\n#### {2 * i + 1}",
    }
    for i in range(1, 41)
]
MATH_ROWS = [
    {
        "problem": f"Compute $\\frac{{{i}}}{{{i + 1}}} + 0$.",
        "solution": f"It is $\\boxed{{\\frac{{{i}}}{{{i + 1}}}}}$.",
        "level": "Level 1",
    }
    for i in range(1, 21)
]
TEMPLATE = "Q: {question}\nA:"


@pytest.fixture(autouse=True)
def hermetic_cache(tmp_path, monkeypatch):
    """File loads write their Arrow cache under the test's folder; nothing may reach the network."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer(model_max_length=4096)


def make(tokenizer, dataset="synthetic", **kwargs):
    kwargs.setdefault("prompt_template", TEMPLATE)
    kwargs.setdefault("batch_size", 4)
    if dataset == "synthetic":
        kwargs.setdefault("synthetic", {"train_size": 64, "val_size": 16, "test_size": 8})
    return PromptDataModule(dataset, tokenizer=tokenizer, **kwargs)


def write(rows, path):
    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- batch format and synthetic source


def test_synthetic_batches_follow_the_batch_format(tokenizer):
    dm = make(tokenizer)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"prompt", "input_ids", "attention_mask", "question", "answer", "solution"}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape and ids.shape[0] == 4
    for i, prompt in enumerate(batch["prompt"]):
        assert prompt == f"Q: {batch['question'][i]}\nA:"
        n = int(mask[i].sum())
        # Left padding: pad ids then the prompt's own tokens, which end at the last column.
        assert mask[i, -n:].all() and not mask[i, :-n].any()
        assert (ids[i, :-n] == tokenizer.pad_token_id).all()
        assert tokenizer.decode(ids[i, -n:]) == prompt
        assert batch["solution"][i].endswith(f"#### {batch['answer'][i]}")
    assert mask[:, -1].all()


def test_synthetic_splits_are_seeded_and_held_out(tokenizer):
    dm = make(tokenizer, synthetic={"train_size": 300, "val_size": 100, "test_size": 100, "max_operand": 6})
    dm.setup()
    train, val, test = dm.train_dataset, dm.val_dataset, dm.test_dataset
    assert (len(train), len(val), len(test)) == (300, 100, 100)
    # With operands up to 6 (630 distinct chains) many draws repeat; no worked chain may be shared across splits.
    chains = [set(split["solution"]) for split in (train, val, test)]
    assert sum(map(len, chains)) == 500 == len(set.union(*chains))
    again = make(
        tokenizer, synthetic={"train_size": 300, "val_size": 100, "test_size": 100, "max_operand": 6}
    )
    again.setup("fit")
    assert again.train_dataset["question"] == train["question"]
    other = make(
        tokenizer, data_seed=1, synthetic={"train_size": 300, "val_size": 100, "test_size": 100, "max_operand": 6}
    )
    other.setup("fit")
    assert other.train_dataset["question"] != train["question"]


def test_synthetic_knobs_are_checked(tokenizer):
    with pytest.raises(DataSourceError, match=r"Unknown synthetic setting\(s\) \['max_opernd'\]"):
        make(tokenizer, synthetic={"max_opernd": 5}).setup("fit")
    with pytest.raises(DataSourceError, match="too few distinct problems"):
        make(tokenizer, synthetic={"train_size": 500, "max_operand": 2, "max_steps": 1}).setup("fit")
    with pytest.raises(ValueError, match="synthetic settings were given"):
        PromptDataModule("openai/gsm8k", synthetic={"train_size": 5})


def test_training_order_is_seeded_and_reshuffled_every_epoch(tokenizer):
    dm = make(tokenizer)
    dm.setup("fit")
    loader = dm.train_dataloader()
    first = [q for b in loader for q in b["question"]]
    assert first == [q for b in loader for q in b["question"]]  # same epoch, same order
    loader.sampler.set_epoch(1)
    second = [q for b in loader for q in b["question"]]
    assert second != first and sorted(second) == sorted(first)
    assert all(len(b["question"]) == 4 for b in loader)  # drop_last: every step gets batch_size prompts


# ---------------------------------------------------------------- file, Hub and in-memory sources


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_gsm8k_shaped_files(tokenizer, tmp_path, suffix):
    path = write(GSM8K_ROWS, tmp_path / f"gsm8k{suffix}")
    dm = make(tokenizer, str(path), val_fraction=0.25)
    dm.setup("fit")
    train, val = dm.train_dataset, dm.val_dataset
    assert (len(train), len(val)) == (30, 10)  # a seeded quarter held out
    assert not set(train["question"]) & set(val["question"])
    row = next(r for split in (train, val) for r in split if r["question"].startswith("Tom has 7 "))
    # The GSM8K answer text becomes the solution; its '#### 15' the gold answer.
    assert row["answer"] == "15" and row["solution"] == "7+8=15\n#### 15"


def test_math_shaped_file_reads_the_last_box(tokenizer, tmp_path):
    path = write(MATH_ROWS, tmp_path / "math.jsonl")
    dm = make(tokenizer, str(path), val_fraction=0.0)
    dm.setup("fit")
    rows = {r["question"]: r for r in dm.train_dataset}
    row = rows["Compute $\\frac{3}{4} + 0$."]
    assert row["answer"] == "\\frac{3}{4}"  # nested braces inside \boxed{...}
    assert row["level"] == "Level 1"  # other columns come along for the rewards
    assert dm.val_dataset is None and dm.val_dataloader() == []


def test_math500_shaped_answer_column_is_used_as_is(tokenizer, tmp_path):
    rows = [
        {"problem": "Simplify $\\sqrt{8}$.", "solution": "... $\\boxed{2\\sqrt{2}}$", "answer": "2\\sqrt{2}"}
    ] * 1
    rows += [
        {"problem": f"What is {i}?", "solution": f"$\\boxed{{{i}}}$", "answer": str(i)} for i in range(9)
    ]
    dm = make(tokenizer, str(write(rows, tmp_path / "test.parquet")), val_fraction=0.0)
    dm.setup("fit")
    assert dm.train_dataset[0]["answer"] == "2\\sqrt{2}"


def test_split_files_mapping(tokenizer, tmp_path):
    files = {
        "train": str(write(GSM8K_ROWS[:30], tmp_path / "train.jsonl")),
        "test": str(write(GSM8K_ROWS[30:], tmp_path / "test.jsonl")),
    }
    dm = make(tokenizer, files, val_split="test")
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (30, 10)


def hub_copy(root, rows_by_split):
    """A local copy of a Hub repository laid out like openai/gsm8k: config folders plus README configs."""
    for split, rows in rows_by_split.items():
        (root / "main").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(root / "main" / f"{split}-00000-of-00001.parquet")
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: main/{s}-*\n" for s in rows_by_split)
        + "---\n"
    )
    return root


def test_hub_repository_copy_with_config_and_splits(tokenizer, tmp_path):
    repo = hub_copy(tmp_path / "gsm8k", {"train": GSM8K_ROWS[:32], "test": GSM8K_ROWS[32:]})
    dm = make(tokenizer, str(repo), config_name="main", val_split="test", max_val_samples=5)
    dm.setup("fit")
    assert len(dm.train_dataset) == 32 and len(dm.val_dataset) == 5  # capped validation
    assert set(dm.val_dataset["question"]) <= {r["question"] for r in GSM8K_ROWS[32:]}
    dm.setup("test")
    assert len(dm.test_dataset) == 8  # "test" is picked up as the test split
    with pytest.raises(DataSourceError, match=r"no split 'dev' \(splits: \['train', 'test'\]\)"):
        make(tokenizer, str(repo), config_name="main", val_split="dev").setup("fit")


def test_validation_from_another_source(tokenizer, tmp_path):
    # Train on MATH-shaped data, validate on a MATH-500-shaped repository copy (one split, "test").
    train = write(MATH_ROWS, tmp_path / "math_train.jsonl")
    math500 = [
        {"problem": f"What is {i} squared?", "solution": "...", "answer": str(i * i)} for i in range(6)
    ]
    math500.append({**MATH_ROWS[0], "answer": "\\frac{1}{2}"})  # also in training: kept out of validation
    repo = tmp_path / "MATH-500"
    repo.mkdir()
    write(math500, repo / "test.jsonl")
    dm = make(tokenizer, str(train), val_dataset=str(repo))
    with pytest.warns(UserWarning, match="dropped 1 questions that also appear in training"):
        dm.setup("fit")
    assert len(dm.train_dataset) == 20  # nothing held out of the training file
    assert sorted(dm.val_dataset["answer"]) == sorted(str(i * i) for i in range(6))
    with pytest.raises(DataSourceError, match=r"val_dataset .*MATH-500.* has no split 'validation'"):
        make(tokenizer, str(train), val_dataset=str(repo), val_split="validation").setup("fit")


def test_saved_to_disk_and_in_memory_datasets(tokenizer, tmp_path):
    splits = DatasetDict(
        {"train": Dataset.from_list(GSM8K_ROWS[:32]), "validation": Dataset.from_list(GSM8K_ROWS[32:])}
    )
    splits.save_to_disk(tmp_path / "saved")
    for source in (str(tmp_path / "saved"), splits):
        dm = make(tokenizer, source)
        dm.setup("fit")
        assert (len(dm.train_dataset), len(dm.val_dataset)) == (32, 8)  # "validation" found by name
    single = make(tokenizer, Dataset.from_list(GSM8K_ROWS), val_fraction=0.1)
    single.setup("fit")
    assert (len(single.train_dataset), len(single.val_dataset)) == (36, 4)
    assert "dataset" not in single.hparams  # the Dataset object is not saved as a hyperparameter


def test_column_map_and_passthrough(tokenizer):
    rows = [{"text": f"What is {i} + {i}?", "final": str(2 * i), "id": i} for i in range(12)]
    dm = make(
        tokenizer, Dataset.from_list(rows), column_map={"question": "text", "answer": "final"}, val_fraction=0
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"prompt", "input_ids", "attention_mask", "question", "answer", "id"}
    for question, answer, row_id in zip(batch["question"], batch["answer"], batch["id"], strict=True):
        assert question == rows[row_id]["text"] and answer == rows[row_id]["final"]


def test_held_out_questions_never_appear_in_training(tokenizer):
    train = GSM8K_ROWS[:20]
    val = GSM8K_ROWS[15:25]  # five questions shared with training
    dm = make(
        tokenizer, DatasetDict({"train": Dataset.from_list(train), "validation": Dataset.from_list(val)})
    )
    with pytest.warns(UserWarning, match="dropped 5 questions that also appear in training"):
        dm.setup("fit")
    assert len(dm.val_dataset) == 5 and not set(dm.val_dataset["question"]) & set(
        dm.train_dataset["question"]
    )


# ---------------------------------------------------------------- prompts and tokenizers


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_chat_template_auto_on_off_and_system_prompt():
    chat_tokenizer = build_char_tokenizer()
    chat_tokenizer.chat_template = CHAT_TEMPLATE
    rows = Dataset.from_list(
        [{"question": "What is 1 + 1?", "answer": "2"}] * 1
        + [{"question": f"{i}?", "answer": "1"} for i in range(7)]
    )
    auto = make(chat_tokenizer, rows, system_prompt="Be brief.", val_fraction=0)
    auto.setup("fit")
    prompts = set(auto.train_dataset["prompt"])
    assert "<|system|>Be brief.\n<|user|>Q: What is 1 + 1?\nA:\n<|assistant|>" in prompts
    off = make(chat_tokenizer, rows, system_prompt="Be brief.", use_chat_template=False, val_fraction=0)
    off.setup("fit")
    assert "Be brief.\n\nQ: What is 1 + 1?\nA:" in set(off.train_dataset["prompt"])
    with pytest.raises(ValueError, match="has no chat template"):
        make(build_char_tokenizer(), rows, use_chat_template=True, val_fraction=0).setup("fit")


def test_long_prompts_are_dropped_with_a_count_or_raise(tokenizer):
    # The template adds 6 characters: questions of 10..40 characters give prompts of 16..46 tokens.
    rows = [{"question": "x" * n, "answer": "1"} for n in (10, 20, 30, 40, 50, 60, 70, 80)]
    dm = make(tokenizer, Dataset.from_list(rows), max_prompt_length=46, val_fraction=0, batch_size=2)
    with pytest.warns(
        UserWarning, match=r"4 of 8 prompts are longer than max_prompt_length=46 tokens \(longest 86\)"
    ):
        dm.setup("fit")
    assert all(len(ids) <= 46 for ids in dm.train_dataset["input_ids"])  # dropped, never truncated
    assert sorted(len(q) for q in dm.train_dataset["question"]) == [10, 20, 30, 40]
    strict = make(
        tokenizer, Dataset.from_list(rows), max_prompt_length=46, long_prompts="raise", val_fraction=0
    )
    with pytest.raises(ValueError, match="4 of 8 prompts are longer"):
        strict.setup("fit")


def test_tokenizer_by_name_and_missing_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    dm = PromptDataModule(
        tokenizer=str(tmp_path / "tok"), prompt_template=TEMPLATE, synthetic={"train_size": 16, "val_size": 4}
    )
    dm.setup("fit")
    assert dm.train_dataset[0]["prompt"].startswith("Q: ")
    with pytest.raises(ValueError, match="needs the policy's tokenizer"):
        PromptDataModule(synthetic={"train_size": 16}).setup("fit")


# ---------------------------------------------------------------- bad input


def test_missing_column_names_the_column_the_columns_and_the_file(tokenizer, tmp_path):
    path = write([{"problem_text": "2+2?", "result": "4"}] * 4, tmp_path / "odd.jsonl")
    with pytest.raises(
        DataSourceError, match=r"Missing column 'question' in .*odd\.jsonl.*\['problem_text', 'result'\]"
    ):
        make(tokenizer, str(path)).setup("fit")
    with pytest.raises(
        DataSourceError, match=r"Missing column 'answer' in .*odd\.jsonl.*\['problem_text', 'result'\]"
    ):
        make(tokenizer, str(path), column_map={"question": "problem_text"}).setup("fit")
    with pytest.raises(
        DataSourceError, match=r"no column 'answr'; columns found: \['problem_text', 'result'\]"
    ):
        make(tokenizer, str(path), column_map={"question": "problem_text", "answer": "answr"}).setup("fit")
    # Without gold answers on purpose (a reward model scores the completions):
    dm = make(
        tokenizer, str(path), column_map={"question": "problem_text"}, require_answer=False, val_fraction=0
    )
    dm.setup("fit")
    assert "answer" not in dm.train_dataset.column_names


def test_empty_unreadable_and_unsupported_sources(tokenizer, tmp_path):
    empty = write([{"question": "q", "answer": "1"}], tmp_path / "empty.csv")
    empty.write_text("question,answer\n")
    with pytest.raises(DataSourceError, match="empty"):
        make(tokenizer, str(empty)).setup("fit")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "1+1?", "answer": "2"}\n{"question": \n')
    with pytest.raises(DataSourceError, match=r"Could not load .*broken\.jsonl"):
        make(tokenizer, str(broken)).setup("fit")
    text = tmp_path / "problems.txt"
    text.write_text("1+1?")
    with pytest.raises(DataSourceError, match=r"Unsupported file type '\.txt'.*\.jsonl"):
        make(tokenizer, str(text)).setup("fit")
    with pytest.raises(DataSourceError, match="No such file"):
        make(tokenizer, str(tmp_path / "missing.jsonl")).setup("fit")
    unanswered = write([{"question": "q", "solution": "no final answer marker"}] * 3, tmp_path / "none.jsonl")
    with (
        pytest.warns(UserWarning, match="dropped 3 of 3 rows"),
        pytest.raises(DataSourceError, match="no usable prompts"),
    ):
        make(tokenizer, str(unanswered), val_fraction=0).setup("fit")


def test_settings_checked_at_construction(tokenizer):
    with pytest.raises(ValueError, match=r"must contain '\{question\}'"):
        PromptDataModule(prompt_template="Solve: {problem}")
    with pytest.raises(ValueError, match="val_fraction"):
        PromptDataModule(val_fraction=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        PromptDataModule(batch_size=0)
    with pytest.raises(ValueError, match="fewer than batch_size=100"):
        make(tokenizer, batch_size=100).train_dataloader()


# ---------------------------------------------------------------- conversational prompts


def conversations(n=8, system=True):
    """TRL's conversational format: ``prompt`` is a list of messages; the gold answer is its own column."""
    head = [{"role": "system", "content": "Be brief."}] if system else []
    return [
        {"prompt": [*head, {"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i)}
        for i in range(1, n + 1)
    ]


def chat_tokenizer():
    tokenizer = build_char_tokenizer(model_max_length=4096)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.mark.parametrize("from_file", [False, True])
def test_conversational_prompts_are_rendered_by_the_chat_template(tmp_path, from_file):
    from grpo_lightning.data.prompts import DEFAULT_PROMPT_TEMPLATE
    from grpo_lightning.rewards.registry import resolve_reward

    source = str(write(conversations(), tmp_path / "chat.jsonl")) if from_file else Dataset.from_list(conversations())
    tokenizer = chat_tokenizer()
    dm = make(tokenizer, source, prompt_template=DEFAULT_PROMPT_TEMPLATE, val_fraction=0, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["prompt"]) == 4
    for prompt, question, answer, ids, mask in zip(
        batch["prompt"], batch["question"], batch["answer"], batch["input_ids"], batch["attention_mask"], strict=True
    ):
        i = int(answer) // 2  # each prompt travels with its own gold answer
        assert prompt == f"<|system|>Be brief.\n<|user|>What is {i} + {i}?\n<|assistant|>"
        assert question == f"What is {i} + {i}?"  # the last user message, for logs and rewards
        assert tokenizer.decode(ids[mask.bool()]) == prompt  # no special tokens added on top
    # The rewards see the gold answers of their own rows: right answers score 1, shifted ones 0.
    reward = resolve_reward("gsm8k_accuracy")
    columns = {k: v for k, v in batch.items() if k not in ("prompt", "input_ids", "attention_mask")}
    right = [f"{int(a) // 2}+{int(a) // 2}={a} #### {a}" for a in batch["answer"]]
    assert reward(batch["prompt"], right, **columns) == [1.0] * 4
    assert reward(batch["prompt"], right[1:] + right[:1], **columns) == [0.0] * 4


def test_conversational_prompts_take_the_system_prompt_when_they_have_none():
    from grpo_lightning.data.prompts import DEFAULT_PROMPT_TEMPLATE

    rows = Dataset.from_list(conversations(system=False))
    dm = make(chat_tokenizer(), rows, prompt_template=DEFAULT_PROMPT_TEMPLATE, system_prompt="Think.", val_fraction=0)
    dm.setup("fit")
    assert "<|system|>Think.\n<|user|>What is 3 + 3?\n<|assistant|>" in set(dm.train_dataset["prompt"])
    with pytest.raises(ValueError, match="already starts with a system message"):
        make(
            chat_tokenizer(), Dataset.from_list(conversations()), prompt_template=DEFAULT_PROMPT_TEMPLATE,
            system_prompt="Think.", val_fraction=0,
        ).setup("fit")  # fmt: skip


def test_conversational_prompts_refuse_settings_that_cannot_apply():
    from grpo_lightning.data.prompts import DEFAULT_PROMPT_TEMPLATE

    rows = Dataset.from_list(conversations())
    no_template = make(build_char_tokenizer(), rows, prompt_template=DEFAULT_PROMPT_TEMPLATE, val_fraction=0)
    with pytest.raises(ValueError, match=r"are conversations .* has no chat template\. .*set tokenizer\.chat_template"):
        no_template.setup("fit")
    off = make(chat_tokenizer(), rows, prompt_template=DEFAULT_PROMPT_TEMPLATE, use_chat_template=False, val_fraction=0)
    with pytest.raises(ValueError, match=r"use_chat_template=False, but the prompts .* are conversations"):
        off.setup("fit")
    with pytest.raises(ValueError, match=r"prompt_template is set, but the prompts .* are conversations"):
        make(chat_tokenizer(), rows, val_fraction=0).setup("fit")  # make() sets a template
    broken = Dataset.from_list([{"prompt": [{"role": "user", "content": None}], "answer": "1"}] * 4)
    with pytest.raises(DataSourceError, match="without a text 'role' and 'content'"):
        make(chat_tokenizer(), broken, prompt_template=DEFAULT_PROMPT_TEMPLATE, val_fraction=0).setup("fit")


def test_conversations_in_dict_of_lists_form_and_without_a_user_message():
    from grpo_lightning.data.prompts import DEFAULT_PROMPT_TEMPLATE

    features = datasets.Features(
        {"prompt": datasets.Sequence({"role": datasets.Value("string"), "content": datasets.Value("string")}),
         "answer": datasets.Value("string")}
    )  # fmt: skip
    rows = [{"prompt": {"role": ["user"], "content": [f"{i}?"]}, "answer": str(i)} for i in range(6)]
    rows.append({"prompt": {"role": ["system"], "content": ["no question"]}, "answer": "0"})
    dm = make(
        chat_tokenizer(), Dataset.from_list(rows, features=features), prompt_template=DEFAULT_PROMPT_TEMPLATE,
        val_fraction=0,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="dropped 1 of 7 rows without a question"):
        dm.setup("fit")
    assert sorted(dm.train_dataset["prompt"]) == [f"<|user|>{i}?\n<|assistant|>" for i in range(6)]
