"""``null`` on the command line clears a data setting a config sets: the quickstart config is reused for a
conversational data set by clearing its ``prompt_template`` (and its synthetic settings)."""

from __future__ import annotations

import json
import os

import pytest
from helpers import one_thread, tiny_model  # noqa: F401 (autouse fixture)

from grpo_lightning.cli.app import main
from grpo_lightning.data import PromptDataModule
from grpo_lightning.data.prompts import DEFAULT_PROMPT_TEMPLATE, PromptFormatter
from grpo_lightning.hf.tiny import build_char_tokenizer

QUICKSTART = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "quickstart.yaml")
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"


def chat_tokenizer():
    tokenizer = build_char_tokenizer(model_max_length=4096)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def chat_policy(path):
    """A tiny random policy whose tokenizer has a chat template, saved as a model folder."""
    tokenizer = chat_tokenizer()
    tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def chat_jsonl(path, n: int = 8):
    """A conversational data set: ``prompt`` is a list of messages, ``answer`` the gold number."""
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i)} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_quickstart_config_trains_on_chat_data_once_its_template_is_cleared(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_dir = chat_policy(tmp_path / "policy")
    data = chat_jsonl(tmp_path / "chat.jsonl")
    cli = main(
        [
            "fit",
            "--config", QUICKSTART,
            "--data.prompt_template", "null",
            "--data.synthetic", "null",
            "--data.dataset", str(data),
            "--data.val_fraction", "0",
            "--data.batch_size", "2",
            "--model.model", str(model_dir),
            "--model.num_generations", "2",
            "--model.max_completion_length", "4",
            "--trainer.max_steps", "1",
            "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks", "[]",
            "--trainer.logger", "false",
            "--export.dir", "null",
        ]
    )  # fmt: skip
    assert cli.trainer.global_step == 1
    dm = cli.datamodule
    assert dm.hparams.prompt_template == DEFAULT_PROMPT_TEMPLATE  # cleared: the default, as if never set
    # The conversations were rendered by the chat template as they are, with no template around them.
    assert "<user>What is 3 + 3?\n<assistant>" in set(dm.train_dataset["prompt"])


def test_a_cleared_template_is_the_default_for_text_questions():
    tokenizer = build_char_tokenizer()
    cleared = PromptDataModule(tokenizer=tokenizer, prompt_template=None, batch_size=2, synthetic={"train_size": 4})
    assert cleared.hparams.prompt_template == DEFAULT_PROMPT_TEMPLATE
    formatter = PromptFormatter(tokenizer, None, use_chat_template=False)
    assert formatter({"question": "1+1?"}) == "1+1?\nPlease reason step by step, and put your final answer within \\boxed{}."


def test_a_template_set_for_chat_data_names_the_way_to_clear_it(tmp_path):
    dm = PromptDataModule(
        str(chat_jsonl(tmp_path / "chat.jsonl")), tokenizer=chat_tokenizer(), prompt_template="Q: {question}\nA: ",
        val_fraction=0, batch_size=2,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"prompt_template is set.*--data\.prompt_template null"):
        dm.setup("fit")
