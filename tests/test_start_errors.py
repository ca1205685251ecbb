"""Errors at start: model loading names what was asked for and the way out; non-finite settings."""

from __future__ import annotations

import huggingface_hub.constants
import pytest

from grpo_lightning.hf.models import load_policy, load_tokenizer


def test_a_missing_local_folder_says_so(tmp_path):
    missing = str(tmp_path / "moved" / "policy")
    # It used to reach the Hub client: "Repo id must be in the form 'repo_name' or 'namespace/repo_name'".
    with pytest.raises(FileNotFoundError, match=r"No model folder at .*moved/policy'\. If it moved"):
        load_policy(missing)
    with pytest.raises(FileNotFoundError, match="No model folder"):
        load_tokenizer(None, "./not/here/either")


def test_an_unreachable_hub_id_is_named_with_the_offline_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"(?s)model 'someorg/no-such-model-xyz'.*HF_HUB_OFFLINE is set"):
        load_policy("someorg/no-such-model-xyz")
    with pytest.raises(OSError, match=r"(?s)tokenizer 'someorg/no-such-model-xyz'.*huggingface-cli download"):
        load_tokenizer("someorg/no-such-model-xyz", "someorg/no-such-model-xyz")


def test_a_local_folder_with_a_bad_config_keeps_its_own_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises((ValueError, OSError)) as info:
        load_policy(str(tmp_path))
    assert "neither a local folder nor" not in str(info.value)


@pytest.mark.parametrize(("setting", "value"), [("beta", float("nan")), ("learning_rate", float("inf"))])
def test_non_finite_settings_are_refused(setting, value):
    from helpers import make_module

    with pytest.raises(ValueError, match=f"{setting}={value} must be a finite number"):
        make_module(**{setting: value})
