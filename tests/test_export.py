"""Exported folders load the standard way: AutoTokenizer, AutoModelForCausalLM and pipeline give the
project's token ids and greedy completions; each export carries a model card; push_to_hub uploads it."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from datasets import Dataset
from helpers import answer_reward, one_thread, tiny_model, tiny_tokenizer  # noqa: F401 (autouse fixture)
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, pipeline

from grpo_lightning.data.datamodule import PromptDataModule
from grpo_lightning.hf.model_card import (
    ModelCardInfo,
    hub_model_id,
    render_model_card,
    run_card_info,
    settings_summary,
)
from grpo_lightning.hf.models import load_tokenizer, resolve_model_path, save_pretrained
from grpo_lightning.hf.tiny import CHARACTERS, SPECIAL_TOKENS, UNK_TOKEN, build_char_tokenizer
from grpo_lightning.hf.tokenizer_io import save_tokenizer
from grpo_lightning.module import GRPOModule

PROMPT = "Q: What is 4 + 4 + 2 + 2?\nA: "
# What the shipped model answers, decoded with the tokenizer it was trained with.
SHIPPED_ANSWER = "4+4=8, 8+2=10, 10+2=12 #### 12"


def character_ids(text: str) -> list[int]:
    """By hand: the special tokens take ids 0..2, then each character of the alphabet one id in order."""
    return [len(SPECIAL_TOKENS) + CHARACTERS.index(ch) for ch in text]


def project_greedy(model, text: str, max_new_tokens: int = 40) -> str:
    """Greedy decoding with the tokenizer built in code (the one the models were trained with)."""
    tokenizer = build_char_tokenizer()
    model.eval()  # a model built in code starts in train mode (GPT-2 has dropout)
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def pipeline_greedy(folder: str | Path, text: str, max_new_tokens: int = 40) -> str:
    generator = pipeline("text-generation", model=str(folder))
    result = generator(text, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)
    return result[0]["generated_text"]


def assert_loads_the_standard_way(folder: str | Path, expected_completion: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(PROMPT)["input_ids"]
    assert len(ids) == 29 and ids == character_ids(PROMPT)  # spaces and the newline kept
    assert tokenizer.decode(ids) == PROMPT
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert project_greedy(model, PROMPT) == expected_completion
    assert pipeline_greedy(folder, PROMPT) == expected_completion


def test_the_shipped_model_loads_with_plain_transformers():
    folder = resolve_model_path("builtin:tiny-math")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert project_greedy(model, PROMPT) == SHIPPED_ANSWER
    assert_loads_the_standard_way(folder, SHIPPED_ANSWER)
    # transformers 4 has no TokenizersBackend class: the folder names the class both versions know.
    config = json.loads((Path(folder) / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the project loads it the plain way, with nothing to report
        assert load_tokenizer(None, "builtin:tiny-math")(PROMPT)["input_ids"] == character_ids(PROMPT)


def test_an_export_of_the_shipped_model_loads_with_plain_transformers(tmp_path):
    module = GRPOModule("builtin:tiny-math", reward_funcs=[answer_reward])
    folder = module.save_pretrained(str(tmp_path / "export"))
    assert_loads_the_standard_way(folder, SHIPPED_ANSWER)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_exports_of_every_tiny_architecture_keep_the_ids(tmp_path, arch):
    tok = tiny_tokenizer()
    model = tiny_model(tok, arch=arch)
    save_pretrained(model, tok, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(PROMPT)["input_ids"] == tok(PROMPT)["input_ids"] == character_ids(PROMPT)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert project_greedy(reloaded, PROMPT, 12) == project_greedy(model, PROMPT, 12)
    assert pipeline_greedy(tmp_path, PROMPT, 12) == project_greedy(model, PROMPT, 12)


def word_level_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character tokenizer in a format transformers does not rebuild faithfully for Qwen2 models."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(CHARACTERS)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[1]
    )


def test_an_export_that_plain_autotokenizer_would_misread_is_reported(tmp_path):
    tok = word_level_char_tokenizer()
    assert tok(PROMPT)["input_ids"] == character_ids(PROMPT)
    with pytest.warns(
        UserWarning, match=r"loads a Qwen2Tokenizer that encodes .* differently .*\(\d+ ids against 59\)"
    ):
        save_pretrained(tiny_model(), tok, tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()  # the files are kept


def test_a_folder_that_plain_autotokenizer_misreads_loads_as_saved_in_the_project(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    word_level_char_tokenizer().save_pretrained(tmp_path)  # written without the checks
    assert len(AutoTokenizer.from_pretrained(tmp_path)(PROMPT)["input_ids"]) < 29  # spaces lost
    with pytest.warns(UserWarning, match=r"using the tokenizer as saved\. .* re-save its tokenizer"):
        loaded = load_tokenizer(None, str(tmp_path))
    assert loaded(PROMPT)["input_ids"] == character_ids(PROMPT)
    assert save_tokenizer(build_char_tokenizer(), tmp_path)  # the repair the warning names
    assert AutoTokenizer.from_pretrained(tmp_path)(PROMPT)["input_ids"] == character_ids(PROMPT)


def test_the_model_card_says_what_how_and_how_to_load(tmp_path):
    info = ModelCardInfo(
        base_model="Qwen/Qwen2.5-0.5B",
        dataset="openai/gsm8k (main)",
        reward_funcs=["accuracy", "format"],
        steps=150,
        settings={"num_generations": 8, "learning_rate": 1e-6, "loss_type": "dapo"},
        metrics={"val/accuracy": 0.853125, "train/reward": 0.5},
    )
    folder = Path(save_pretrained(tiny_model(), tiny_tokenizer(), tmp_path / "export", card=info))
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert data["base_model"] == "Qwen/Qwen2.5-0.5B" and data["tags"] == ["grpo", "grpo-lightning"]
    text = card.text
    assert "starting from `Qwen/Qwen2.5-0.5B`" in text
    assert "- Data: openai/gsm8k (main)" in text and "- Rewards: accuracy, format" in text
    assert "- Optimizer steps: 150" in text
    assert "| num_generations | 8 |" in text and "| learning_rate | 1e-06 |" in text
    assert "| val/accuracy | 0.8531 |" in text and "| train/reward | 0.5 |" in text
    # It loads from the folder it sits in, by that folder's name: not a path from where training ran.
    assert "pipeline('text-generation', model='export')" in text and str(tmp_path) not in text
    assert "From this folder (`export`, the one holding this README)" in text


def test_the_cards_loading_snippet_runs_and_answers(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the folder that holds the export, as the card says
    module = GRPOModule("builtin:tiny-math", reward_funcs=[answer_reward])
    info = ModelCardInfo(base_model="builtin:tiny-math", settings=settings_summary(module.hparams))
    folder = Path(module.save_pretrained(str(tmp_path / "export"), card=info))
    card = (folder / "README.md").read_text()
    assert "base_model:" not in card  # a built-in alias is no Hub id
    assert "| num_generations | 8 |" in card and "| loss_type | dapo |" in card
    snippet = re.search(r"```python\n(.*?)```", card, re.DOTALL).group(1)
    exec(snippet, {})  # the card's own code, as a user would paste it
    assert capsys.readouterr().out.strip() == SHIPPED_ANSWER


def test_an_adapter_export_has_a_peft_card(tmp_path):
    from grpo_lightning.hf.models import apply_lora

    policy = apply_lora(tiny_model(), {"r": 2})
    save_pretrained(policy, tiny_tokenizer(), tmp_path)
    card = huggingface_hub.ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft"
    assert "AutoPeftModelForCausalLM.from_pretrained" in card.text


def test_chat_tokenizers_get_a_messages_snippet_that_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = render_model_card(ModelCardInfo(example_prompt="What is 2 + 3?"), "out", chat=True)
    assert "generator([{'role': 'user', 'content': 'What is 2 + 3?'}]" in text
    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"
    model = tiny_model(tok)
    save_pretrained(model, tok, tmp_path / "out")
    snippet = re.search(r"```python\n(.*?)```", (tmp_path / "out" / "README.md").read_text(), re.DOTALL).group(1)
    exec(snippet.replace("max_new_tokens=256", "max_new_tokens=12"), {})
    expected = project_greedy(model, "<user>What is 4 + 4 + 2 + 2?\n<assistant>", 12)
    assert capsys.readouterr().out == expected + "\n"


def test_only_hub_ids_become_base_model(tmp_path):
    assert hub_model_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert hub_model_id("gpt2") == "gpt2"
    assert hub_model_id("builtin:tiny-math") is None
    assert hub_model_id(str(tmp_path)) is None  # an existing local folder
    assert hub_model_id("a/b/c") is None and hub_model_id(None) is None


def test_push_to_hub_uploads_the_export(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    calls: dict[str, dict] = {}

    def create_repo(repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, **kwargs}

    def upload_folder(*, repo_id, folder_path, **kwargs):
        calls["upload_folder"] = {"repo_id": repo_id, **kwargs}
        shutil.copytree(folder_path, hub / repo_id)  # what the Hub would store
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/abc",
            commit_message=kwargs["commit_message"],
            commit_description="",
            oid="abc",
        )

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    module = GRPOModule("builtin:tiny-math", reward_funcs=[answer_reward])
    url = module.push_to_hub("me/tiny-grpo", private=True, token="hf_x", card=ModelCardInfo(steps=3))
    assert url == "https://huggingface.co/me/tiny-grpo/commit/abc"
    assert calls["create_repo"] == {
        "repo_id": "me/tiny-grpo",
        "token": "hf_x",
        "private": True,
        "exist_ok": True,
    }
    assert calls["upload_folder"]["repo_id"] == "me/tiny-grpo" and calls["upload_folder"]["token"] == "hf_x"
    uploaded = hub / "me" / "tiny-grpo"
    card = (uploaded / "README.md").read_text()
    assert "# tiny-grpo" in card and "model='me/tiny-grpo'" in card and "- Optimizer steps: 3" in card
    assert_loads_the_standard_way(uploaded, SHIPPED_ANSWER)


CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"


def card_of_a_run(tokenizer, **data_settings):
    """What a run's card says about its first validation prompt (a Trainer that ran no step)."""
    rows = [{"question": f"What is {a} + 4?", "answer": str(a + 4)} for a in range(4)]
    data = PromptDataModule(
        Dataset.from_list(rows), tokenizer=tokenizer, prompt_template="{question}", system_prompt="Be brief.",
        val_fraction=0.5, **data_settings,
    )  # fmt: skip
    data.setup("fit")
    trainer = SimpleNamespace(datamodule=data, callback_metrics={}, global_step=0)
    return run_card_info({"model": "builtin:tiny-math"}, ["answer_reward"], trainer), data.val_dataset[0]


def test_a_runs_card_chats_through_the_template_once(tmp_path, capsys, monkeypatch):
    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    info, row = card_of_a_run(tok)
    assert info.example_messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": row["question"]},
    ]
    model = tiny_model(tok)
    save_pretrained(model, tok, tmp_path / "out", card=info)
    snippet = re.search(r"```python\n(.*?)```", (tmp_path / "out" / "README.md").read_text(), re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)  # the folder that holds the export, as the card says
    exec(snippet.replace("max_new_tokens=256", "max_new_tokens=12"), {})
    # The prompt trained on, rendered once: "<system>Be brief.\n<user>What is ...?\n<assistant>".
    assert row["prompt"] == f"<system>Be brief.\n<user>{row['question']}\n<assistant>"
    assert capsys.readouterr().out == project_greedy(model, row["prompt"], 12) + "\n"


def test_a_runs_card_sends_a_prompt_trained_without_the_template_as_text(tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    info, row = card_of_a_run(tok, use_chat_template=False)
    assert info.example_messages is None and info.example_prompt == row["prompt"] == f"Be brief.\n\n{row['question']}"
    text = render_model_card(info, "out", chat=True)
    assert f"generator({row['prompt']!r}, max_new_tokens" in text
