"""PromptDataModule: unique math prompts with their gold answers, batched for GRPO rollouts."""

# No ``from __future__ import annotations`` here, and the datasets types are quoted: the command line
# is built from ``__init__``'s signature, and for postponed annotations jsonargparse runs this module's
# ``TYPE_CHECKING`` block, which would import the datasets library just to print ``--help``.

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from grpo_lightning.data.fingerprint import content_digest, questions_digest
from grpo_lightning.data.prompts import (
    DEFAULT_PROMPT_TEMPLATE,
    EpochRandomSampler,
    EpochSequentialSampler,
    LongPromptPolicy,
    PromptCollator,
    PromptFormatter,
    ResumableDataLoader,
    card_example,
    check_template,
    tokenize_prompts,
    warn_typed_newlines,
)
from grpo_lightning.data.sources import (
    DatasetSource,
    DataSourceError,
    InMemoryDataset,
    describe_source,
    load_source,
    normalize_columns,
)
from grpo_lightning.data.splits import SPLIT_NAMES, cap_rows, select_split, select_val_source_split
from grpo_lightning.data.synthetic_source import synthetic_splits
from grpo_lightning.hf.models import load_tokenizer
from grpo_lightning.lightning_compat import distributed_sampler_enabled

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

SYNTHETIC = "synthetic"


class PromptDataModule(LightningDataModule):
    """Math prompts for GRPO: each training batch holds ``batch_size`` distinct problems per device.

    A batch is ``{"prompt": list[str], "input_ids": LongTensor [P, L] (left-padded), "attention_mask":
    LongTensor [P, L], "question": list[str], "answer": list[str], ...}``: every other column of the
    data set comes along as a list, and the module hands those to the reward functions.

    Args:
        dataset: ``"synthetic"`` (generated offline; see ``synthetic``), a Hub name (``"openai/gsm8k"``),
            a local ``.json``/``.jsonl``/``.parquet``/``.csv`` file, a ``{split: file}`` mapping, a directory
            (``save_to_disk`` output or a local copy of a Hub repository), or a ``datasets.Dataset``/``DatasetDict``.
        config_name: the Hub configuration (GSM8K: ``"main"``).
        val_dataset: validate on another source (any kind ``dataset`` accepts), e.g. train on MATH and
            validate on ``"HuggingFaceH4/MATH-500"``. Its split is ``val_split``, or its only split, or
            ``"validation"``, or ``"test"``.
        val_config_name: the Hub configuration of ``val_dataset``.
        tokenizer: the policy's tokenizer, or its Hub id / path / ``"builtin:<name>"`` alias. None: taken
            from the attached module's ``tokenizer`` attribute at setup, so ``trainer.fit(module,
            datamodule=dm)`` just works.
        batch_size: prompts per training step per device (each is sampled G times by the module).
        val_batch_size: prompts per validation/test batch (default ``batch_size``).
        prompt_template: text with ``{question}`` (and optionally other ``{column}`` placeholders), for
            text questions. None (``--data.prompt_template null``, to clear one a config sets) is the
            default wording; conversational prompts are rendered as they are and take no template.
        system_prompt: optional system message.
        use_chat_template: None = use the tokenizer's chat template when it has one.
        chat_template_kwargs: extra ``apply_chat_template`` arguments (e.g. ``{"enable_thinking": False}``).
        max_prompt_length: longest prompt in tokens (None: no limit); longer ones follow ``long_prompts``.
        long_prompts: ``"drop"`` (with a warning giving the count) or ``"raise"``; never truncated.
        column_map: canonical name -> source column, e.g. ``{"question": "problem", "answer": "final"}``.
        require_answer: refuse a source without gold answers (set False for reward-model-only training).
        train_split: the training split's name.
        val_split: the validation split's name; None uses ``"validation"`` when the source has it, else
            holds out ``val_fraction`` of the training split.
        test_split: the test split's name (also what ``predict`` uses); None uses ``"test"`` when the
            source has it (and it is not the training split).
        val_fraction: share of the training split held out (seeded) when there is no validation split;
            0 turns validation off.
        max_train_samples: cap on the training split (a seeded random subset; None = all).
        max_val_samples: cap on the validation split (a seeded random subset; None = all).
        max_test_samples: cap on the test split (a seeded random subset; None = all).
        synthetic: for ``dataset="synthetic"``: ``train_size``, ``val_size``, ``test_size`` and the knobs of
            :func:`grpo_lightning.data.synthetic.generate_problems` (``max_steps``, ``max_operand``, ...).
        data_seed: seeds the synthetic problems, the held-out split, the caps and the shuffling.
        shuffle_dataset: visit the training rows in a new random order each epoch (TRL's name); False = in
            the data's own order (under DDP each process takes every world-size-th row).
        num_workers: DataLoader workers (0 is right for prompts: collation is trivial).
        load_kwargs: extra ``datasets.load_dataset`` arguments (``revision``, ``cache_dir``, ...).
    """

    def __init__(
        self,
        dataset: DatasetSource = SYNTHETIC,
        config_name: str | None = None,
        val_dataset: DatasetSource | None = None,
        val_config_name: str | None = None,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        prompt_template: str | None = DEFAULT_PROMPT_TEMPLATE,
        system_prompt: str | None = None,
        use_chat_template: bool | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        max_prompt_length: int | None = 512,
        long_prompts: LongPromptPolicy = "drop",
        column_map: dict[str, str] | None = None,
        require_answer: bool = True,
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str | None = None,
        val_fraction: float = 0.05,
        max_train_samples: int | None = None,
        max_val_samples: int | None = 500,
        max_test_samples: int | None = None,
        synthetic: dict[str, Any] | None = None,
        data_seed: int = 0,
        shuffle_dataset: bool = True,
        num_workers: int = 0,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # A cleared template is the default one: to checkpoints, resume checks and the model card too.
        prompt_template = DEFAULT_PROMPT_TEMPLATE if prompt_template is None else prompt_template
        check_template(prompt_template)
        warn_typed_newlines("prompt_template", prompt_template)
        warn_typed_newlines("system_prompt", system_prompt)
        if batch_size <= 0 or (val_batch_size is not None and val_batch_size <= 0):
            raise ValueError(
                f"batch_size and val_batch_size must be positive; got {batch_size}, {val_batch_size}."
            )
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}.")
        if synthetic and dataset != SYNTHETIC:
            raise ValueError(
                f"synthetic settings were given, but dataset={describe_source(dataset)}, not 'synthetic'. "
                "Drop them: --data.synthetic null on the command line (a config such as the quickstart's sets "
                "them), or synthetic: null in the YAML."
            )
        # Objects (a Dataset) stay out of the saved hyperparameters and checkpoints. The tokenizer
        # always does: it is the policy's, recorded by the module, and loggers refuse a key that
        # the module and the data module both log with different values.
        objects = [
            name
            for name, value in (("dataset", dataset), ("val_dataset", val_dataset))
            if isinstance(value, InMemoryDataset)
        ]
        self.save_hyperparameters(ignore=[*objects, "tokenizer"])
        # LightningCLI hands save_hyperparameters the parsed values (a null template), not these locals.
        self.hparams.prompt_template = prompt_template
        if val_dataset is not None and val_dataset == SYNTHETIC:
            raise ValueError(
                "val_dataset='synthetic' is not supported: the synthetic source has its own val_size."
            )
        self.dataset = dataset
        self.val_source = val_dataset
        self.tokenizer = tokenizer
        self.where = (
            "the synthetic problems" if dataset == SYNTHETIC else describe_source(dataset, config_name)
        )
        self._raw: DatasetDict | None = None
        self._raw_val: DatasetDict | None = None
        self._normalized: dict[str, Dataset | None] = {}
        self._splits: dict[str, Dataset | None] = {}
        self._longest: dict[str, int] = {}
        self._train_digests: tuple[str, str] | None = None  # (questions, content) of the training split

    # ------------------------------------------------------------------ Lightning hooks

    def prepare_data(self) -> None:
        """Download a Hub data set once per node before every rank reads it from the cache."""
        hp = self.hparams
        for source, config in ((self.dataset, hp.config_name), (self.val_source, hp.val_config_name)):
            if isinstance(source, str) and source != SYNTHETIC and not Path(source).expanduser().exists():
                load_source(source, config, hp.load_kwargs)

    def setup(self, stage: str | None = None) -> None:
        """Load, check and tokenize the splits this stage needs; errors about the data surface here."""
        self._resolve_tokenizer()
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}.get(
            stage or "", ()
        )
        if stage is None:
            needed = ("train", "val", "test")
        # Validation turned off (limit_val_batches=0): its split is never read, so it may even be empty.
        if stage == "fit" and self.trainer is not None and self.trainer.limit_val_batches == 0:
            needed = ("train",)
        for split in needed:
            self.get_split(split)

    def train_dataloader(self) -> DataLoader:
        data = self._require("train")
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if len(data) < self.hparams.batch_size * world_size:
            raise ValueError(
                f"The training split of {self.where} has {len(data)} prompts, fewer than batch_size="
                f"{self.hparams.batch_size} x {world_size} device(s): lower batch_size or add data."
            )
        return ResumableDataLoader(
            data,
            batch_size=self.hparams.batch_size,
            sampler=(
                EpochRandomSampler(data, seed=self.hparams.data_seed)
                if self.hparams.shuffle_dataset
                else EpochSequentialSampler(data)
            ),
            # Every step gets exactly batch_size prompts: the rollout's mini-batch split depends on it.
            drop_last=True,
            collate_fn=self.collator,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        data = self.get_split("val")
        return self._eval_loader(data) if data is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require("test"))

    def predict_dataloader(self) -> DataLoader:
        """The test split; else the validation split the source names (or ``val_dataset``); else every
        row of the training split: a file of prompts is predicted whole."""
        return self._eval_loader(self._require("predict"))

    def state_dict(self) -> dict[str, Any]:
        """What identifies the training batches, saved in checkpoints: ``{"train_batches": {"rows",
        "questions", "batch_size", "order_seed", "world_size"}, "train_content": digest}`` (see
        :mod:`grpo_lightning.data.fingerprint`). A resumed run compares it with its own
        (:class:`~grpo_lightning.run.interrupt.RunGuard`): the saved loader position only holds for the same
        batches. Empty before the training split is loaded."""
        data = self._splits.get("train")
        if data is None:
            return {}
        if self._train_digests is None:  # hashed once: every checkpoint asks again
            self._train_digests = (questions_digest(data), content_digest(data))
        batches = {
            "rows": len(data),
            "questions": self._train_digests[0],
            "batch_size": self.hparams.batch_size,
            "order_seed": self._order_seed(),
            "world_size": self.trainer.world_size if self.trainer is not None else 1,
        }
        return {"train_batches": batches, "train_content": self._train_digests[1]}

    def _order_seed(self) -> int | None:
        """The seed of the training order: ``data_seed`` (EpochRandomSampler), or under DDP the seed of
        the DistributedSampler Lightning puts in its place, which is the ``seed_everything`` seed; None
        when the rows are not shuffled (``shuffle_dataset=False``)."""
        if not self.hparams.shuffle_dataset:
            return None
        trainer = self.trainer
        distributed = trainer is not None and distributed_sampler_enabled(trainer)
        if distributed and trainer.world_size > 1:
            return int(os.environ.get("PL_GLOBAL_SEED", 0))
        return int(self.hparams.data_seed)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the data are rebuilt from the settings, and RunGuard compares the saved
        :meth:`state_dict` with the current one before the loader position is applied."""

    def card_example(self) -> tuple[str | None, list[dict[str, str]] | None]:
        """How an exported model card's loading snippet sends the first validation prompt:
        ``(prompt, None)``, ``(None, messages)`` for a chat template, or ``(None, None)`` (see
        :func:`~grpo_lightning.data.prompts.card_example`)."""
        val = self.val_dataset
        if val is None or not len(val) or "prompt" not in val.column_names:
            return None, None
        return card_example(self.tokenizer, self.hparams, val[0])

    def longest_prompt(self) -> int:
        """Tokens of the longest prompt among the splits loaded so far (0 when none is)."""
        for split, data in self._splits.items():
            if data is not None and split not in self._longest:  # each split is scanned once
                self._longest[split] = max(map(len, data["input_ids"]), default=0)
        return max(self._longest.values(), default=0)

    # ------------------------------------------------------------------ data

    @property
    def train_dataset(self) -> "Dataset | None":
        return self.get_split("train")

    @property
    def val_dataset(self) -> "Dataset | None":
        return self.get_split("val")

    @property
    def test_dataset(self) -> "Dataset | None":
        return self.get_split("test")

    @property
    def collator(self) -> PromptCollator:
        tokenizer = self._resolve_tokenizer()
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError(
                "The tokenizer has neither a pad nor an EOS token id to pad prompts with; give it a pad token."
            )
        return PromptCollator(pad_id)

    def get_split(self, split: str) -> "Dataset | None":
        """The tokenized ``"train"``, ``"val"`` or ``"test"`` split (None when the source has none)."""
        if split not in self._splits:
            data = self._normalized_split(split)
            self._splits[split] = None if data is None else self._tokenize(data, split)
        return self._splits[split]

    def _require(self, split: str) -> "Dataset":
        data = self.get_split(split)
        if data is None:
            splits = list(self._raw_splits())
            raise DataSourceError(
                f"{self.where} has no {SPLIT_NAMES[split]} split (splits: {splits}); set {split}_split=<name>."
            )
        return data

    def _raw_splits(self) -> "DatasetDict":
        if self._raw is None:
            if self.dataset == SYNTHETIC:
                self._raw = synthetic_splits(self.hparams.synthetic, self.hparams.data_seed)
            else:
                self._raw = load_source(self.dataset, self.hparams.config_name, self.hparams.load_kwargs)
        return self._raw

    def _describe(self, split: str) -> str:
        """Where a split's rows come from, for messages."""
        if split == "val" and self.val_source is not None:
            return f"{describe_source(self.val_source, self.hparams.val_config_name)}, validation rows"
        return f"{self.where}, {SPLIT_NAMES[split]} split"

    def _raw_val_splits(self) -> "DatasetDict":
        if self._raw_val is None:
            self._raw_val = load_source(
                self.val_source, self.hparams.val_config_name, self.hparams.load_kwargs
            )
        return self._raw_val

    def _select_split(self, split: str) -> "Dataset | None":
        """The raw rows of one split, before column checks and tokenization."""
        hp = self.hparams
        if split == "predict":  # nothing trains: no row is held out of training for it, none dropped
            rows = self._select_split("test")
            if rows is None and (self.val_source is not None or hp.val_split or "validation" in self._raw_splits()):
                rows = self._select_split("val")
            return rows if rows is not None else self._raw_splits()[hp.train_split]
        if split == "val" and self.val_source is not None:
            where = describe_source(self.val_source, hp.val_config_name)
            return select_val_source_split(
                self._raw_val_splits(), hp.val_split, where, hp.max_val_samples, hp.data_seed
            )
        return select_split(
            self._raw_splits(),
            split,
            hp,
            self.where,
            separate_val_source=self.val_source is not None,
            synthetic=self.dataset == SYNTHETIC,
        )

    def _normalized_split(self, split: str) -> "Dataset | None":
        """One split with checked, canonical columns; held-out splits without training questions."""
        if split not in self._normalized:
            raw = self._select_split(split)
            where = self._describe(split)
            if raw is not None and len(raw) == 0:
                raise DataSourceError(f"{where} is empty.")
            data = (
                None
                if raw is None
                else normalize_columns(raw, where, self.hparams.column_map, self.hparams.require_answer)
            )
            if data is not None and split not in ("train", "predict"):
                data = self._drop_seen_in_training(data, where)
            self._normalized[split] = data
        return self._normalized[split]

    def _drop_seen_in_training(self, data: "Dataset", where: str) -> "Dataset":
        """Held-out prompts must not appear in training: drop questions the training split also has."""
        train = self._normalized_split("train")
        seen = set(train["question"]) if train is not None else set()
        keep = [i for i, question in enumerate(data["question"]) if question not in seen]
        if len(keep) < len(data):
            rank_zero_warn(
                f"{where}: dropped {len(data) - len(keep)} questions that also appear in training."
            )
            data = data.select(keep, keep_in_memory=True)
        return data

    def _tokenize(self, data: "Dataset", split: str) -> "Dataset":
        where = self._describe(split)
        if split == "train":
            data = cap_rows(data, self.hparams.max_train_samples, self.hparams.data_seed)
        formatter = PromptFormatter(
            self._resolve_tokenizer(),
            self.hparams.prompt_template,
            self.hparams.system_prompt,
            self.hparams.use_chat_template,
            self.hparams.chat_template_kwargs,
        )
        data = tokenize_prompts(
            data, formatter, self.hparams.max_prompt_length, self.hparams.long_prompts, where
        )
        if len(data) == 0:
            raise DataSourceError(f"{where} has no usable prompts left (see the warnings above).")
        rank_zero_info(f"{where}: {len(data)} prompts.")
        return data

    def _resolve_tokenizer(self) -> PreTrainedTokenizerBase:
        if isinstance(self.tokenizer, str):
            # The module's own loader: the same alias resolution ("builtin:tiny-math") and padding setup.
            self.tokenizer = load_tokenizer(self.tokenizer, self.tokenizer)
        if self.tokenizer is None and self.trainer is not None:
            module = self.trainer.lightning_module
            self.tokenizer = getattr(module, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError(
                "PromptDataModule needs the policy's tokenizer: pass tokenizer=<tokenizer or name>, or attach it "
                "to a LightningModule that has a `tokenizer` attribute (trainer.fit(module, datamodule=dm))."
            )
        return self.tokenizer

    def _eval_loader(self, data: "Dataset") -> DataLoader:
        return DataLoader(
            data,
            batch_size=self.hparams.val_batch_size or self.hparams.batch_size,
            shuffle=False,
            collate_fn=self.collator,
            num_workers=self.hparams.num_workers,
        )
