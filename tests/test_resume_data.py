"""Resuming on other data: applied where the saved loader position holds, refused where it does not;
a max_epochs that is already reached is refused."""

from __future__ import annotations

import glob

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from grpo_lightning.data import PromptDataModule
from grpo_lightning.hf.tiny import build_char_tokenizer
from grpo_lightning.run.interrupt import RunGuard

ROWS = [
    (f"{a}+{b}=", str(a + b)) for a, b in [(1, 1), (2, 3), (4, 4), (5, 1), (6, 2), (7, 0), (3, 3), (9, 9)]
]


class Recorder(pl.LightningModule):
    """Records the questions of every training batch (no generation: the data path alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer = build_char_tokenizer()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(list(batch["question"]))
        return (self.weight * batch["input_ids"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def write_csv(path, rows=ROWS):
    path.write_text("question,answer\n" + "".join(f"{q},{a}\n" for q, a in rows))
    return path


def fit(root, data, *, max_steps=-1, max_epochs=None, ckpt_path=None, every=None, **settings):
    """Train on ``data`` (8 rows, batch_size 2: 4 batches an epoch); checkpoints every ``every`` steps."""
    dm = PromptDataModule(
        str(data), batch_size=settings.pop("batch_size", 2), prompt_template=settings.pop("template", "{question}"),
        **{"val_fraction": 0.0, **settings},
    )  # fmt: skip
    callbacks = [RunGuard()]
    if every:
        callbacks.append(ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=every, save_top_k=-1))
    module = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=max_steps, max_epochs=max_epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=bool(every), callbacks=callbacks,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module, trainer


@pytest.fixture
def mid_epoch(tmp_path):
    """A checkpoint after 2 of the 4 batches of epoch 0, and the batches the run saw."""
    data = write_csv(tmp_path / "train.csv")
    module, _ = fit(tmp_path / "first", data, max_steps=4, every=2)
    return data, str(tmp_path / "first" / "ckpt" / "epoch=0-step=2.ckpt"), module.seen


def test_the_checkpoint_records_the_training_batches(mid_epoch):
    _, ckpt, _ = mid_epoch
    state = torch.load(ckpt, weights_only=True)["PromptDataModule"]
    assert state["train_batches"]["rows"] == 8
    assert state["train_batches"]["batch_size"] == 2 and state["train_batches"]["world_size"] == 1
    assert len(state["train_batches"]["questions"]) == 16 and len(state["train_content"]) == 16


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("content", "training rows: '8 rows"),  # the same file, one question edited
        ("batch_size", "data.batch_size: 2 -> 4"),
        ("data_seed", "data.data_seed: 0 -> 1"),
        ("cap", "data.max_train_samples: None -> 6"),
        ("split", "data.val_fraction: 0.0 -> 0.25"),  # 2 of the 8 rows held out for validation
        ("other file", "data.dataset"),
    ],
)
def test_other_batches_mid_epoch_are_refused_with_the_fix(tmp_path, mid_epoch, change, named):
    data, ckpt, _ = mid_epoch
    settings = {}
    if change == "content":
        write_csv(data, [("10+10=", "20"), *ROWS[1:]])
    elif change == "batch_size":
        settings["batch_size"] = 4
    elif change == "data_seed":
        settings["data_seed"] = 1
    elif change == "cap":
        settings["max_train_samples"] = 6
    elif change == "split":
        settings["val_fraction"] = 0.25
    else:
        data = write_csv(tmp_path / "other.csv", ROWS[::-1])
    with pytest.raises(ValueError, match="part-way through epoch 0 \\(2 of its batches") as info:
        fit(tmp_path / "second", data, max_steps=6, ckpt_path=ckpt, **settings)
    message = str(info.value)
    assert named in message
    assert "Resume with the checkpoint's values (" in message
    assert (
        f"grpo-lightning export --ckpt_path {ckpt} --export.dir <folder>, then --model.model <folder>"
        in message
    )
    if change == "batch_size":
        assert "--data.batch_size 2" in message
    if change == "content":
        assert "the training data as they were (8 rows)" in message


def test_same_rows_elsewhere_with_another_template_resume_exactly(tmp_path, mid_epoch, capsys):
    data, ckpt, seen = mid_epoch
    moved = tmp_path / "moved.csv"
    moved.write_bytes(data.read_bytes())
    module, trainer = fit(tmp_path / "second", moved, max_steps=4, ckpt_path=ckpt, template="Q: {question}")
    err = capsys.readouterr().err
    assert f"data.dataset: {str(data)!r} -> {str(moved)!r}" in err
    assert "data.prompt_template: '{question}' -> 'Q: {question}'" in err
    assert module.seen == seen[2:]  # the loader position carried over: the rest of the epoch
    assert trainer.global_step == 4


def test_a_corrected_answer_is_applied_and_reported(tmp_path, mid_epoch, capsys):
    data, ckpt, seen = mid_epoch
    write_csv(data, [(ROWS[0][0], "3"), *ROWS[1:]])
    module, _ = fit(tmp_path / "second", data, max_steps=4, ckpt_path=ckpt)
    assert "training rows' other columns: 'as saved' -> 'changed (same questions, same order)'" in (
        capsys.readouterr().err
    )
    assert module.seen == seen[2:]


def test_other_batches_at_an_epoch_boundary_start_the_next_epoch(tmp_path, capsys):
    data = write_csv(tmp_path / "train.csv")
    fit(tmp_path / "first", data, max_steps=4, every=4)  # the last batch of epoch 0
    ckpt = str(tmp_path / "first" / "ckpt" / "epoch=0-step=4.ckpt")
    module, trainer = fit(tmp_path / "second", data, max_steps=6, ckpt_path=ckpt, batch_size=4)
    err = capsys.readouterr().err
    assert (
        "data.batch_size: 2 -> 4" in err and "at the start of epoch 1, so that epoch runs on the new" in err
    )
    assert [len(b) for b in module.seen] == [4, 4] and trainer.global_step == 6
    assert sorted(q for b in module.seen for q in b) == sorted(q for q, _ in ROWS)  # a whole epoch


def test_a_reached_max_epochs_is_refused(tmp_path):
    data = write_csv(tmp_path / "train.csv")
    _, trainer = fit(tmp_path / "first", data, max_epochs=1, every=4)
    (ckpt,) = glob.glob(str(tmp_path / "first" / "ckpt" / "*.ckpt"))
    with pytest.raises(ValueError, match=r"finished 1 epoch\(s\), and max_epochs=1 .*--trainer.max_epochs 2"):
        fit(tmp_path / "second", data, max_epochs=1, ckpt_path=ckpt)
    module, trainer = fit(tmp_path / "third", data, max_epochs=2, ckpt_path=ckpt)
    assert len(module.seen) == 4 and trainer.current_epoch == 2


def test_other_synthetic_problems_mid_epoch_are_refused(tmp_path):
    sizes = {"train_size": 8, "val_size": 0, "test_size": 0}
    fit(tmp_path / "first", "synthetic", max_steps=2, every=2, synthetic=sizes)
    ckpt = str(tmp_path / "first" / "ckpt" / "epoch=0-step=2.ckpt")
    with pytest.raises(ValueError, match=r"(?s)data\.synthetic: .*training rows: '8 rows") as info:
        fit(
            tmp_path / "second",
            "synthetic",
            max_steps=4,
            ckpt_path=ckpt,
            synthetic={**sizes, "max_operand": 7},
        )
    assert '--data.synthetic \'{"train_size": 8, "val_size": 0, "test_size": 0}\'' in str(info.value)
