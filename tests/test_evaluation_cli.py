"""Stand-alone evaluation of a checkpoint from the command line: the sampled figures and the figures
per source reach the results, with a number of samples chosen at evaluation time."""

from __future__ import annotations

import json
import re

from helpers import one_thread, save_tiny_policy  # noqa: F401 (autouse fixture)

from grpo_lightning.cli.app import main


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_validate_and_test_a_checkpoint_with_samples_and_sources(tmp_path, capsys):
    model_dir = save_tiny_policy(tmp_path / "policy")
    problems = [{"question": f"{a}+{b}=", "answer": str(a + b), "source": "small" if a < 5 else "large"}
                for a, b in [(1, 2), (7, 4), (3, 3), (9, 9), (2, 5), (6, 1)]]  # fmt: skip
    train = write_rows(tmp_path / "train.jsonl", problems[4:])
    val = write_rows(tmp_path / "val.jsonl", problems[:4])
    args = [
        f"--model.model={model_dir}",
        "--model.reward_funcs=[gsm8k_accuracy_flexible]",
        "--model.num_generations=2",
        "--model.max_completion_length=4",
        "--model.val_num_samples=2",
        "--data.prompt_template={question}",
        f"--data.dataset={{train: {train}, validation: {val}, test: {val}}}",
        "--data.batch_size=2",
        "--data.val_batch_size=3",
        "--trainer.accelerator=cpu",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
    ]
    main(["fit", *args, "--trainer.max_steps=1"])
    checkpoint = re.search(r"best checkpoint\s+(\S+)", capsys.readouterr().out).group(1)
    for stage in ("validate", "test"):
        main([stage, *args, "--model.val_num_samples=3", f"--ckpt_path={checkpoint}"])
        out = capsys.readouterr().out
        prefix = "val" if stage == "validate" else "test"
        names = set(re.findall(rf"\b{prefix}/[\w@/]+", out))
        expected = {"accuracy", "reward", "completions/mean_length", "mean@3"}
        expected |= {f"{m}@{k}" for m in ("pass", "maj") for k in (1, 2, 3)}
        expected |= {
            f"{s}/{m}" for s in ("small", "large") for m in ("accuracy", "mean@3", "pass@3", "maj@3")
        }
        assert names == {f"{prefix}/{n}" for n in expected}, stage
