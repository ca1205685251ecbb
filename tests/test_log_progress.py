"""Progress in a log file: with stdout not a terminal, a fit prints step and validation lines as it goes."""

from __future__ import annotations

import csv
import re
import sys
import types

import pytest
from helpers import (
    PROMPTS,
    PromptsDataModule,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_tokenizer,
)
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

STEP_LINE = re.compile(
    r"^step (\d+)/(\d+) \((\d+)%\) \| (\S+) s/step \| ETA (\d+s|\d+m\d\ds) \| reward (\S+) \| kl (\S+) \| len (\S+)$"
)
VAL_LINE = re.compile(r"^val step (\d+): accuracy (\S+) \| reward (\S+) \| len (\S+)$")


def logged_rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(f"{logger.log_dir}/metrics.csv") as f:
        return list(csv.DictReader(f))


def value_at(rows: list[dict[str, str]], name: str, step: int) -> float:
    (value,) = [float(r[name]) for r in rows if r.get(name) and int(float(r["step"])) == step]
    return value


def test_fit_prints_step_and_validation_lines_to_a_log(tmp_path, capsys, monkeypatch):
    # capsys makes stdout a non-terminal, as `> log` or nohup do. 2 optimizer steps per rollout, 8 in all;
    # a line every 3 steps and none on time: the first step (2), crossing 3 (4), crossing 6 (6), the last (8).
    monkeypatch.setenv("GRPO_LIGHTNING_PROGRESS_STEPS", "3")
    monkeypatch.setenv("GRPO_LIGHTNING_PROGRESS_SECONDS", "0")
    tok = tiny_tokenizer()
    module = make_module(tok, num_iterations=2, beta=0.1)
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(
        max_steps=8, enable_progress_bar=True, limit_val_batches=1.0, val_check_interval=2,
        logger=logger, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=PromptsDataModule(tok))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("step ", "val "))]
    rows = logged_rows(logger)

    steps = [STEP_LINE.match(line) for line in lines if line.startswith("step ")]
    assert all(steps), lines
    assert [(int(m[1]), int(m[2]), int(m[3])) for m in steps] == [
        (2, 8, 25),
        (4, 8, 50),
        (6, 8, 75),
        (8, 8, 100),
    ]
    for m in steps:
        step = int(m[1])
        assert 0 < float(m[4]) < 60  # seconds per optimizer step of a tiny model
        # The printed figures are the logged ones at that step, to 3 significant digits.
        for printed, name in (
            (m[6], "train/reward"),
            (m[7], "train/kl"),
            (m[8], "train/completions/mean_length"),
        ):
            assert float(printed) == pytest.approx(value_at(rows, name, step), rel=5e-3, abs=1e-9), (
                name,
                step,
            )
        assert 1 <= float(m[8]) <= 8  # max_completion_length 8

    # Validation every 2 rollouts (4 optimizer steps), each printed right after it is computed.
    order = [line.split(" |")[0].split(":")[0] for line in lines]
    assert order == [
        "step 2/8 (25%)",
        "step 4/8 (50%)",
        "val step 4",
        "step 6/8 (75%)",
        "step 8/8 (100%)",
        "val step 8",
    ]
    for line in (line for line in lines if line.startswith("val ")):
        m = VAL_LINE.match(line)
        assert m, line
        step = int(m[1])
        for printed, name in (
            (m[2], "val/accuracy"),
            (m[3], "val/reward"),
            (m[4], "val/completions/mean_length"),
        ):
            assert float(printed) == pytest.approx(value_at(rows, name, step), rel=5e-3, abs=1e-9), (
                name,
                step,
            )


def test_kl_is_left_out_without_a_reference_and_the_default_cadence_is_5_percent(capsys, monkeypatch):
    monkeypatch.delenv("GRPO_LIGHTNING_PROGRESS_STEPS", raising=False)
    monkeypatch.setenv("GRPO_LIGHTNING_PROGRESS_SECONDS", "0")
    tok = tiny_tokenizer()
    # 40 optimizer steps (20 rollouts of 2): 5% = every 2 steps, so every rollout prints a line.
    module = make_module(tok, num_iterations=2, max_completion_length=2, num_generations=2)
    make_trainer(max_steps=40, enable_progress_bar=True).fit(
        module, datamodule=PromptsDataModule(tok, prompts=PROMPTS * 3)
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [int(line.split()[1].split("/")[0]) for line in lines] == list(range(2, 41, 2))
    assert all(" | reward " in line and " | len " in line and "kl" not in line for line in lines), lines


def test_validate_test_and_long_loops_print_lines(capsys, monkeypatch):
    monkeypatch.setenv("GRPO_LIGHTNING_PROGRESS_SECONDS", "1e-9")  # a batch line after every batch
    tok = tiny_tokenizer()
    module = make_module(tok, val_num_samples=2)
    dm = PromptsDataModule(tok, val_prompts=PROMPTS[:4])  # 2 batches of 2
    trainer = make_trainer(enable_progress_bar=True, limit_val_batches=None)
    (validated,) = trainer.validate(module, datamodule=dm)
    (tested,) = trainer.test(module, dataloaders=dm.val_dataloader())
    out = capsys.readouterr().out.splitlines()
    batches = [line.split(" | ")[0] for line in out if " batch " in line]
    assert batches == ["val batch 1/2", "val batch 2/2", "test batch 1/2", "test batch 2/2"]
    for stage, results in (("val", validated), ("test", tested)):
        (line,) = [line for line in out if line.startswith(f"{stage}: ")]
        shown = dict(part.rsplit(" ", 1) for part in line[len(stage) + 2 :].split(" | "))
        # pass@k and maj@k at k = N = 2 only; the loggers have every k.
        assert list(shown) == ["accuracy", "mean@2", "pass@2", "reward", "len"], line
        names = {"len": "completions/mean_length"}
        for label, printed in shown.items():
            assert float(printed) == pytest.approx(
                results[f"{stage}/{names.get(label, label)}"], rel=5e-3, abs=1e-9
            )


def _progress(trainer, module):
    """The progress callback the module's callbacks leave in the Trainer (as Lightning attaches them)."""
    module.trainer = trainer
    returned = module.configure_callbacks()
    # Lightning drops the Trainer's callbacks of a type that a returned one is an instance of.
    kept = [c for c in trainer.callbacks if not any(isinstance(r, type(c)) for r in returned)]
    bars = [c for c in [*kept, *returned] if isinstance(c, ProgressBar)]
    assert len(bars) <= 1, bars  # Lightning supports one
    return bars[0] if bars else None


def test_a_terminal_or_notebook_keeps_the_bar_a_log_gets_lines(monkeypatch):
    module = make_module()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert type(_progress(make_trainer(enable_progress_bar=True), module)).__name__ == "LogProgress"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert type(_progress(make_trainer(enable_progress_bar=True), module)).__name__.startswith("Step")

    # A notebook's output is no tty, and it shows live bars.
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    ZMQInteractiveShell = type("ZMQInteractiveShell", (), {})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=ZMQInteractiveShell))
    assert type(_progress(make_trainer(enable_progress_bar=True), module)).__name__.startswith("Step")
    monkeypatch.delitem(sys.modules, "IPython")

    # No bar stays no bar; one's own bar (or a disabled one) is left as made.
    assert _progress(make_trainer(enable_progress_bar=False), module) is None

    class MyBar(TQDMProgressBar):
        pass

    mine = MyBar()
    assert _progress(make_trainer(enable_progress_bar=True, callbacks=[mine]), module) is mine
    off = _progress(
        make_trainer(enable_progress_bar=True, callbacks=[TQDMProgressBar(refresh_rate=0)]), module
    )
    assert type(off).__name__ == "StepTQDMProgressBar" and off.is_disabled
