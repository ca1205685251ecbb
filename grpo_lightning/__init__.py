"""grpo_lightning: GRPO for math reasoning as a PyTorch Lightning module.

The public API: :class:`GRPOModule` (the LightningModule), :class:`PromptDataModule` (math prompts
and gold answers), :mod:`grpo_lightning.rewards` (reward functions and their registry), and the
pure math in :mod:`grpo_lightning.algorithm.advantages`, :mod:`grpo_lightning.algorithm.losses` and
:mod:`grpo_lightning.logprobs`.

Attributes load on first access: ``import grpo_lightning`` is fast, and ``GRPOModule`` does not
need the data stack (``datasets``) or the optional reward back-ends.
"""

from typing import TYPE_CHECKING

from grpo_lightning._lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {"grpo_lightning.module": ("GRPOModule",), "grpo_lightning.data.datamodule": ("PromptDataModule",)},
    globals(),
    submodules=("grpo_lightning.rewards",),
)

if TYPE_CHECKING:  # what static tools see; at run time the names above load on first use
    from grpo_lightning import rewards
    from grpo_lightning.data.datamodule import PromptDataModule
    from grpo_lightning.module import GRPOModule

__all__ = ["GRPOModule", "PromptDataModule", "__version__", "rewards"]
