"""grpo_lightning: GRPO for math reasoning as a PyTorch Lightning module."""

__version__ = "0.1.0"
