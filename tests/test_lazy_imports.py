"""Lazy imports: ``import grpo_lightning`` and ``GRPOModule`` load no optional back-end, work where those
are not installed, and every public name still resolves (by attribute and, for rewards, by name)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import child_env

import grpo_lightning
import grpo_lightning.data
import grpo_lightning.rewards
from grpo_lightning._lazy import lazy_exports
from grpo_lightning.rewards.registry import _REGISTRY, BUILTIN_REWARDS, available_rewards, resolve_reward

REPO = Path(__file__).resolve().parent.parent

#: Optional back-ends a machine may lack (distribution names are derived with "_" -> "-").
BLOCKED = ["datasets", "jsonargparse", "math_verify", "wandb", "peft"]

#: Modules that only some runs need: none may load with ``GRPOModule``.
LAZY = [
    "math_verify",
    "latex2sympy2_extended",
    "wandb",
    "peft",
    "datasets",
    "pandas",
    "grpo_lightning.data",
    "grpo_lightning.rewards.reward_model",
    "grpo_lightning.rewards.math",
    "grpo_lightning.rewards.gsm8k",
]

# Makes BLOCKED packages look uninstalled: importing one raises ImportError (a meta-path finder), and
# the probes libraries use to decide whether to import them (importlib.util.find_spec, package
# metadata) say "not installed", as they would on such a machine.
BLOCKER = textwrap.dedent(
    """
    import importlib.metadata, importlib.util, sys

    BLOCKED = set({blocked!r})

    def blocked(name):
        return name.replace("-", "_").partition(".")[0] in BLOCKED

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if blocked(name):
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    _find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, package=None: None if blocked(name) else _find_spec(name, package)
    _from_name = importlib.metadata.Distribution.from_name.__func__

    def from_name(cls, name):
        if blocked(name):
            raise importlib.metadata.PackageNotFoundError(name)
        return _from_name(cls, name)

    importlib.metadata.Distribution.from_name = classmethod(from_name)
    """
)

# Imports the package, then GRPOModule, recording what loaded; then trains one step with a callable
# reward on a tiny model, with a plain DataLoader (no ``datasets``).
TRAIN_ONE_STEP = textwrap.dedent(
    """
    import json, sys

    def loaded(names):
        return sorted(n for n in names if n in sys.modules)

    import grpo_lightning
    after_package = sorted(m for m in sys.modules if m.split(".")[0] in ("grpo_lightning", "torch"))
    from grpo_lightning import GRPOModule
    model_code = loaded(["transformers.modeling_utils"])  # transformers' modeling code: with the first model

    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader
    from grpo_lightning.rewards import format_reward, resolve_reward
    from grpo_lightning.hf.tiny import build_char_tokenizer, build_tiny_model

    torch.set_num_threads(1)
    tok = build_char_tokenizer(model_max_length=64)
    model = build_tiny_model(tok, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                             intermediate_size=32, max_position_embeddings=64)

    def share_of_sevens(prompts, completions, **columns):
        return [c.count("7") / max(len(c), 1) for c in completions]

    def collate(rows):
        enc = tok(rows, return_tensors="pt", padding=True, add_special_tokens=False)
        return {{"prompt": rows, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}}

    module = GRPOModule(model, tokenizer=tok, reward_funcs=[share_of_sevens, "format_reward"],
                        num_generations=2, max_completion_length=4, warmup_steps=0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(["1+1=", "2+3="], batch_size=2, collate_fn=collate))
    print(json.dumps({{
        "after_package": after_package,
        "model_code_with_module": model_code,
        "lazy_loaded": loaded({lazy!r}),
        "global_step": trainer.global_step,
        "format_reward_by_name": resolve_reward("format_reward") is format_reward,
    }}))
    """
)


def _run(code: str) -> list[dict]:
    """Run ``code`` in a fresh interpreter (this checkout's package first); its JSON output lines."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env=child_env(str(REPO)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_grpo_module_imports_and_trains_without_the_optional_back_ends():
    """As on a machine without datasets, jsonargparse, math-verify, wandb and peft installed."""
    (result,) = _run(BLOCKER.format(blocked=BLOCKED) + TRAIN_ONE_STEP.format(lazy=LAZY))
    assert result["after_package"] == ["grpo_lightning", "grpo_lightning._lazy"]  # not even torch
    assert result["model_code_with_module"] == []
    assert result["lazy_loaded"] == []
    assert result["global_step"] == 1
    assert result["format_reward_by_name"]


@pytest.mark.slow
def test_grpo_module_loads_no_optional_back_end_where_all_are_installed():
    """Installed but unused: the reward model, math-verify, wandb, peft and the data stack stay unloaded;
    a built-in reward's name still cannot be taken by another function."""
    code = TRAIN_ONE_STEP.format(lazy=LAZY) + textwrap.dedent(
        """
        from grpo_lightning.rewards import register_reward
        try:
            register_reward("math_accuracy")(share_of_sevens)
        except ValueError as err:
            print(json.dumps({"refused": str(err)}))
        """
    )
    first, second = _run(code)
    assert first["after_package"] == ["grpo_lightning", "grpo_lightning._lazy"]
    assert first["model_code_with_module"] == []
    assert first["lazy_loaded"] == [] and first["global_step"] == 1
    assert "math_accuracy" in second["refused"] and "already registered" in second["refused"]


# The command line's help, where the data stack is not installed: it must not need it to list --data.*.
FIT_HELP = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from grpo_lightning.cli.app import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["fit", "--help"])
    print(json.dumps({{"help": out.getvalue(), "loaded": sorted(n for n in {lazy!r} if n in sys.modules)}}))
    """
)


def test_fit_help_needs_no_data_stack_nor_model_code():
    """``grpo-lightning fit --help`` lists the data settings without the datasets library (nor pandas,
    pyarrow, which it brings) and the model settings without transformers' modeling code; a built model
    and an in-memory data set are values, not classes with a ``.help``."""
    data_stack = ["datasets", "pandas", "pyarrow"]
    lazy = [*data_stack, "transformers.modeling_utils"]
    (result,) = _run(BLOCKER.format(blocked=data_stack) + FIT_HELP.format(lazy=lazy))
    assert result["loaded"] == []
    assert "--data.dataset DATASET" in result["help"] and "--data.val_dataset" in result["help"]
    assert "InMemoryDataset" in result["help"] and "BuiltModel" in result["help"]
    assert "--data.dataset.help" not in result["help"] and "--model.model.help" not in result["help"]


@pytest.mark.parametrize("package", [grpo_lightning, grpo_lightning.rewards, grpo_lightning.data])
def test_every_public_name_resolves_and_is_listed(package):
    for name in package.__all__:
        assert getattr(package, name) is not None, name
        assert name in dir(package)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope  # noqa: B018


def test_lazy_exports_tells_a_submodule_from_a_name_it_defines():
    """``format`` is the submodule, ``format_reward`` the function defined in it; nothing loads before."""
    namespace: dict = {}
    getattr_, dir_ = lazy_exports(
        "pkg",
        {"grpo_lightning.rewards.format": ("format_reward",)},
        namespace,
        submodules=("grpo_lightning.rewards.format",),
    )
    assert namespace == {} and dir_() == ["format", "format_reward"]
    assert getattr_("format") is importlib.import_module("grpo_lightning.rewards.format")
    assert getattr_("format_reward") is grpo_lightning.rewards.format.format_reward
    assert set(namespace) == {"format", "format_reward"}  # cached: later lookups skip __getattr__
    with pytest.raises(AttributeError, match="module 'pkg' has no attribute 'nope'"):
        getattr_("nope")


def test_lazy_exports_refuses_a_name_exported_twice():
    with pytest.raises(ValueError, match=r"'Dataset' is exported by both a\.b and c\.d"):
        lazy_exports("pkg", {"a.b": ("Dataset",), "c.d": ("Dataset",)}, {})


def test_reward_submodules_are_attributes_of_the_package():
    from grpo_lightning.rewards.length import soft_overlong_penalty

    assert grpo_lightning.rewards.length.soft_overlong_penalty is soft_overlong_penalty
    assert grpo_lightning.rewards.RewardModel.__module__ == "grpo_lightning.rewards.reward_model"


def test_every_builtin_reward_resolves_by_name_to_its_modules_object():
    for name, module in BUILTIN_REWARDS.items():
        assert resolve_reward(name) is getattr(importlib.import_module(module), name)
    assert set(BUILTIN_REWARDS) <= set(available_rewards())
    # Nothing the reward modules register is missing from the table (else it could not load by name).
    for module in set(BUILTIN_REWARDS.values()):
        importlib.import_module(module)
    ours = {
        name for name, fn in _REGISTRY.items() if type(fn).__module__.startswith("grpo_lightning.rewards")
    }
    assert ours == set(BUILTIN_REWARDS)


def test_rewards_resolve_by_import_path_through_the_lazy_package():
    from grpo_lightning.rewards.reward_model import RewardModel

    assert resolve_reward("grpo_lightning.rewards.RewardModel") is RewardModel
    assert resolve_reward("grpo_lightning.rewards:math_accuracy") is grpo_lightning.rewards.math_accuracy
