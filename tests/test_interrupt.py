"""Interruption: SIGTERM, SIGINT and errors mid-run leave a checkpoint that resumes exactly."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from helpers import (
    PromptsDataModule,
    char_code_mean,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_tokenizer,
    weights,
)

from grpo_lightning.rewards.scorer import RewardError
from grpo_lightning.run.interrupt import RunGuard, resume_command

TESTS = Path(__file__).parent
SETTINGS = {"beta": 0.1}


class FailsOnCall:
    """char_code_mean, except that call number ``n`` raises (a reward crashing mid-run)."""

    __name__ = "char_code_mean"

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, prompts, completions, **columns):
        self.calls += 1
        if self.calls == self.n:
            raise ConnectionError("the grading service went away")
        return char_code_mean(prompts, completions, **columns)


def _fit(root, max_steps, reward=char_code_mean, ckpt_path=None, **settings):
    tok = tiny_tokenizer()
    module = make_module(tok, reward_funcs=[reward], **{**SETTINGS, **settings})
    trainer = make_trainer(max_steps=max_steps, default_root_dir=str(root))
    trainer.fit(module, datamodule=PromptsDataModule(tok, batch_size=2), ckpt_path=ckpt_path)
    return module, trainer


def _assert_same_weights(a, b):
    expected = weights(b)
    for key, value in weights(a).items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_an_error_mid_run_saves_the_state_before_the_failing_step_and_resumes_exactly(tmp_path, capsys):
    full, _ = _fit(tmp_path / "full", max_steps=4)
    with pytest.raises(RewardError, match="grading service"):
        _fit(tmp_path / "crash", max_steps=4, reward=FailsOnCall(3))  # fails in step 3
    ckpt = tmp_path / "crash" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    err = capsys.readouterr().err
    assert "Training stopped by RewardError at step 3" in err and str(ckpt) in err
    assert torch.load(ckpt, weights_only=False)["global_step"] == 2
    # The failing batch is replayed: the resumed run ends exactly where the uninterrupted one does.
    resumed, trainer = _fit(tmp_path / "resumed", max_steps=4, ckpt_path=str(ckpt))
    assert trainer.global_step == 4
    _assert_same_weights(resumed, full)


def test_an_error_after_the_step_moved_the_weights_saves_nothing_and_names_the_last_checkpoint(
    tmp_path, capsys
):
    class FailsAfterUpdate(RunGuard):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                raise RuntimeError("boom")
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    tok = tiny_tokenizer()
    module = make_module(tok, **SETTINGS)
    root = tmp_path / "run"
    trainer = make_trainer(max_steps=4, default_root_dir=str(root), callbacks=[FailsAfterUpdate()])
    (root / "checkpoints").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(module, datamodule=PromptsDataModule(tok, batch_size=2))
    assert not (root / "checkpoints" / "last.ckpt").exists()
    assert "already begun changing the weights" in capsys.readouterr().err


def test_resuming_with_max_steps_already_reached_is_refused(tmp_path):
    _, trainer = _fit(tmp_path / "a", max_steps=3)
    trainer.save_checkpoint(tmp_path / "step3.ckpt")
    with pytest.raises(ValueError, match="max_steps=2 is already reached"):
        _fit(tmp_path / "b", max_steps=2, ckpt_path=str(tmp_path / "step3.ckpt"))


SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from helpers import PromptsDataModule, char_code_mean, make_module, make_trainer, tiny_tokenizer

calls = 0
def reward(prompts, completions, **columns):
    global calls
    calls += 1
    if calls == 3:  # in step 3: the scheduler's signal arrives while the step runs
        os.kill(os.getpid(), signal.{signal})
    return char_code_mean(prompts, completions, **columns)
reward.__name__ = "char_code_mean"

tok = tiny_tokenizer()
module = make_module(tok, reward_funcs=[reward], beta=0.1)
trainer = make_trainer(max_steps=4, default_root_dir={root!r})
trainer.fit(module, datamodule=PromptsDataModule(tok, batch_size=2))
print("FINISHED")
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_finishes_the_step_saves_exits_nonzero_and_resumes_exactly(tmp_path, signame):
    root = tmp_path / "run"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT).format(tests=str(TESTS), signal=signame, root=str(root)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 128 + getattr(signal, signame), proc.stderr[-3000:]
    assert "FINISHED" not in proc.stdout
    ckpt = root / "checkpoints" / "last.ckpt"
    assert f"Stopped by {signame} after step 3" in proc.stderr and str(ckpt) in proc.stderr
    assert torch.load(ckpt, weights_only=False)["global_step"] == 3  # the step in progress was finished
    full, _ = _fit(tmp_path / "full", max_steps=4)
    resumed, trainer = _fit(tmp_path / "resumed", max_steps=4, ckpt_path=str(ckpt))
    assert trainer.global_step == 4
    _assert_same_weights(resumed, full)


def test_resume_command_replaces_the_checkpoint_argument():
    cmd = ["grpo-lightning", "fit", "--config", "a b.yaml", "--ckpt_path", "old.ckpt", "--model.beta", "0.1"]
    assert resume_command(cmd, "runs/x/last.ckpt") == (
        "grpo-lightning fit --config 'a b.yaml' --model.beta 0.1 --ckpt_path runs/x/last.ckpt"
    )
    assert resume_command(None, "x.ckpt") == "trainer.fit(module, datamodule=datamodule, ckpt_path='x.ckpt')"


def test_step_checkpoints_carry_no_misleading_manual_optimization_warning(tmp_path):
    # Lightning warns that such a checkpoint holds the weights after the optimizer step: for GRPOModule
    # that is the state to resume from, as the resume tests show.
    from lightning.pytorch.callbacks import ModelCheckpoint

    tok = tiny_tokenizer()
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    trainer = make_trainer(max_steps=2, callbacks=[ckpt], enable_checkpointing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(make_module(tok), datamodule=PromptsDataModule(tok))
    assert (tmp_path / "epoch=0-step=2.ckpt").exists()
    assert not [w for w in caught if "manual optimization" in str(w.message)]


def test_a_refused_resume_writes_no_checkpoint(tmp_path, capsys):
    _, trainer = _fit(tmp_path / "a", max_steps=2)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="num_generations: checkpoint 4, now 2"):
        _fit(tmp_path / "b", max_steps=3, ckpt_path=str(tmp_path / "a.ckpt"), num_generations=2)
    assert not (tmp_path / "b" / "checkpoints").exists()
    assert "Saved a checkpoint" not in capsys.readouterr().err


def test_the_cli_on_sigterm_exits_143_and_prints_a_resume_command_that_works(tmp_path):
    from helpers import tiny_model

    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    args = [
        "fit",
        f"--model.model={tmp_path / 'policy'}",
        "--model.reward_funcs=[faulty_rewards:sigterm_on_third_call]",
        "--model.num_generations=2",
        "--model.max_completion_length=6",
        "--data.prompt_template=Q: {question} A:",
        "--data.batch_size=2",
        "--data.synthetic={train_size: 16, val_size: 4, test_size: 4}",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=4",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--export.enabled=false",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    cli = [sys.executable, "-m", "grpo_lightning"]
    first = subprocess.run([*cli, *args], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 143, first.stderr[-3000:]
    command = first.stderr.split("Resume with:\n")[1].splitlines()[0].strip()
    words = shlex.split(command)
    assert words[0] == "grpo-lightning" and words[-2] == "--ckpt_path"
    assert torch.load(words[-1], weights_only=False)["global_step"] == 3
    resumed = subprocess.run([*cli, *words[1:]], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from step 3." in resumed.stderr


def test_an_error_while_restoring_writes_no_checkpoint(tmp_path):
    # The loops (global_step) are restored before the optimizer: a failure there must not be saved as
    # if it were training state.
    _, trainer = _fit(tmp_path / "a", max_steps=2)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="parameter group"):
        _fit(
            tmp_path / "b",
            max_steps=3,
            ckpt_path=str(tmp_path / "a.ckpt"),
            optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        )
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_a_failure_inside_the_optimizer_step_saves_nothing(tmp_path, capsys):
    # The update is half applied when the optimizer fails (say, out of memory), and Lightning has not
    # counted the step yet: that state is neither the step's start nor its end.
    class HalfThenFail(torch.optim.SGD):
        calls = 0

        def step(self, closure=None):
            HalfThenFail.calls += 1
            if HalfThenFail.calls == 3:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].add_(1.0)
                raise RuntimeError("out of memory (simulated, mid optimizer step)")
            return super().step(closure)

    tok = tiny_tokenizer()
    root = tmp_path / "run"
    module = make_module(tok, optimizer=lambda params: HalfThenFail(params, lr=0.1))
    trainer = make_trainer(max_steps=5, default_root_dir=str(root))
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.fit(module, datamodule=PromptsDataModule(tok, batch_size=2))
    assert not (root / "checkpoints" / "last.ckpt").exists()
    assert "already begun changing the weights" in capsys.readouterr().err


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path, capsys):
    from lightning.pytorch import Callback

    class TwoCtrlC(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    tok = tiny_tokenizer()
    root = tmp_path / "run"
    trainer = make_trainer(max_steps=5, default_root_dir=str(root), callbacks=[TwoCtrlC()])
    with pytest.raises(SystemExit) as stopped:  # Lightning turns the KeyboardInterrupt into exit(1)
        trainer.fit(make_module(tok), datamodule=PromptsDataModule(tok, batch_size=2))
    assert stopped.value.code != 0
    assert not (root / "checkpoints" / "last.ckpt").exists()
    assert "second Ctrl+C" in capsys.readouterr().err
