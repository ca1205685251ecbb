"""Rewards given by import path: a module in the current folder is found as ``python -m`` finds it, in
the training process and in reward workers, even where the current folder is not on ``sys.path``
(the ``grpo-lightning`` console script); what still fails says why and what to do."""

from __future__ import annotations

import os
import sys

import pytest

from grpo_lightning.rewards.registry import resolve_reward
from grpo_lightning.rewards.scorer import RewardScorer

LENGTH_REWARD = "def length(prompts, completions, **columns):\n    return [float(len(c)) for c in completions]\n"


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """The current folder is ``tmp_path`` and, as under a console script, not on ``sys.path``.

    Yields a function that writes ``<name>.py`` there; the modules it made are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    cwd = os.path.abspath(os.curdir)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or os.curdir) != cwd])
    names = []

    def write(name: str, text: str) -> None:
        (tmp_path / f"{name}.py").write_text(text)
        names.append(name)

    yield write
    for name in names:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("spec", ["cwd_reward_colon:length", "cwd_reward_dot.length"])
def test_a_module_in_the_current_folder_is_found(user_folder, spec):
    module = spec.replace(":", ".").rpartition(".")[0]
    user_folder(module, LENGTH_REWARD)
    fn = resolve_reward(spec)
    assert fn(prompts=["p"], completions=["abc"]) == [3.0]
    assert sys.path[-1] == os.path.abspath(os.curdir)  # appended: it hides no installed module


def test_reward_workers_find_a_module_of_the_current_folder_too(user_folder):
    user_folder("cwd_reward_in_workers", LENGTH_REWARD)
    scorer = RewardScorer(["cwd_reward_in_workers:length"], workers=1, timeout=30.0)
    try:
        assert scorer.score(["p", "q"], ["ab", "abcd"]).flatten().tolist() == [2.0, 4.0]
    finally:
        scorer.pool.close()


def test_a_module_found_nowhere_names_the_spec_the_folder_searched_and_the_fix(user_folder):
    with pytest.raises(ValueError) as info:
        resolve_reward("no_such_reward_module:length")
    message = str(info.value)
    assert "Could not import reward 'no_such_reward_module:length'" in message
    assert "no module named 'no_such_reward_module'" in message
    assert f"the current folder {os.path.abspath(os.curdir)}" in message
    assert "Run from the folder that holds no_such_reward_module.py" in message and "PYTHONPATH" in message


def test_a_missing_import_inside_the_users_module_is_named_as_such(user_folder):
    user_folder("cwd_reward_broken_import", "import a_package_nobody_installed_xyz\n" + LENGTH_REWARD)
    with pytest.raises(ValueError) as info:
        resolve_reward("cwd_reward_broken_import:length")
    message = str(info.value)
    assert "its module 'cwd_reward_broken_import'" in message and "cwd_reward_broken_import.py) was found" in message
    assert "it imports 'a_package_nobody_installed_xyz', which is not installed" in message
    assert "no module named 'cwd_reward_broken_import'" not in message


def test_a_module_that_fails_while_importing_or_lacks_the_function_says_so(user_folder):
    user_folder("cwd_reward_raises", "raise RuntimeError('needs an API key')\n")
    with pytest.raises(ValueError, match=r"importing its module 'cwd_reward_raises' .* raised RuntimeError: needs an API key"):
        resolve_reward("cwd_reward_raises:length")
    user_folder("cwd_reward_other_name", LENGTH_REWARD)
    with pytest.raises(ValueError, match=r"module 'cwd_reward_other_name' \(.*\) has no attribute 'lenght'. Its functions: length"):
        resolve_reward("cwd_reward_other_name:lenght")
