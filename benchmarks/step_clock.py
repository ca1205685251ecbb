"""A Lightning callback for benchmarks run through the command line: after every training step it
appends the wall-clock time and this process's CPU time (all threads) to the JSON-lines file named by
``BENCH_CLOCK_FILE``. Add it with ``--trainer.callbacks+=step_clock.StepClock`` (``benchmarks/`` on
``PYTHONPATH``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch
from lightning.pytorch import Callback


class StepClock(Callback):
    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        with open(os.environ["BENCH_CLOCK_FILE"], "a") as f:
            f.write(
                json.dumps(
                    {
                        "wall": time.perf_counter(),
                        "cpu": time.process_time(),
                        "threads": torch.get_num_threads(),
                    }
                )
                + "\n"
            )
