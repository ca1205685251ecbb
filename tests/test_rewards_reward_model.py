"""RewardModel: a sequence classifier with its own tokenizer, batched, no gradients."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, Qwen2Config

from grpo_lightning.hf.tiny import build_char_tokenizer
from grpo_lightning.rewards import RewardModel


def tiny_classifier(num_labels: int = 1, seed: int = 0):
    tokenizer = build_char_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config), tokenizer


def reference_scores(model, tokenizer, texts):
    """One unpadded forward per text: what batching and padding must reproduce."""
    scores = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            scores.append(model(input_ids=ids).logits[0, 0].item())
    return scores


PROMPTS = ["What is 2 + 3?\n", "What is 10 - 4?\n", "What is 7 + 8?\n"]
COMPLETIONS = ["2+3=5 #### 5", "10-4=6, and that is the final answer #### 6", "#### 15"]


def test_batched_scores_match_one_by_one_scoring():
    model, tokenizer = tiny_classifier()
    # batch_size=2 splits the three texts into a padded batch of two and a batch of one.
    reward = RewardModel(model, tokenizer, batch_size=2)
    scores = reward(PROMPTS, COMPLETIONS, answer=["5", "6", "15"])
    expected = reference_scores(model, tokenizer, [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)])
    assert scores == pytest.approx(expected, abs=1e-5)
    assert len(set(scores)) == 3  # a random model still tells the texts apart
    assert not any(p.requires_grad for p in reward.model.parameters())
    assert tokenizer.padding_side == "left"  # the shared tokenizer's settings are untouched


def test_loads_from_a_path_and_truncates_from_the_left(tmp_path):
    model, tokenizer = tiny_classifier()
    # Separate folders: AutoTokenizer would read a folder holding a Qwen2 config.json as a Qwen2
    # tokenizer, which the character tokenizer is not.
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    reward = RewardModel(str(tmp_path / "model"), str(tmp_path / "tokenizer"), max_length=8)
    # Only the last 8 characters are seen: texts that end alike score alike.
    a, b = reward(["first prompt ", "another, much longer prompt "], ["ends 12345", "ends 12345"])
    assert a == pytest.approx(b, abs=1e-5)
    assert a == pytest.approx(reference_scores(model, tokenizer, ["ds 12345"])[0], abs=1e-5)


def test_format_fn_label_index_and_errors():
    model, tokenizer = tiny_classifier(num_labels=2)
    with pytest.raises(ValueError, match=r"2 outputs.*label_index"):
        RewardModel(model, tokenizer)
    with pytest.raises(ValueError, match="label_index=5 is out of range"):
        RewardModel(model, tokenizer, label_index=5)
    reward = RewardModel(model, tokenizer, label_index=1, format_fn=lambda p, c: c, name="rm")
    # format_fn drops the prompt: different prompts, same completion, same score.
    first, second = reward(["a", "b"], ["#### 5", "#### 5"])
    assert first == pytest.approx(second, abs=1e-5)
    assert reward.__name__ == "rm"
    with pytest.raises(ValueError, match="no tokenizer"):
        RewardModel(model)


def test_a_reward_model_named_by_its_folder_in_reward_funcs(tmp_path):
    # TRL takes a reward model's id or folder in reward_funcs; so does the module's reward list.
    from grpo_lightning.rewards import resolve_reward
    from grpo_lightning.rewards.registry import names_a_model
    from grpo_lightning.rewards.scorer import RewardScorer

    model, tokenizer = tiny_classifier()
    model.save_pretrained(tmp_path / "my-rm")
    tokenizer.save_pretrained(tmp_path / "my-rm")
    scorer = RewardScorer([str(tmp_path / "my-rm"), "format_reward"])
    assert scorer.names == ["my-rm", "format_reward"]
    expected = RewardModel(model, tokenizer)(PROMPTS, COMPLETIONS)
    assert scorer.funcs[0](PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)
    # A Hub id has a slash, which registered names and import paths do not.
    assert names_a_model("Skywork/Skywork-Reward-V2-Qwen3-0.6B") and names_a_model(str(tmp_path / "my-rm"))
    assert not any(names_a_model(s) for s in ("gsm8k_accuracy", "my_pkg.rewards:fn", "my_pkg.rewards.fn"))
    with pytest.raises(ValueError, match="Unknown reward 'no_such_reward'"):
        resolve_reward("no_such_reward")
