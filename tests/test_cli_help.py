"""The command line speaks for itself: its own description and subcommand help, its own program name,
one line naming the nearest valid option (and the config file) for a typo, and one paragraph for an
error from the package's checks."""

from __future__ import annotations

import sys

import pytest

from grpo_lightning import __main__ as entry
from grpo_lightning.cli import app as cli
from grpo_lightning.cli.app import main


def run_console(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run the console script (grpo_lightning.__main__:main) in this process: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["grpo-lightning", *args])
    try:
        entry.main()
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


def help_text(capsys, *args: str) -> str:
    with pytest.raises(SystemExit):
        main([*args, "--help"])
    return capsys.readouterr().out


def test_help_describes_this_project_and_each_subcommand(capsys):
    text = help_text(capsys)
    assert "Lightning Trainer command line tool" not in text
    assert "GRPO" in text and "export --help" in text
    assert "forward function" not in text and "optimization routine" not in text
    assert "predictions.jsonl" in text  # predict's help says what it writes
    assert "Train the policy with GRPO" in help_text(capsys, "fit")


def test_the_program_name_is_the_command_whatever_launched_it(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/some/where/grpo_lightning/__main__.py"])
    assert help_text(capsys).startswith("usage: python -m grpo_lightning ")
    monkeypatch.setattr(sys, "argv", ["/usr/bin/grpo-lightning"])
    assert help_text(capsys, "validate").startswith("usage: grpo-lightning [options] validate ")


def test_a_mistyped_option_names_the_nearest_one_on_one_line(capsys, monkeypatch):
    code, err = run_console(monkeypatch, capsys, "fit", "--model.learnig_rate=1e-4")
    assert code == 2
    assert err.splitlines() == [
        "error: unknown option --model.learnig_rate (did you mean --model.learning_rate?)",
        "(grpo-lightning fit --help lists every option.)",
    ]


def test_a_mistyped_key_in_a_config_file_names_the_file_and_the_nearest_key(capsys, monkeypatch, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("model:\n  model: builtin:tiny-math\n  beta: 0.0\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  num_generation: 4\n")
    code, err = run_console(monkeypatch, capsys, "fit", "--config", str(good), f"--config={bad}")
    assert code == 2
    assert err.splitlines()[0] == f"error: {bad}: unknown key model.num_generation (did you mean model.num_generations?)"
    assert len(err.splitlines()) == 2


def test_a_mistyped_subcommand_names_the_nearest_one(capsys, monkeypatch):
    code, err = run_console(monkeypatch, capsys, "valdate")
    assert code == 2 and "(did you mean validate?)" in err and len(err.splitlines()) == 2


def test_a_bad_value_gets_the_message_without_the_usage_dump(capsys, monkeypatch):
    code, err = run_console(monkeypatch, capsys, "fit", "--model.learning_rate=abc")
    assert code == 2
    assert "model.learning_rate" in err and "abc" in err and "usage:" not in err
    assert len(err.splitlines()) <= 4


def test_an_error_from_a_check_is_one_paragraph_and_the_traceback_is_behind_a_switch(capsys, monkeypatch):
    monkeypatch.delenv(entry.TRACEBACK_ENV, raising=False)
    args = ["fit", "--model.model=builtin:tiny-math", "--model.reward_funcs=[gsm8k_accuracy]", "--ckpt_path=last"]
    code, err = run_console(monkeypatch, capsys, *args)
    assert code == 1
    assert err.startswith("error: --ckpt_path last looks in this run's own folder")
    assert "Traceback" not in err and f"{entry.TRACEBACK_ENV}=1" in err
    monkeypatch.setenv(entry.TRACEBACK_ENV, "1")
    with pytest.raises(ValueError, match="every run gets a new one"):
        run_console(monkeypatch, capsys, *args)


def test_only_the_package_own_errors_are_shortened():
    try:
        int("x")  # a library's (here Python's) error: a bug report needs its traceback
    except ValueError as error:
        assert not entry.raised_by_this_package(error)
    try:
        cli._refuse_relative_checkpoint("last")
    except ValueError as error:
        assert entry.raised_by_this_package(error)
