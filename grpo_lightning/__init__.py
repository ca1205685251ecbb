"""grpo_lightning: GRPO for math reasoning as a PyTorch Lightning module.

The public API: :class:`GRPOModule` (the LightningModule), :class:`PromptDataModule` (math prompts
and gold answers), :mod:`grpo_lightning.rewards` (reward functions and their registry), and the
pure math in :mod:`grpo_lightning.advantages`, :mod:`grpo_lightning.losses` and
:mod:`grpo_lightning.logprobs`.
"""

from grpo_lightning import rewards
from grpo_lightning.data import PromptDataModule
from grpo_lightning.module import GRPOModule

__version__ = "0.1.0"

__all__ = ["GRPOModule", "PromptDataModule", "__version__", "rewards"]
