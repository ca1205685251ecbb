"""``grpo-lightning export``: export the policy of a checkpoint as ``fit`` does.

The module is rebuilt from the checkpoint (``GRPOModule.load_from_checkpoint``) and written through
the same staged export as fit's (:mod:`grpo_lightning.run.exporting`); the model card says what
fit's would, from the facts :class:`~grpo_lightning.run.exporting.ExportCardFacts` kept.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpo_lightning.cli.parser import GRPOArgumentParser
from grpo_lightning.hf.model_card import ModelCardInfo, run_card_info
from grpo_lightning.module import GRPOModule
from grpo_lightning.run.checkpointing import check_checkpoint_file, read_checkpoint
from grpo_lightning.run.export_dir import check_export_target, recover_leftovers, staged_export
from grpo_lightning.run.exporting import EXPORT_COMMAND, SHARDED, ExportCardFacts, write_policy


def checkpoint_card(module: GRPOModule, checkpoint: dict[str, Any]) -> ModelCardInfo:
    """The model card of an export of ``checkpoint`` (already loaded into ``module``): the module's
    settings, with the run facts that :class:`ExportCardFacts` kept (the optimizer steps of the
    checkpoint when it kept none)."""
    card = run_card_info(module.hparams, module.scorer.names, None)
    facts = checkpoint.get("callbacks", {}).get(ExportCardFacts.__qualname__) or {}
    known = {k: v for k, v in facts.items() if k in ("dataset", "steps", "metrics", "example_prompt")}
    steps = known.get("steps", checkpoint.get("global_step"))
    return dataclasses.replace(card, **{**known, "steps": steps})


# ---- export from a checkpoint -------------------------------------------------------------------


def export_checkpoint(
    ckpt_path: str | os.PathLike[str],
    export_dir: str | os.PathLike[str],
    merge_lora: bool = False,
    overwrite: bool = False,
) -> Path:
    """Export the policy of a GRPOModule checkpoint as ``fit`` does; returns the folder.

    The module is rebuilt with ``GRPOModule.load_from_checkpoint`` (its ``model`` setting must still
    load: the base model's folder or Hub id), on the CPU.
    """
    path = Path(ckpt_path)
    if path.is_dir():
        raise ValueError(f"--ckpt_path {path} is a folder: {SHARDED}")
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path {path}: no such checkpoint file.")
    check_checkpoint_file(path)
    for note in recover_leftovers(export_dir):
        print(note, file=sys.stderr, flush=True)
    check_export_target(export_dir, overwrite)
    checkpoint = read_checkpoint(path)
    module = GRPOModule.load_from_checkpoint(path, map_location="cpu")
    if merge_lora and not module.settings.lora:
        raise ValueError(
            f"--export.merge_lora is true, but {path} trained no LoRA adapter: there is nothing to merge. "
            "Drop --export.merge_lora."
        )
    card = checkpoint_card(module, checkpoint)
    with staged_export(export_dir) as folder:
        write_policy(module, folder, export_dir, merge_lora, card)
    return Path(export_dir)


def export_command(argv: Sequence[str]) -> Path:
    """``grpo-lightning export --ckpt_path CKPT --export.dir DIR [--export.merge_lora true]
    [--export.overwrite true]``: the command line of :func:`export_checkpoint`."""
    parser = GRPOArgumentParser(
        prog=EXPORT_COMMAND,
        description="Export the policy of a grpo-lightning checkpoint as fit exports it (Hugging Face format).",
    )
    parser.add_argument("--ckpt_path", type=str, required=True, help="The checkpoint file (a .ckpt).")
    parser.add_argument("--export.dir", type=str, required=True, help="The folder to export into.")
    parser.add_argument("--export.merge_lora", type=bool, default=False, help="Merge a LoRA adapter.")
    parser.add_argument(
        "--export.overwrite", type=bool, default=False, help="Replace a previous export in export.dir."
    )
    config = parser.parse_args(list(argv))
    folder = export_checkpoint(
        config.ckpt_path, config.export.dir, config.export.merge_lora, config.export.overwrite
    )
    print(f"Exported {config.ckpt_path} to {folder}", flush=True)
    return folder
