"""Validation and test figures (greedy accuracy, mean@N, pass@k, maj@k, per source) on completions
written in advance, against values worked out by hand."""

from __future__ import annotations

import pytest
from helpers import make_module, make_trainer, one_thread, tiny_tokenizer  # noqa: F401 (autouse fixture)
from scripted import loader, rows, scripted_engine

# Per problem (see scripted.PROBLEMS), 4 samples:
#   1+1=  answers 2 2 3 -, right 2: pass@k 1/2 5/6 1 1;     maj@k 1/2 2/3 3/4 1
#   2+3=  answers 4 4 4 5, right 5: pass@k 1/4 1/2 3/4 1;   maj@k 1/4 1/4 0 0
#   7-4=  answers 3 1 2 9, right 3: pass@k 1/4 1/2 3/4 1;   maj@k 1/4 1/4 1/4 1/4
EXPECTED = {
    "accuracy": 2 / 3,  # greedy 2, 4, 3
    "reward": 2 / 3,
    "completions/mean_length": 2.0,  # one digit and EOS
    "mean@4": (1 / 2 + 1 / 4 + 1 / 4) / 3,
    "pass@1": 1 / 3,
    "pass@2": (5 / 6 + 1 / 2 + 1 / 2) / 3,
    "pass@3": (1 + 3 / 4 + 3 / 4) / 3,
    "pass@4": 1.0,
    "maj@1": 1 / 3,
    "maj@2": (2 / 3 + 1 / 4 + 1 / 4) / 3,
    "maj@3": (3 / 4 + 0 + 1 / 4) / 3,
    "maj@4": (1 + 0 + 1 / 4) / 3,
    "add/accuracy": 1 / 2,
    "add/mean@4": (1 / 2 + 1 / 4) / 2,
    "add/pass@4": 1.0,
    "add/maj@4": 1 / 2,
    "sub/accuracy": 1.0,
    "sub/mean@4": 1 / 4,
    "sub/pass@4": 1.0,
    "sub/maj@4": 1 / 4,
}


def scripted_module(tok, **overrides):
    settings = {
        "reward_funcs": ["gsm8k_accuracy_flexible"],  # the last number of the completion
        "val_num_samples": 4,
        "rollout_engine": scripted_engine(tok),
    }
    return make_module(tok, **{**settings, **overrides})


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_validate_and_test_give_the_hand_computed_figures(batch_size):
    tok = tiny_tokenizer()
    module = scripted_module(tok)
    trainer = make_trainer(limit_val_batches=None, limit_test_batches=None)
    (val,) = trainer.validate(module, dataloaders=loader(rows(), batch_size), verbose=False)
    assert set(val) == {f"val/{name}" for name in EXPECTED}
    for name, value in EXPECTED.items():
        assert val[f"val/{name}"] == pytest.approx(value, abs=1e-6), name
    (test,) = trainer.test(module, dataloaders=loader(rows(), batch_size), verbose=False)
    assert test == {f"test/{name[4:]}": value for name, value in val.items()}


def test_no_source_column_no_figures_per_source():
    tok = tiny_tokenizer()
    (val,) = make_trainer(limit_val_batches=None).validate(
        scripted_module(tok), dataloaders=loader(rows(with_source=False)), verbose=False
    )
    assert set(val) == {f"val/{name}" for name in EXPECTED if not name.startswith(("add/", "sub/"))}


def test_one_sample_gives_greedy_figures_only():
    tok = tiny_tokenizer()
    (val,) = make_trainer(limit_val_batches=None).validate(
        scripted_module(tok, val_num_samples=1), dataloaders=loader(rows()), verbose=False
    )
    assert val == pytest.approx(
        {"val/accuracy": 2 / 3, "val/reward": 2 / 3, "val/completions/mean_length": 2.0,
         "val/add/accuracy": 1 / 2, "val/sub/accuracy": 1.0}
    )  # fmt: skip


def test_a_reward_without_answer_extraction_gets_no_maj_at_k_and_a_warning():
    tok = tiny_tokenizer()

    def exact(prompts, completions, answer, **kw):
        return [1.0 if c == a else 0.0 for c, a in zip(completions, answer, strict=True)]

    module = scripted_module(tok, reward_funcs=[exact])
    with pytest.warns(
        UserWarning, match="maj@k is left out: the accuracy reward 'exact' has no 'extract_answer"
    ):
        (val,) = make_trainer(limit_val_batches=None).validate(
            module, dataloaders=loader(rows(with_source=False)), verbose=False
        )
    assert not [name for name in val if "maj@" in name]
    assert val["val/pass@2"] == pytest.approx(EXPECTED["pass@2"])  # "x" and "2" are right or wrong alike


def test_a_row_without_a_source_is_refused():
    tok = tiny_tokenizer()
    data = rows()
    data[1]["source"] = None
    with pytest.raises(ValueError, match=r"Rows \[1\] of a batch have no 'source'.*drop the 'source' column"):
        make_trainer(limit_val_batches=None).validate(scripted_module(tok), dataloaders=loader(data, 3))


def test_the_shipped_accuracy_rewards_give_the_answer_each_completion_votes_for():
    from fractions import Fraction

    from grpo_lightning.rewards.gsm8k import Gsm8kAccuracy
    from grpo_lightning.rewards.math import MathAccuracy

    strict, flexible = Gsm8kAccuracy("strict"), Gsm8kAccuracy("flexible")
    assert strict.extract_answer("6*3=18 #### 18.0") == strict.extract_answer("so \\boxed{18}") == Fraction(18)
    assert strict.extract_answer("it is 18") is None and flexible.extract_answer("it is 18") == Fraction(18)
    math_reward = MathAccuracy()
    assert math_reward.extract_answer("so $\\boxed{10,\\!000.}$") == "10000"
    assert math_reward.extract_answer("no box: 5") is None
