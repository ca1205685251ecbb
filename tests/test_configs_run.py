"""Every file in configs/ runs, not only parses: each recipe alone and with each trainer preset trains 2
optimizer steps, validates and exports, shrunk to CPU by the same overrides (config_runs.shrink_args).

Single-process combinations run in this process; the distributed presets run together in one pair of
processes (Lightning launches the second, as it does for ``grpo-lightning fit --trainer.devices 2``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from config_runs import (
    DISTRIBUTED_DEVICES,
    PRESETS,
    RECIPES,
    is_distributed,
    shrink_args,
    summary,
    write_stand_ins,
)
from helpers import child_env, one_thread  # noqa: F401 (autouse fixture)

from grpo_lightning.cli.app import main
from grpo_lightning.training.strategies import FSDP2Strategy

HERE = Path(__file__).parent
COMBINATIONS = [[recipe] for recipe in RECIPES] + [
    [recipe, preset] for recipe in RECIPES for preset in PRESETS
]
LOCAL = [c for c in COMBINATIONS if not is_distributed(c)]
DISTRIBUTED = [c for c in COMBINATIONS if is_distributed(c)]
#: What each distributed preset must start: the strategy, and its data-parallel size (None: not a mesh).
EXPECTED_STRATEGY = {"ddp.yaml": ("DDPStrategy", None), "fsdp.yaml": ("FSDP2Strategy", DISTRIBUTED_DEVICES)}


def combination_id(configs: list[Path]) -> str:
    return "+".join(path.stem for path in configs)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stand_ins")
    write_stand_ins(folder)
    return folder


def test_every_config_is_covered():
    """Every recipe alone and with every preset; each distributed preset says what it must start."""
    assert RECIPES and {"bf16.yaml", "ddp.yaml", "fsdp.yaml"} <= {p.name for p in PRESETS}
    assert {p.name for c in DISTRIBUTED for p in c[1:]} == set(EXPECTED_STRATEGY)
    assert len(LOCAL) + len(DISTRIBUTED) == len(RECIPES) * (1 + len(PRESETS))


@pytest.mark.slow
@pytest.mark.parametrize("configs", LOCAL, ids=combination_id)
def test_single_process_config_trains_validates_and_exports(configs, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipes log to ./runs
    result = summary(main(shrink_args(configs, data_dir)))
    assert result["global_step"] == 2 and result["world_size"] == 1
    assert result["validated"] and result["exported"]
    if configs[-1].name == "bf16.yaml":
        assert result["precision"] == "bf16-mixed"


@pytest.mark.slow
def test_distributed_presets_train_on_two_processes(data_dir, tmp_path):
    runs = [shrink_args(configs, data_dir) for configs in DISTRIBUTED]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    done = subprocess.run(
        [sys.executable, str(HERE / "config_runs.py"), "runs.json", "out.jsonl"],
        cwd=tmp_path, env=child_env(str(HERE)), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["args"] for r in results] == runs
    for configs, result in zip(DISTRIBUTED, results, strict=True):
        strategy, dp_size = EXPECTED_STRATEGY[configs[-1].name]
        assert result["strategy"] == strategy and result["data_parallel_size"] == dp_size, combination_id(
            configs
        )
        assert result["global_step"] == 2 and result["world_size"] == DISTRIBUTED_DEVICES
        assert result["validated"] and result["exported"]


def test_fsdp2_strategy_refuses_tensor_parallelism():
    with pytest.raises(ValueError, match="tensor_parallel_size=2 is not supported"):
        FSDP2Strategy(tensor_parallel_size=2)


def test_fsdp_preset_refuses_tensor_parallelism_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = next(p for p in PRESETS if p.name == "fsdp.yaml")
    recipe = next(r for r in RECIPES if r.name == "quickstart.yaml")
    args = [
        "--config",
        str(recipe),
        "--config",
        str(preset),
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
    ]
    with pytest.raises(ValueError, match="tensor_parallel_size=2 is not supported"):
        main([*args, "--trainer.strategy.init_args.tensor_parallel_size=2"], run=False)
