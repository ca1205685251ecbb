"""``python -m grpo_lightning fit --config ...``."""

from grpo_lightning.openmp import prepare_openmp

if __name__ == "__main__":
    prepare_openmp()  # before the command line's imports load torch: idle OpenMP threads then sleep
    from grpo_lightning.cli import console_entry

    console_entry()
