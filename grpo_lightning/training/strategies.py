"""``FSDP2Strategy``: fully sharded data parallel (FSDP2) over every device of every node.

Lightning's ``ModelParallelStrategy`` resolves ``data_parallel_size="auto"`` to the number of nodes
(the rest being left to tensor parallelism), so with ``tensor_parallel_size=1`` it cannot start on a
node with more than one device. GRPOModule shards with FSDP2 only, so here the data-parallel size is
always the world size (devices per node x nodes), one node or several.
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy

from grpo_lightning.lightning_compat import set_data_parallel_size


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 with a data-parallel size equal to the world size (``trainer.devices x trainer.num_nodes``).

    ``GRPOModule.configure_model`` shards each decoder layer, then the root, over that 1-D mesh; each rank
    samples its own prompts, and rewards and advantages are gathered over all of them.

    Args:
        tensor_parallel_size: must be 1 (GRPOModule does not apply tensor parallelism); any other value is
            refused here, before processes start.
        save_distributed_checkpoint: each rank saves its shard (``True``) or rank 0 one full file. Either
            way a checkpoint is written whole or not at all (see :meth:`save_checkpoint`).
        process_group_backend: ``nccl`` / ``gloo``; default: the accelerator's.
        timeout: timeout of the process group's collectives.
    """

    def __init__(
        self,
        tensor_parallel_size: int = 1,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        if tensor_parallel_size != 1:
            raise ValueError(
                f"tensor_parallel_size={tensor_parallel_size} is not supported: GRPOModule shards with FSDP2 "
                "(data parallel) only, over every device of every node. Remove tensor_parallel_size (or set "
                "it to 1); to fit a larger model, add devices or nodes, or enable gradient_checkpointing."
            )
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        # num_nodes and the devices of this node are known once the Trainer has connected the strategy:
        # every process of the job is one data-parallel replica.
        set_data_parallel_size(self, self.num_nodes * self.num_processes)
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Write the checkpoint (a folder of shards, or one file) to a temporary sibling of ``filepath``
        and, once every rank has written its part, rename it over ``filepath``: a kill or a full disk
        mid-write leaves the previous checkpoint whole (Lightning writes the shards in place)."""
        path = Path(self.broadcast(str(filepath)))
        staging = path.with_name(f".{path.name}.partial")
        aside = path.with_name(f".{path.name}.replaced")
        if self.global_rank == 0:
            _remove(staging)
        self.barrier()
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier()  # every shard is on disk
        if self.global_rank == 0:
            _remove(aside)
            if path.exists():
                os.replace(path, aside)
            os.replace(staging, path)
            _remove(aside)
        self.barrier()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
