"""The prompt batch the data hands the module: the keys that hold the prompt itself.

A batch is ``{"prompt": list[str], "input_ids": LongTensor [P, L], "attention_mask": LongTensor [P, L],
<column>: list, ...}``. Every key other than :data:`PROMPT_KEYS` is a column of the data set, which the
module repeats per completion and passes to the reward functions; so a data set column may not take
one of these names.
"""

PROMPT_KEYS = ("prompt", "input_ids", "attention_mask")
