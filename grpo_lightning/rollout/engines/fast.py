"""A lean sampling engine: a hand-written decoding loop instead of ``generate``, plus sampling log-probs.

The engine of ``rollout_engine: auto`` whenever it implements every sampling setting. Same protocol
and same :class:`~grpo_lightning.rollout.engine.Rollout` as :class:`~grpo_lightning.rollout.engine.HFGenerateEngine`
(the masks come from the same :func:`~grpo_lightning.rollout.engine.completion_masks`), with three
differences that cost nothing in correctness:

- each unique prompt is prefilled once and its keys/values shared by its ``G`` samples;
- Llama-family models decode through :class:`~grpo_lightning.rollout.engines.decoders.LeanDecoder`
  (preallocated key/value buffers, no per-step mask building), on CUDA with each step replayed as a
  CUDA graph (:mod:`~grpo_lightning.rollout.engines.graphed`); others through their own forward. Before the
  first graphed step of a new shape, one step's replay is checked against the same step run eagerly;
  a capture that fails or disagrees warns once and the engine decodes eagerly from then on;
- the log-prob of every sampled token under the sampling policy is returned
  (:attr:`Rollout.sampling_logp`), so the update skips the old-policy forward pass.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from grpo_lightning._checks import check_choice
from grpo_lightning.hf.causal_lm import decodes_in_lockstep
from grpo_lightning.hf.models import eval_mode
from grpo_lightning.rollout.engine import Rollout, RolloutRequest, completion_masks, left_align
from grpo_lightning.rollout.engines.decoders import CacheDecoder, LeanDecoder, lean_unsupported_reason
from grpo_lightning.rollout.engines.graphed import GraphCheck, StaticStepDecoder, graph_unsupported_reason
from grpo_lightning.rollout.engines.sampling import TokenSampler
from grpo_lightning.rollout.seeds import seeded

Decoder = Literal["auto", "lean", "graph", "static", "cache"]
DECODERS: tuple[str, ...] = ("auto", "lean", "graph", "static", "cache")


class FastRolloutEngine:
    """Sample ``G`` completions per prompt with a lean decoding loop (CPU or GPU, any dtype).

    Args:
        decoder: ``"auto"``: the lean decoder when the model supports it, its steps replayed as CUDA
            graphs when the rollout runs on CUDA outside autocast (each new recording checked against
            the eager step first; on a failed capture or a difference, one warning and the lean
            decoder from then on), and the model's own forward for other models; ``"lean"`` insists on the lean decoder without graphs, ``"graph"`` on CUDA
            graphs (an error says why either cannot run); ``"static"`` runs the steps a graph would
            record, eagerly (for checking them on any device); ``"cache"`` always uses the model's
            forward with a ``DynamicCache``.
        check_every: on an accelerator, look for "every row has ended" only every this many steps: each
            look is a host-device sync. The extra steps produce padding that is trimmed. 1 on CPU.
        span_block: graph decoding attends to the current column rounded up to a multiple of this
            (one graph per multiple; see :class:`~grpo_lightning.rollout.engines.graphed.StaticStepDecoder`).
        drop_ended_rows: stop computing rows that ended once they are half of the decoder's rows
            (not with graphs, whose shapes are fixed). Same distribution; the random draws after the
            first drop differ from a run without it.
    """

    def __init__(
        self,
        decoder: Decoder = "auto",
        check_every: int = 16,
        span_block: int = 64,
        drop_ended_rows: bool = True,
    ) -> None:
        check_choice("decoder", decoder, DECODERS)
        if check_every < 1:
            raise ValueError(f"check_every={check_every} must be >= 1.")
        if span_block < 1:
            raise ValueError(f"span_block={span_block} must be >= 1.")
        self.decoder = decoder
        self.check_every = check_every
        self.span_block = span_block
        self.drop_ended_rows = drop_ended_rows
        # Kept between rollouts: its buffers and captured graphs serve every rollout of the same shape
        # (on the 0.5B model at 128 x 512 tokens, about 1 GB of keys/values); release() frees them.
        self._static: StaticStepDecoder | None = None
        # Devices where a graph failed to record or disagreed with the eager step: no graphs there again.
        self._no_graphs: set[torch.device] = set()

    def _decoder(
        self, model: nn.Module, total_length: int, device: torch.device
    ) -> LeanDecoder | CacheDecoder:
        if self.decoder == "cache":
            return CacheDecoder(model)
        reason = lean_unsupported_reason(model, total_length)
        if reason is not None:
            if self.decoder != "auto":
                raise ValueError(
                    f"decoder={self.decoder!r} cannot run this model: {reason}. Use decoder='auto' or 'cache'."
                )
            return CacheDecoder(model)
        if self.decoder == "lean":
            return LeanDecoder(model)
        if self.decoder == "static":
            return self._static_decoder(model, graphs=False)
        if self.decoder == "auto" and device in self._no_graphs:
            return LeanDecoder(model)
        graph_reason = graph_unsupported_reason(device, model)
        if graph_reason is None:
            return self._static_decoder(model, graphs=True)
        if self.decoder == "graph":
            raise ValueError(f"decoder='graph' cannot run: {graph_reason}. Use decoder='auto' or 'lean'.")
        return LeanDecoder(model)

    def release(self) -> None:
        """Free the key/value buffers and CUDA graphs kept for the next rollout (the next one rebuilds them)."""
        self._static = None

    def _static_decoder(self, model: nn.Module, graphs: bool) -> StaticStepDecoder:
        static = self._static
        if static is None or not static.serves(model) or static.requested_graphs != graphs:
            # A failed capture under "auto" warns and falls back to eager steps; "graph" raises.
            static = StaticStepDecoder(
                model, graphs=graphs, span_block=self.span_block, fallback=self.decoder == "auto"
            )
            self._static = static
        return static

    def _prefill(
        self,
        decoder: LeanDecoder | CacheDecoder,
        model: nn.Module,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        repeats: int,
        max_new: int,
    ) -> tuple[LeanDecoder | CacheDecoder, Tensor]:
        """``decoder.prefill``; for graphs not checked yet, check the first step's recording first.

        The check feeds the prefill's argmax tokens (no random draw), so a rollout that falls back to
        the lean decoder draws exactly what a rollout with ``decoder="lean"`` draws.
        """
        logits = decoder.prefill(prompt_ids, prompt_mask, repeats, max_new)
        if not isinstance(decoder, StaticStepDecoder) or not decoder.graphs or decoder.checked:
            return decoder, logits
        try:
            check: GraphCheck | RuntimeError = decoder.check_first_step(logits.argmax(-1))
        except RuntimeError as err:  # what CUDA raises for an operation it cannot record
            check = err
        if isinstance(check, GraphCheck):
            rank_zero_info(check.describe())
            if check.passed:
                return decoder, logits
        problem = f"failed ({check})" if isinstance(check, RuntimeError) else f"is wrong: {check.describe()}"
        if self.decoder == "graph":
            raise RuntimeError(
                f"decoder='graph': recording the decoding step as a CUDA graph {problem}. "
                "Use decoder='auto' (decodes without graphs then) or 'lean'."
            ) from (check if isinstance(check, RuntimeError) else None)
        warnings.warn(
            f"Recording the decoding step as a CUDA graph {problem}; decoding without graphs on "
            f"{prompt_ids.device} from now on. Pass FastRolloutEngine(decoder='lean') to skip the attempt.",
            RuntimeWarning,
            stacklevel=4,
        )
        self._give_up_graphs(prompt_ids.device)
        lean = LeanDecoder(model)
        return lean, lean.prefill(prompt_ids, prompt_mask, repeats, max_new)

    def _give_up_graphs(self, device: torch.device) -> None:
        """Decode eagerly on ``device`` from now on, and free the graphs' buffers."""
        self._no_graphs.add(device)
        self._static = None

    @torch.no_grad()
    def generate(self, model: nn.Module, request: RolloutRequest) -> Rollout:
        """Sample ``request.num_generations`` completions for each prompt of ``request.prompt_ids: [P, L]``."""
        sampling, eos_token_ids, pad_token_id = request.sampling, request.eos_token_ids, request.pad_token_id
        num_generations = request.num_generations
        config = sampling.generation_config(eos_token_ids, pad_token_id)
        sampler = TokenSampler.from_generation_config(config, eos_token_ids)
        max_new = int(config.max_new_tokens)
        prompt_ids, prompt_mask = left_align(request.prompt_ids, request.prompt_mask, pad_token_id)
        device = prompt_ids.device
        eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=device)
        check_every = 1 if device.type == "cpu" else self.check_every
        # Greedy decoding has no sampling temperature; its log-probs use the loss's (SamplingConfig's) one.
        logp_temperature = sampling.temperature
        # Sharded (FSDP) weights are gathered by collectives inside every forward: all ranks must take
        # the same number of steps, so "every row has ended" is agreed over ranks, as generate's
        # synced_gpus does.
        synced = decodes_in_lockstep(model)
        decoder = self._decoder(model, prompt_ids.shape[1] + max_new, device)
        tokens: list[Tensor] = []
        logps: list[Tensor] = []
        with eval_mode(model), seeded(request.seed, device):
            decoder, logits = self._prefill(decoder, model, prompt_ids, prompt_mask, num_generations, max_new)
            done = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
            # Ended rows are dropped from the decoder once they are half of its rows (not across ranks:
            # sharded ranks must keep identical shapes; not for graphs, whose shapes are fixed).
            live = LiveRows(len(done), compact=self.drop_ended_rows and decoder.compactable and not synced)
            for step in range(max_new):
                token, logp = live.expand(*sampler(logits, step, logp_temperature), pad_token_id)
                # Rows that already ended keep emitting padding, as generate does.
                token = token.masked_fill(done, pad_token_id)
                tokens.append(token)
                logps.append(logp)
                done = done | torch.isin(token, eos)
                if step + 1 == max_new:
                    break
                if (step + 1) % check_every == 0:
                    if synced:
                        if _all_done(done, synced):
                            break
                    elif live.update(done, decoder):  # one host sync: how many rows are left
                        break
                logits = decoder.step(live.select(token))
        if isinstance(decoder, StaticStepDecoder) and decoder.requested_graphs and not decoder.graphs:
            self._give_up_graphs(device)  # a later span failed to record (and warned): eager from now on
        completion_ids = torch.stack(tokens, dim=1)
        mask, truncated, lengths = completion_masks(
            completion_ids, eos_token_ids, max_new, request.mask_truncated
        )
        # Drop all-padding steps past the last EOS (kept when synced: every rank then has the same width).
        width = completion_ids.shape[1] if synced or not lengths.numel() else int(lengths.max())
        completion_ids, mask = completion_ids[:, :width], mask[:, :width]
        sampling_logp = torch.stack(logps, dim=1)[:, :width] * mask
        return Rollout(
            prompt_ids.repeat_interleave(num_generations, dim=0),
            prompt_mask.repeat_interleave(num_generations, dim=0),
            completion_ids,
            mask,
            truncated,
            lengths,
            sampling_logp=sampling_logp,
        )


class LiveRows:
    """Which of the rollout's ``N`` rows the decoder still computes, in order: all of them at first.

    When at most half of the decoder's rows are still going, the ended ones are dropped
    (``decoder.keep``): a batch whose completions end at different lengths then costs about the
    tokens it really generates, not ``N x`` the longest. Every result is still reported for all N rows.
    """

    def __init__(self, n: int, compact: bool) -> None:
        self.n = n
        self.compact = compact
        self.rows: Tensor | None = None  # [n'] rollout rows of the decoder's rows; None: all, in order

    def expand(self, token: Tensor, logp: Tensor, pad_token_id: int) -> tuple[Tensor, Tensor]:
        """The decoder rows' ``token, logp: [n']`` as ``[N]`` (padding and 0 on dropped rows)."""
        if self.rows is None:
            return token, logp
        full = token.new_full((self.n,), pad_token_id).index_copy_(0, self.rows, token)
        return full, logp.new_zeros(self.n).index_copy_(0, self.rows, logp)

    def select(self, token: Tensor) -> Tensor:
        """``token: [N]`` -> the decoder rows' ``[n']``."""
        return token if self.rows is None else token.index_select(0, self.rows)

    def update(self, done: Tensor, decoder: Any) -> bool:
        """Whether every row has ended (``done: [N]`` bool); if not, drop ended rows when they are most."""
        going = (~done).nonzero().squeeze(1)  # [n_going] ascending
        current = self.n if self.rows is None else len(self.rows)
        if len(going) == 0:
            return True
        if self.compact and len(going) <= current // 2:
            # Positions of the going rows among the decoder's rows (both ascending).
            positions = going if self.rows is None else torch.searchsorted(self.rows, going)
            decoder.keep(positions)
            self.rows = going
        return False


def _all_done(done: Tensor, synced: bool) -> bool:
    """Every row has ended, on this rank or (``synced``) on every rank: one host sync, plus an all-reduce."""
    if not synced:
        return bool(done.all())
    pending = (~done).any().to(torch.int32).reshape(1)
    torch.distributed.all_reduce(pending, op=torch.distributed.ReduceOp.MAX)
    return not bool(pending.item())
