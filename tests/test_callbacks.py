"""Callbacks: sample-completion printing and tables, reference-model sync schedules."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from helpers import (
    PromptsDataModule,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_tokenizer,
)
from lightning.pytorch.loggers import TensorBoardLogger

import grpo_lightning.training.callbacks as callbacks
from grpo_lightning.training.callbacks import CompletionLogger, RefModelSync


def test_completions_are_printed_on_the_optimizer_step_schedule(capsys):
    tok = tiny_tokenizer()
    # 2 optimizer steps per training step; every 3 steps -> after training steps 2 (gs 4) and 3 (gs 6)
    module = make_module(tok, num_iterations=2, log_completions_every_n_steps=3, num_completions_to_log=3)
    make_trainer(max_steps=6).fit(module, datamodule=PromptsDataModule(tok))
    out = capsys.readouterr().out
    assert out.count("---- sample completions at step") == 2
    assert "at step 4 ----" in out and "at step 6 ----" in out
    entries = [line for line in out.splitlines() if line.startswith("[reward=")]
    assert len(entries) == 6 and all("char_code_mean=" in e and "advantage=" in e for e in entries)
    # 3 completions spread over the batch's 2 prompts (2 + 1): batch 2 is (7-4=, 9+9=), batch 3 (5-2=, 8+1=)
    step4, step6 = out.split("at step 6 ----")
    for block, (a, b) in ((step4, ("7-4=", "9+9=")), (step6, ("5-2=", "8+1="))):
        counts = sorted(block.count(f"prompt:     '{p}'") for p in (a, b))
        assert counts == [1, 2], block


def test_pick_rows_spreads_over_prompts_best_and_worst_first():
    # 3 groups of 4. Group 0 all equal (no signal), group 1 mixed, group 2 mixed with a NaN (lowest).
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.0, float("nan"), 0.2, 0.9, 0.2])
    # Mixed groups first (1, then 2), two rows each: the best and the worst of the group.
    # Group 1: best row 5 (1.0), worst row 7 (0.0; of tied rows the later one ranks lower);
    # group 2: best row 10 (0.9), worst row 8 (NaN).
    assert callbacks.pick_rows(rewards, 4, 4) == [5, 7, 10, 8]
    # Past the mixed groups comes the all-equal one; an odd count cuts the last pair.
    assert callbacks.pick_rows(rewards, 4, 5) == [5, 7, 10, 8, 0]
    assert callbacks.pick_rows(rewards, 4, 1) == [5]
    assert callbacks.pick_rows(rewards, 4, 0) == []


def test_table_rows_and_markdown():
    logger = CompletionLogger(every_n_steps=1, num_completions=2, max_chars=5)
    module = make_module()

    samples = SimpleNamespace(
        prompts=["1+1=", "1+1=", "2+2="],
        completions=["2", "3 | x\ny", "4"],
        per_func=torch.tensor([[1.0], [0.0], [1.0]]),
        total=torch.tensor([1.0, 0.0, 1.0]),
    )
    columns, rows = logger.rows(module, {"samples": samples, "advantages": torch.tensor([0.5, -0.5, 0.0])}, 7)
    assert columns == ["step", "prompt", "completion", "reward", "char_code_mean", "advantage"]
    assert rows == [[7, "1+1=", "2", 1.0, 1.0, 0.5], [7, "1+1=", "3 | x\ny", 0.0, 0.0, -0.5]]
    table = logger._markdown(columns, rows)
    assert table.splitlines()[0] == "| step | prompt | completion | reward | char_code_mean | advantage |"
    assert "3 \\| x ..." in table  # pipes escaped, long cells clipped, one line per row


def test_completion_table_goes_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tok = tiny_tokenizer()
    module = make_module(tok)
    logger = TensorBoardLogger(tmp_path)
    table = CompletionLogger(every_n_steps=1, num_completions=2, print_to_console=False)
    make_trainer(max_steps=2, logger=logger, callbacks=[table], log_every_n_steps=1).fit(
        module, datamodule=PromptsDataModule(tok)
    )
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    assert [e.step for e in events.Tensors("completions/text_summary")] == [1, 2]
    assert "train/reward" in events.Tags()["scalars"]


def test_reference_sync_follows_optimizer_steps_and_mixes(monkeypatch):
    synced_at: list[int] = []
    original = callbacks.mix_reference
    tok = tiny_tokenizer()
    module = make_module(tok, num_iterations=2, beta=0.1, sync_ref_model=True, ref_model_sync_steps=3,
                         ref_model_mixup_alpha=1.0)  # fmt: skip
    trainer = make_trainer(max_steps=6)

    def spy(ref, policy, alpha):
        synced_at.append(trainer.global_step)
        original(ref, policy, alpha)

    monkeypatch.setattr(callbacks, "mix_reference", spy)
    trainer.fit(module, datamodule=PromptsDataModule(tok))
    assert synced_at == [4, 6]  # the steps that crossed 3 and 6
    assert any(isinstance(c, RefModelSync) for c in trainer.callbacks)
    for (name, p), r in zip(module.policy.named_parameters(), module.ref_model.parameters(), strict=True):
        torch.testing.assert_close(r, p, msg=name)  # alpha = 1 copies the policy
