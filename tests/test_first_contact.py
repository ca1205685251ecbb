"""What a Lightning user meets first: logged steps are optimizer steps, the progress bar counts
what max_steps counts, each run keeps its own folder, predict writes JSON lines, every CLI
argument has help, and prompts too long for the model fail at setup."""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import subprocess
import sys

import pytest
from helpers import (
    PromptsDataModule,
    make_module,
    make_trainer,
    one_thread,  # noqa: F401 (autouse fixture)
    save_tiny_policy,
    tiny_tokenizer,
)
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from grpo_lightning.cli.app import main
from grpo_lightning.training.progress import StepRichProgressBar, StepTQDMProgressBar


def csv_rows(folder) -> list[dict[str, str]]:
    (path,) = glob.glob(str(folder / "**" / "metrics.csv"), recursive=True)
    with open(path) as f:
        return list(csv.DictReader(f))


def test_every_logger_sees_optimizer_steps_with_two_steps_per_rollout(tmp_path):
    tok = tiny_tokenizer()
    # 2 optimizer steps per training step: 3 rollouts make global_step 2, 4, 6.
    module = make_module(tok, steps_per_rollout=2, log_completions_every_n_steps=2, num_completions_to_log=2)
    csv_logger = CSVLogger(tmp_path / "csv")
    tb_logger = TensorBoardLogger(tmp_path / "tb")
    trainer = make_trainer(
        max_steps=6,
        logger=[csv_logger, tb_logger],
        log_every_n_steps=1,
        num_sanity_val_steps=-1,
        limit_val_batches=None,
        val_check_interval=1,
    )
    trainer.fit(module, datamodule=PromptsDataModule(tok, batch_size=2, val_prompts=["1+1=", "2+3="]))
    assert trainer.global_step == 6
    rows = csv_rows(tmp_path / "csv")
    train_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    val_steps = [int(r["step"]) for r in rows if r.get("val/accuracy")]
    assert train_steps == [2, 4, 6]
    assert val_steps == [0, 2, 4, 6]  # before training, then after each rollout: one row per step

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = glob.glob(str(tmp_path / "tb" / "**" / "events.out.*"), recursive=True)
    acc = EventAccumulator(events, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6]
    table_steps = [e.step for e in acc.Tensors("completions/text_summary")]
    assert table_steps == [2, 4, 6]  # the completion tables sit on the same x-axis as the scalars


@pytest.mark.parametrize("bar", [TQDMProgressBar(), RichProgressBar()], ids=["tqdm", "rich"])
def test_the_progress_bar_counts_optimizer_steps_and_ends_full(bar, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)  # a terminal: the live bar
    tok = tiny_tokenizer()
    module = make_module(tok, steps_per_rollout=2)
    trainer = make_trainer(max_steps=4, enable_progress_bar=True, callbacks=[bar])
    trainer.fit(module, datamodule=PromptsDataModule(tok))
    (swapped,) = [c for c in trainer.callbacks if isinstance(c, (TQDMProgressBar, RichProgressBar))]
    assert isinstance(swapped, (StepTQDMProgressBar, StepRichProgressBar))
    assert swapped.total_train_batches == 4  # max_steps counts optimizer steps: so does the bar
    if isinstance(swapped, StepTQDMProgressBar):
        assert swapped.train_progress_bar.n == 4
    else:
        task = swapped.progress.tasks[swapped.train_progress_bar_id]
        assert (task.completed, task.total) == (4, 4)
        assert swapped._get_train_description(0).strip() == "Epoch 0"  # no "0/-2" without an epoch limit


def test_a_custom_progress_bar_is_left_alone():
    class MyBar(TQDMProgressBar):
        pass

    tok = tiny_tokenizer()
    trainer = make_trainer(max_steps=1, enable_progress_bar=True, callbacks=[MyBar()])
    trainer.fit(make_module(tok), datamodule=PromptsDataModule(tok))
    assert [type(c) for c in trainer.callbacks if isinstance(c, TQDMProgressBar)] == [MyBar]


def cli_args(model_dir, root, *extra: str) -> list[str]:
    return [
        f"--model.model={model_dir}",
        "--model.reward_funcs=[gsm8k_accuracy]",
        "--model.num_generations=2",
        "--model.max_completion_length=6",
        "--data.prompt_template={question}\n",
        "--data.batch_size=2",
        "--data.val_batch_size=4",
        "--data.synthetic={train_size: 16, val_size: 4, test_size: 3}",
        "--trainer.accelerator=cpu",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}",
        *extra,
    ]


def test_two_runs_keep_separate_folders_whatever_the_logger(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    model_dir = save_tiny_policy(tmp_path / "policy")
    for logger in ("lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.WandbLogger"):
        folders = []
        for _ in range(2):
            main(
                [
                    "fit",
                    *cli_args(model_dir, tmp_path / "runs", "--trainer.max_steps=1"),
                    f"--trainer.logger={logger}",
                    f"--trainer.logger.save_dir={tmp_path / 'runs'}",
                ]
            )
            out = capsys.readouterr().out
            folder = re.search(r"run folder\s+(\S+)", out).group(1)
            assert re.search(r"exported model\s+(\S+)", out).group(1) == os.path.join(folder, "hf_model")
            checkpoint = re.search(r"best checkpoint\s+(\S+)", out).group(1)
            assert checkpoint.startswith(os.path.join(folder, "checkpoints")) and os.path.isfile(checkpoint)
            for name in ("config.yaml", "hf_model/config.json"):
                assert os.path.exists(os.path.join(folder, name)), (logger, name)
            folders.append(folder)
            if "Wandb" in logger:  # one wandb run per process, as two CLI invocations would have
                import wandb

                wandb.finish()
        assert folders[0] != folders[1], logger  # the second run did not write into the first one's folder


def test_without_a_logger_a_second_run_is_refused_not_overwritten(tmp_path, capsys):
    model_dir = save_tiny_policy(tmp_path / "policy")
    args = ["fit", *cli_args(model_dir, tmp_path / "runs", "--trainer.max_steps=1", "--trainer.logger=false")]
    main(args)
    saved = (tmp_path / "runs" / "config.yaml").read_text()
    with pytest.raises(RuntimeError, match="another run already uses the folder"):
        main([*args, "--model.learning_rate=0.5"])
    assert (tmp_path / "runs" / "config.yaml").read_text() == saved


def test_predict_writes_completions_and_rewards_as_json_lines(tmp_path, capsys):
    model_dir = save_tiny_policy(tmp_path / "policy")
    main(["predict", *cli_args(model_dir, tmp_path / "runs", "--model.val_num_samples=2")])
    out = capsys.readouterr().out
    path = re.search(r"^  predictions\s+(\S+)", out, re.M).group(1)
    with open(path) as f:
        records = [json.loads(line) for line in f]
    # 3 test prompts: one greedy and two sampled completions each.
    assert [r["kind"] for r in records] == ["greedy"] * 3 + ["sampled"] * 6
    assert [r["sample"] for r in records[3:]] == [0, 1] * 3
    for r in records:
        assert set(r) >= {"prompt", "completion", "reward", "rewards", "correct", "question", "answer"}
        assert set(r["rewards"]) == {"gsm8k_accuracy"} and r["reward"] in (0.0, 1.0)
        assert r["correct"] == (r["reward"] == 1.0)


def test_fit_help_documents_every_argument(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    blocks = re.split(r"\n  (?=--)", text)
    undocumented = []
    for block in blocks:
        match = re.match(r"(--(model|data)\.[a-z_]+)\b", block)
        if match is None or block.startswith(match.group(1) + ".help"):
            continue
        description = re.sub(r"\s+", " ", block[match.end():]).strip()
        description = re.sub(r"^[A-Z_]+( \{[^}]*\})?(, --\S+ [A-Z_]+)?", "", description).strip()
        if not description or description.startswith("(type:") or description.startswith("(required, type:"):
            undocumented.append(match.group(1))
    documented = {b.split()[0] for b in blocks if re.match(r"--(model|data)\.", b)}
    assert len(documented) > 70  # every model.* and data.* argument was looked at
    assert undocumented == []


def test_prompts_too_long_for_the_context_fail_at_setup_naming_both_numbers(tmp_path):
    tok = tiny_tokenizer()
    module = make_module(tok, max_completion_length=120)  # the test model has 128 positions

    class Data(PromptsDataModule):
        def longest_prompt(self) -> int:
            return 20

    with pytest.raises(ValueError, match=r"has 20 tokens; with max_completion_length=120 .* 140 positions.*context is 128. "
                       r"Lower max_completion_length to at most 108, or set the DataModule's max_prompt_length to at most 8"):
        make_trainer(max_steps=1).fit(module, datamodule=Data(tok))
    assert module.trainer.global_step == 0  # refused before any step


@pytest.mark.parametrize("run", ["validate", "test", "predict"])
def test_prompts_too_long_for_the_context_fail_before_evaluation_and_prediction_too(run):
    tok = tiny_tokenizer()
    scored = []

    def record(prompts, completions, **kw):
        scored.append(len(prompts))
        return [0.0] * len(prompts)

    module = make_module(tok, max_completion_length=120, reward_funcs=[record])  # the real prompts fit

    class Data(PromptsDataModule):
        def longest_prompt(self) -> int:
            return 20

        def test_dataloader(self):
            return self.val_dataloader()

        def predict_dataloader(self):
            return self.val_dataloader()

    with pytest.raises(ValueError, match=r"has 20 tokens; with max_completion_length=120"):
        getattr(make_trainer(limit_val_batches=1), run)(module, datamodule=Data(tok))
    assert scored == []  # refused before any batch was sampled


NOISE = (
    "LeafSpec",  # torch's deprecation of Lightning's own pytree code
    "Tip:",  # Lightning's litlogger / litmodels advertisements
    "will override existing callbacks",  # the module's own progress-bar swap
    "is deprecated",  # transformers' checkpointing aliases that peft reads
    "anonymous setting",  # wandb about an argument Lightning passes
    "git root",
)


def test_a_normal_run_prints_nothing_the_user_cannot_act_on(tmp_path):
    script = f"""
import os
os.environ["WANDB_MODE"] = "offline"
import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from helpers import PromptsDataModule, make_module, tiny_tokenizer
tok = tiny_tokenizer()
module = make_module(tok, lora={{"r": 4}}, gradient_checkpointing=True, steps_per_rollout=2)
loggers = [CSVLogger({str(tmp_path)!r}), WandbLogger(save_dir={str(tmp_path / "wandb_runs")!r}, offline=True)]
trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=loggers, log_every_n_steps=1,
                     enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
trainer.fit(module, datamodule=PromptsDataModule(tok))
print("FIT DONE", trainer.global_step)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FIT DONE 2" in done.stdout
    output = done.stdout + done.stderr
    assert [line for line in output.splitlines() if any(n in line for n in NOISE)] == []


def test_validate_then_fit_then_validate_with_one_trainer():
    # A stand-alone validate runs under inference mode and validation inside fit under no_grad: the
    # metric states the first leaves must not break the second (a before/after measurement).
    tok = tiny_tokenizer()
    module = make_module(tok)
    trainer = make_trainer(max_steps=2, limit_val_batches=None, num_sanity_val_steps=-1, val_check_interval=1)
    data = PromptsDataModule(tok, val_prompts=["1+1=", "2+3=", "7-4="])
    (before,) = trainer.validate(module, datamodule=data, verbose=False)
    trainer.fit(module, datamodule=data)
    (after,) = trainer.validate(module, datamodule=data, verbose=False)
    assert trainer.global_step == 2
    assert 0.0 <= before["val/accuracy"] <= 1.0 and 0.0 <= after["val/accuracy"] <= 1.0


def test_fit_can_push_the_export_to_the_hub(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    uploads = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: uploads.append(("create", repo_id, kw)))

    def upload_folder(*, repo_id, folder_path, **kw):
        uploads.append(("upload", repo_id, sorted(os.listdir(folder_path))))
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/1", commit_message="", commit_description="", oid="1"
        )

    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    model_dir = save_tiny_policy(tmp_path / "policy")
    main(["fit", *cli_args(model_dir, tmp_path / "runs", "--trainer.max_steps=1", "--export.push_to_hub=me/tiny")])
    assert uploads[0] == ("create", "me/tiny", {"token": None, "private": True, "exist_ok": True})
    kind, repo, files = uploads[1]
    assert (kind, repo) == ("upload", "me/tiny") and {"README.md", "config.json", "model.safetensors"} <= set(files)
    assert "https://huggingface.co/me/tiny/commit/1" in capsys.readouterr().out


def test_predict_from_a_finished_run_and_ckpt_path_last_refused(tmp_path, capsys):
    model_dir = save_tiny_policy(tmp_path / "policy")
    args = cli_args(model_dir, tmp_path / "runs", "--trainer.max_steps=1")
    main(["fit", *args])
    checkpoint = re.search(r"best checkpoint\s+(\S+)", capsys.readouterr().out).group(1)
    # The checkpoint already reached max_steps: fine for predict, which resumes nothing.
    main(["predict", *args, f"--ckpt_path={checkpoint}"])
    path = re.search(r"^  predictions\s+(\S+)", capsys.readouterr().out, re.M).group(1)
    assert os.path.getsize(path) > 0
    for subcommand in ("fit", "validate", "test"):
        with pytest.raises(ValueError, match="every run gets a new one"):
            main([subcommand, *args, "--ckpt_path=last"])


QUICKSTART_SHAPED = """\
seed_everything: 0
trainer:
  accelerator: cpu
  max_steps: 2
  val_check_interval: 1
  check_val_every_n_epoch: null
  num_sanity_val_steps: -1
  log_every_n_steps: 1
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {save_dir: runs, name: quickstart}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {every_n_train_steps: 1, save_top_k: 0, save_last: true}
model:
  model: builtin:tiny-math
  reward_funcs: [gsm8k_accuracy]
  num_generations: 2
  max_completion_length: 8
  beta: 0.0
  log_completions_every_n_steps: 1
  num_completions_to_log: 1
data:
  dataset: synthetic
  synthetic: {train_size: 16, val_size: 4, test_size: 4, min_steps: 3, max_steps: 3, max_operand: 10}
  prompt_template: "Q: {question}\\nA: "
  batch_size: 2
  val_batch_size: 4
"""

# How every line a quickstart-shaped run, its resume, validate, test and predict print may begin: what
# the run does and found, its results, and where it saved them.
ALLOWED = re.compile(
    "|".join(
        [
            r"Seed set to 0",
            r"(GPU|TPU) available: ",
            r"`Trainer\(val_check_interval=1\)` was configured so validation will run after every batch\.",
            r"the synthetic problems, (train|validation|test|predict) split: \d+ prompts\.",
            r"CPU: \d+ threads? ",
            r"Validation before training \(step 0\): val/accuracy=",
            r".*zero_signal\.py:\d+: A training step had no learning signal: ",
            r"step \d+/\d+ \(\d+%\) \| ",
            r"---- sample completions at step \d+ ----",
            r"\[reward=.*\]",
            r"  (prompt|completion): ",
            r"(val|test)( step \d+)?: accuracy ",
            r"`Trainer\.fit` stopped: `max_steps=\d+` reached\.",
            r"GRPO (run|predict|validate|test) finished\.",
            r"  (run folder|last checkpoint|best checkpoint|exported model|predictions) ",
            r"Restoring states from the checkpoint path at ",
            r"Resuming from step \d+\.",
            r"Restored all states from the checkpoint at ",
            r"Loaded model weights from the checkpoint at ",
            r"[┏┃┡│└]",  # the table of validate's and test's results
        ]
    )
)


@pytest.mark.slow
def test_the_cli_quickstart_resume_and_evaluation_print_only_what_the_user_can_use(tmp_path):
    (tmp_path / "q.yaml").write_text(QUICKSTART_SHAPED)
    last = "runs/quickstart/version_0/checkpoints/last.ckpt"
    runs = [
        ["fit", "--config", "q.yaml"],
        ["fit", "--config", "q.yaml", "--trainer.max_steps=3", f"--ckpt_path={last}"],
        *([sub, "--config", "q.yaml", f"--ckpt_path={last}"] for sub in ("validate", "test", "predict")),
    ]
    script = (
        "import runpy, sys\n"  # python -m grpo_lightning, five times in one process (one import of torch)
        f"for argv in {runs!r}:\n    sys.argv = ['grpo-lightning', *argv]\n"
        "    runpy.run_module('grpo_lightning', run_name='__main__')\n    print('RUN DONE')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("RUN DONE") == 5 and "predictions.jsonl" in done.stdout
    # Every subcommand says where it wrote.
    for sub, folder in (("validate", 2), ("test", 3), ("predict", 4)):
        assert re.search(rf"GRPO {sub} finished\.\n  run folder\s+runs/quickstart/version_{folder}\n", done.stdout)
    lines = (done.stdout + done.stderr).replace("\r", "\n").splitlines()
    unexpected = [line for line in lines if line.strip() not in ("", "RUN DONE") and not ALLOWED.match(line)]
    assert unexpected == []
