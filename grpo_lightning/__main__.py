"""``python -m grpo_lightning fit --config ...``; :func:`main` is also the entry point the
``grpo-lightning`` command should use.

Importing this module does not load torch, so :func:`~grpo_lightning.openmp.prepare_openmp` can set
the OpenMP wait policy before the runtime reads it (once, when torch loads it).
"""

from grpo_lightning.openmp import prepare_openmp


def main() -> None:
    """Set the OpenMP wait policy, then run the command line (returns None: exit status 0)."""
    prepare_openmp()
    from grpo_lightning.cli import console_entry  # loads torch: imported here, after prepare_openmp

    console_entry()


if __name__ == "__main__":
    main()
