"""Process isolation: functions called in child processes with a hard time limit per call, crash
containment and a lean start (see :mod:`grpo_lightning.isolation.pool`). Used by reward workers
(``reward_workers``) and by ``math_accuracy``'s checker."""
