"""The progress lines' text, cadence settings and terminal detection, as pure functions."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pytest

from grpo_lightning.training.log_progress import (
    LogProgress,
    batch_line,
    cadence_from_env,
    eval_line,
    format_duration,
    interactive_output,
    total_optimizer_steps,
    train_line,
)


def test_train_line_by_hand():
    metrics = {"train/reward": 0.438, "train/kl": 0.0012, "train/completions/mean_length": 31.2, "x": 1.0}
    # 225 steps left at 1.21 s = 272.25 s = 4m32s.
    assert train_line(25, 250, 1.21, metrics) == (
        "step 25/250 (10%) | 1.21 s/step | ETA 4m32s | reward 0.438 | kl 0.00120 | len 31.2"
    )
    del metrics["train/kl"]  # beta = 0 logs no KL
    assert train_line(7, None, None, metrics) == "step 7 | reward 0.438 | len 31.2"


def test_durations_and_values():
    assert [format_duration(s) for s in (0, 41.6, 60, 272.25, 3599, 7500)] == [
        "0s", "42s", "1m00s", "4m32s", "59m59s", "2h05m",
    ]  # fmt: skip
    # 38 batches left at 3.1 s = 117.8 s.
    assert batch_line("val", 12, 50, 3.1) == "val batch 12/50 | 3.10 s/batch | ETA 1m58s"
    assert batch_line("predict", 3, math.inf, 0.5) == "predict batch 3 | 0.500 s/batch"


def test_eval_line_keeps_k_equal_n_only():
    metrics = {"step": 4.0, "val/accuracy": 0.47, "val/mean@4": 0.5, "val/pass@1": 0.5, "val/pass@4": 0.8125,
               "val/maj@4": 0.75, "val/gsm8k/accuracy": 0.4, "val/completions/mean_length": 12.25,
               "train/reward": 0.1}  # fmt: skip
    assert eval_line("val", 25, metrics, 4) == (
        "val step 25: accuracy 0.470 | mean@4 0.500 | pass@4 0.812 | maj@4 0.750 | gsm8k/accuracy 0.400 | len 12.2"
    )
    assert eval_line("test", None, {"val/accuracy": 1.0}, 1) == "test: no metrics logged"


def test_total_steps_from_max_steps_or_epochs():
    trainer = SimpleNamespace(max_steps=-1, max_epochs=3, num_training_batches=10)
    assert total_optimizer_steps(trainer, 2) == 60
    trainer.max_steps = 25
    assert total_optimizer_steps(trainer, 2) == 25
    assert (
        total_optimizer_steps(SimpleNamespace(max_steps=-1, max_epochs=-1, num_training_batches=math.inf), 1)
        is None
    )


def test_cadence_settings_are_checked():
    assert cadence_from_env({}) == (None, None)
    assert cadence_from_env(
        {"GRPO_LIGHTNING_PROGRESS_STEPS": "10", "GRPO_LIGHTNING_PROGRESS_SECONDS": "0"}
    ) == (10, 0.0)
    for name, bad in (("GRPO_LIGHTNING_PROGRESS_STEPS", "0"), ("GRPO_LIGHTNING_PROGRESS_STEPS", "5%"),
                      ("GRPO_LIGHTNING_PROGRESS_SECONDS", "-1"), ("GRPO_LIGHTNING_PROGRESS_SECONDS", "nan")):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            cadence_from_env({name: bad})
    with pytest.raises(ValueError, match="every_n_steps"):
        LogProgress(every_n_steps=0)


def test_arguments_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("GRPO_LIGHTNING_PROGRESS_STEPS", "7")
    monkeypatch.setenv("GRPO_LIGHTNING_PROGRESS_SECONDS", "5")
    assert (LogProgress().every_n_steps, LogProgress().every_seconds) == (7, 5.0)
    assert (LogProgress(3, 0).every_n_steps, LogProgress(3, 0).every_seconds) == (3, 0)


def test_interactive_output():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    class Closed(io.StringIO):
        def isatty(self) -> bool:
            raise ValueError("I/O operation on closed file")

    assert interactive_output(Tty()) and not interactive_output(io.StringIO())
    assert not interactive_output(Closed()) and not interactive_output(object())  # type: ignore[arg-type]
