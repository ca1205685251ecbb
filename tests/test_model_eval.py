"""evaluate_model (no Trainer) gives validation's figures; plot_k_curves draws them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import make_module, make_trainer, one_thread, tiny_model, tiny_tokenizer  # noqa: F401 (autouse fixture)
from scripted import PROBLEMS, scripted_engine
from test_evaluation import EXPECTED
from torch.utils.data import DataLoader

from grpo_lightning.data.synthetic import generate_problems
from grpo_lightning.evaluation.model_eval import evaluate_model, k_curves, plot_k_curves, problem_batches
from grpo_lightning.module import GRPOModule

TEMPLATE = "{question}"  # the scripted engine knows the prompts "1+1=", ...


def scripted_problems() -> list[dict[str, str]]:
    return [{"question": p, "answer": a, "source": s} for p, (a, s, _, _) in PROBLEMS.items()]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_evaluate_model_gives_the_hand_computed_figures(batch_size):
    tok = tiny_tokenizer()
    records: list[dict] = []
    got = evaluate_model(
        tiny_model(tok),
        scripted_problems(),
        tokenizer=tok,
        num_samples=4,
        reward="gsm8k_accuracy_flexible",
        prompt_template=TEMPLATE,
        batch_size=batch_size,
        max_completion_length=8,
        rollout_engine=scripted_engine(tok),
        records=records,
    )
    assert got == pytest.approx(EXPECTED)
    assert [(r["prompt"], r["greedy"], r["correct"]) for r in records] == [
        ("1+1=", "2", True),
        ("2+3=", "4", False),
        ("7-4=", "3", True),
    ]
    assert records[1]["samples"] == ["4", "4", "4", "5"] and records[1]["samples_correct"] == [0, 0, 0, 1]


def test_evaluate_model_matches_trainer_validate_with_the_shipped_model():
    """The same problems, seeds and settings: the same completions and figures as validation."""
    problems = generate_problems(6, seed=5, min_steps=3, max_steps=3, max_operand=10)
    settings = {"max_completion_length": 48, "temperature": 1.0, "seed": 0}
    template = "Q: {question}\nA: "
    got = evaluate_model(
        "builtin:tiny-math", problems, num_samples=4, prompt_template=template, batch_size=4, **settings
    )
    assert got["pass@4"] > 0 and 0 < got["mean@4"] < 1  # a model that solves some, not all
    module = GRPOModule("builtin:tiny-math", reward_funcs=["gsm8k_accuracy"], val_num_samples=4, **settings)
    batches = list(problem_batches(module.tokenizer, problems, template, None, 4))
    (val,) = make_trainer(limit_val_batches=None).validate(
        module, dataloaders=DataLoader(batches, batch_size=None, collate_fn=lambda b: b), verbose=False
    )
    assert got == pytest.approx({name[4:]: value for name, value in val.items()}, abs=1e-6)
    assert set(got) >= {"accuracy", "mean@4", "pass@1", "pass@4", "maj@1", "maj@4"}


def test_a_model_in_memory_is_left_as_found():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    model.train()
    tok.padding_side = "right"
    evaluate_model(
        model, [{"question": "1+1=", "answer": "2"}], tokenizer=tok, num_samples=2, max_completion_length=4
    )
    assert model.training and tok.padding_side == "right"


def test_evaluate_model_refuses_problems_it_cannot_score():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="1 of the 2 problems have no question or no usable gold answer"):
        evaluate_model(tiny_model(tok), [{"question": "1+1=", "answer": "2"}, {"question": "2+2=", "answer": None}],
                       tokenizer=tok, num_samples=1, max_completion_length=8)  # fmt: skip
    with pytest.raises(ValueError, match="No problems to evaluate"):
        evaluate_model(tiny_model(tok), [], tokenizer=tok)
    with pytest.raises(ValueError, match="num_samples must be at least 1"):
        evaluate_model(tiny_model(tok), [{"question": "1+1=", "answer": "2"}], tokenizer=tok, num_samples=0)


def test_k_curves_read_plain_and_prefixed_names_but_not_per_source_ones():
    metrics = {
        "val/pass@2": 0.5,
        "val/pass@1": 0.25,
        "val/maj@1": 0.25,
        "val/add/pass@2": 0.9,
        "val/accuracy": 1,
    }
    assert k_curves(metrics) == {"pass": ([1, 2], [0.25, 0.5]), "maj": ([1], [0.25])}
    assert k_curves({"pass@1": 0.1, "maj@1": 0.2}) == {"pass": ([1], [0.1]), "maj": ([1], [0.2])}


def test_plot_k_curves_writes_a_labelled_png(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    drawn = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **kw: (drawn.append(self), save(self, *a, **kw)))
    before = {"pass@1": 0.3, "pass@2": 0.5, "pass@4": 0.7, "maj@1": 0.3, "maj@2": 0.3, "maj@4": 0.4}
    after = {"pass@1": 0.6, "pass@2": 0.7, "pass@4": 0.8, "maj@1": 0.6, "maj@2": 0.6, "maj@4": 0.7}
    path = plot_k_curves({"before": before, "after": after}, tmp_path / "plots" / "k.png", title="tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ax,) = drawn[0].axes
    assert ax.get_xlabel() == "k (samples per problem)" and ax.get_ylabel() == "share of problems solved"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "before: pass@k", "before: maj@k", "after: pass@k", "after: maj@k"
    ]  # fmt: skip
    assert list(ax.lines[2].get_ydata()) == [0.6, 0.7, 0.8]
    with pytest.raises(ValueError, match="No pass@k figures for \\['greedy'\\]"):
        plot_k_curves({"greedy": {"accuracy": 0.5}}, tmp_path / "x.png")


def test_the_readme_evaluation_example_runs(tmp_path, monkeypatch):
    text = (Path(__file__).parent.parent / "README.md").read_text().split("## Evaluation", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    shrunk = code.replace("generate_problems(200,", "generate_problems(6,").replace(
        "num_samples=8", "num_samples=2"
    )
    shrunk = shrunk.replace('"runs/quickstart/version_0/hf_model"', '"builtin:tiny-math"')  # no run here
    assert shrunk.count("generate_problems(6,") == 1 and shrunk.count("num_samples=2") == 1
    assert '"builtin:tiny-math", problems' in shrunk.split("after =", 1)[1]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(shrunk, "README.md", "exec"), scope)
    assert scope["before"] == scope["after"] and {"pass@2", "maj@2", "mean@2"} <= set(scope["after"])
    assert (tmp_path / "pass_maj_at_k.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_model_says_when_the_reward_gives_no_answers_to_vote_with():
    tok = tiny_tokenizer()

    def exact(prompts, completions, answer, **kw):
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    with pytest.warns(UserWarning, match="maj@k is left out: the accuracy reward 'exact'"):
        got = evaluate_model(
            tiny_model(tok), [{"question": "1+1=", "answer": "2"}], tokenizer=tok, num_samples=2, reward=exact,
            max_completion_length=4,
        )  # fmt: skip
    assert "pass@2" in got and not [name for name in got if "maj@" in name]


def test_the_k_curve_benchmark_runs_shortened(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    try:
        from k_curves import main
    finally:
        sys.path.pop(0)
    out = tmp_path / "k"
    results = main(
        ["--steps", "1", "--problems", "4", "--samples", "2", "--train-size", "32", "--out", str(out)]
    )
    assert list(results) == ["before", "after 1 GRPO steps"]
    assert json.loads(out.with_suffix(".json").read_text()) == results
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "maj@2" in capsys.readouterr().out
