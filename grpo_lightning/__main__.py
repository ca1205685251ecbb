"""``python -m grpo_lightning fit --config ...``."""

from grpo_lightning.cli import console_entry

if __name__ == "__main__":
    console_entry()
