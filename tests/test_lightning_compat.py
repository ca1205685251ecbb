"""The non-public Lightning API the package uses (:mod:`grpo_lightning.lightning_compat`): each test
fails when the installed Lightning no longer has it, or it no longer does what the package relies on."""

from __future__ import annotations

import ast
import inspect
import warnings
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, RichProgressBar, TQDMProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader

import grpo_lightning
from grpo_lightning import lightning_compat as compat


def _trainer(tmp_path, **kwargs: Any) -> Trainer:
    options = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        **kwargs,
    }
    return Trainer(**options)


def test_no_other_module_imports_a_private_name_or_module_of_lightning():
    # The private attributes used on Lightning's objects are listed in lightning_compat's docstring.
    found = []
    for path in sorted(Path(grpo_lightning.__file__).parent.rglob("*.py")):
        if path.name == "lightning_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lightning":
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.split(".")[0] == "lightning"]
            else:
                continue
            found += [f"{path.name}: {n}" for n in names if any(p.startswith("_") for p in n.split("."))]
    assert found == []


# ---- optimizer steps ------------------------------------------------------------------------------


class CountingOnly(BoringModel):
    """Manual optimization that only counts two optimizer steps per training step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        compat.count_optimizer_step(opt)
        compat.count_optimizer_step(opt)


def test_count_optimizer_step_counts_global_steps_and_leaves_the_weights(tmp_path):
    model = CountingOnly()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(model)
    assert trainer.global_step == 6
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_mark_optimizer_stepped_silences_the_scheduler_order_warning():
    def scheduler() -> torch.optim.lr_scheduler.LRScheduler:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

    unmarked = scheduler()
    with pytest.warns(UserWarning, match=r"lr_scheduler.step\(\)` before `optimizer.step\(\)"):
        unmarked.step()
    marked = scheduler()
    compat.mark_optimizer_stepped(marked.optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        marked.step()


# ---- Trainer and strategy settings ----------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_distributed_sampler_enabled_is_the_trainer_argument(tmp_path, enabled):
    assert compat.distributed_sampler_enabled(_trainer(tmp_path, use_distributed_sampler=enabled)) is enabled


def test_set_data_parallel_size_is_the_size_of_the_mesh(monkeypatch):
    import lightning.pytorch.strategies.model_parallel as model_parallel
    from lightning.pytorch.strategies import ParallelStrategy

    meshes = []
    # setup_environment without a process group: only the mesh it builds is looked at
    monkeypatch.setattr(ParallelStrategy, "setup_environment", lambda self: None)
    monkeypatch.setattr(ModelParallelStrategy, "_setup_distributed", lambda self: None)
    monkeypatch.setattr(model_parallel, "_setup_device_mesh", lambda *args: meshes.append(args) or "mesh")
    strategy = ModelParallelStrategy(data_parallel_size="auto", tensor_parallel_size=1)
    strategy.parallel_devices = [torch.device("cpu")] * 4
    strategy.connect(BoringModel())
    compat.set_data_parallel_size(strategy, 8)
    strategy.setup_environment()
    data_parallel, tensor_parallel = meshes[0][:2]
    assert (data_parallel, tensor_parallel) == (8, 1)


# ---- callbacks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("summary", [ModelSummary, RichModelSummary])
def test_summary_max_depth_is_the_argument(summary):
    assert compat.summary_max_depth(summary(max_depth=3)) == 3


def test_summary_table_lays_out_the_columns_and_ends_with_the_flops():
    columns = [("Name", ["layer"]), ("Type", ["Linear"]), ("Params", ["66"])]
    table = compat.summary_table(66, 66, 0.000264, {"train": 1, "eval": 0}, 0, *columns)
    lines = table.split("\n")
    assert [cell.strip() for cell in lines[0].split("|")] == ["Name", "Type", "Params"]
    assert [cell.strip() for cell in lines[2].split("|")] == ["layer", "Linear", "66"]
    assert "Total params" in table and "Trainable params" in table
    assert "Total Flops" in lines[-1]  # model_summary drops this line when no FLOPs were counted


@pytest.mark.parametrize(
    ("bar", "arguments"),
    [
        (TQDMProgressBar, {"refresh_rate": 7, "process_position": 2, "leave": True}),
        (RichProgressBar, {"refresh_rate": 7, "leave": True, "theme": None, "console_kwargs": {"width": 90}}),
    ],
)
def test_progress_bar_arguments_build_a_twin_with_the_same_settings(bar, arguments):
    if bar is RichProgressBar:
        from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBarTheme

        arguments = {**arguments, "theme": RichProgressBarTheme(description="red")}
    assert set(arguments) <= set(inspect.signature(bar.__init__).parameters)
    built = compat.progress_bar_arguments(bar(**arguments))
    assert built == arguments
    assert compat.progress_bar_arguments(bar(**built)) == arguments


def test_the_rich_bar_takes_its_epoch_label_from_epoch_label(tmp_path):
    labels: list[tuple[int, str]] = []

    class Labelled(compat.TrainDescriptionHook, RichProgressBar):
        def epoch_label(self, current_epoch: int) -> str:
            labels.append((current_epoch, super().epoch_label(current_epoch)))
            return f"Round {current_epoch}"

    bar = Labelled()
    trainer = _trainer(
        tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=0, callbacks=[bar], enable_progress_bar=True
    )
    trainer.fit(BoringModel())
    assert {epoch for epoch, _ in labels} == {0, 1}
    assert all(label.startswith(f"Epoch {epoch}/1") for epoch, label in labels)  # Lightning's own


def test_pending_wandb_init_is_what_wandb_init_gets(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = WandbLogger(project="p", save_dir=str(tmp_path), offline=True, anonymous=None)
    init = compat.pending_wandb_init(logger)
    assert isinstance(init, dict) and "anonymous" in init
    del init["anonymous"]
    init["name"] = "changed"
    got: list[dict[str, Any]] = []
    monkeypatch.setattr(wandb, "init", lambda **kwargs: got.append(kwargs) or object())
    assert logger.experiment is not None  # starts the run
    assert got and "anonymous" not in got[0] and got[0]["name"] == "changed"
    assert compat.pending_wandb_init(logger) is None  # started
    assert compat.pending_wandb_init(CSVLogger(tmp_path)) is None


# ---- the fit loop's state -----------------------------------------------------------------------------


class CountingLoader(DataLoader):
    """A training loader with a state: the batches it has given out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches = 0

    def __iter__(self):
        for batch in super().__iter__():
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batches = state["batches"]


class Record(Callback):
    """Records the loader states at each step's start, and saves a checkpoint after step ``save_at``."""

    def __init__(self, path: Any, save_at: int) -> None:
        self.path, self.save_at = path, save_at
        self.states: list[Any] = []

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self.states.append(compat.training_loader_states(trainer))

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.save_at:
            trainer.save_checkpoint(self.path)


def test_the_loader_states_and_the_saved_fit_progress(tmp_path):
    record = Record(tmp_path / "mid.ckpt", save_at=2)
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[record])
    assert compat.training_loader_states(trainer) is None  # no loader yet
    trainer.fit(BoringModel(), train_dataloaders=CountingLoader(RandomDataset(32, 16), batch_size=2))
    # Lightning has fetched the batch of a step when the step begins
    assert record.states == [[{"batches": 1}], [{"batches": 2}], [{"batches": 3}]]

    checkpoint = torch.load(tmp_path / "mid.ckpt", weights_only=False)
    saved = compat.saved_fit_progress(checkpoint)
    assert saved == compat.SavedFitProgress(
        epochs_started=1,
        epochs_processed=0,
        batches_ready=2,
        batches_processed=2,
        is_last_batch=False,
        loader_states=[{"batches": 2}],
    )
    compat.replace_saved_loader_states(checkpoint, [{"batches": 1}])
    assert compat.saved_fit_progress(checkpoint).loader_states == [{"batches": 1}]

    without = {"loops": {"fit_loop": {"state_dict": {}}}}
    compat.replace_saved_loader_states(without, [{"batches": 2}])
    assert without == {"loops": {"fit_loop": {"state_dict": {}}}}
    assert compat.saved_fit_progress({}) == compat.SavedFitProgress()


# ---- the command line -------------------------------------------------------------------------------


class RecordingCLI(compat.HookedLightningCLI):
    subcommand_help: ClassVar[dict[str, str]] = {
        name: f"help line of {name}" for name in ("fit", "validate", "test", "predict")
    }
    calls: ClassVar[list[tuple[str, Any]]] = []
    run_it = False

    def check_ckpt_path(self, ckpt_path: str | None) -> None:
        self.calls.append(("check_ckpt_path", ckpt_path))

    def run_subcommand(self, subcommand: str) -> None:
        self.calls.append(("run_subcommand", subcommand))
        if self.run_it:
            super().run_subcommand(subcommand)

    def before_fit(self) -> None:
        self.calls.append(("before_fit", None))

    def after_fit(self) -> None:
        self.calls.append(("after_fit", self.trainer.global_step))


def _cli(tmp_path, args: list[str], run_it: bool) -> RecordingCLI:
    RecordingCLI.calls, RecordingCLI.run_it = [], run_it
    defaults = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return RecordingCLI(
        BoringModel,
        args=args,
        trainer_defaults={**defaults, "default_root_dir": str(tmp_path), "enable_model_summary": False},
        save_config_callback=None,
    )


def test_the_cli_hooks_get_the_help_lines_and_the_ckpt_path(tmp_path, capsys):
    cli = _cli(tmp_path, ["fit", "--ckpt_path", "elsewhere.ckpt"], run_it=False)
    # Lightning would have loaded elsewhere.ckpt (which does not exist) and fitted: neither happened
    assert cli.calls == [("check_ckpt_path", "elsewhere.ckpt"), ("run_subcommand", "fit")]
    with pytest.raises(SystemExit):
        cli.parser.parse_args(["--help"])
    assert "help line of validate" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.parser.parse_args(["fit", "--help"])
    assert "help line of fit" in capsys.readouterr().out


def test_run_subcommand_runs_before_the_trainer_method_and_after(tmp_path):
    cli = _cli(tmp_path, ["fit", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"], run_it=True)
    assert cli.calls == [
        ("check_ckpt_path", None),
        ("run_subcommand", "fit"),
        ("before_fit", None),
        ("after_fit", 2),
    ]
