"""Is this file a checkpoint the run can resume from? One clear error when it is not.

``--ckpt_path`` takes a Lightning checkpoint written by a grpo-lightning run. Anything else handed
in gets a message naming the file, what it is, and what to do instead: a missing path, a folder (a
run folder, a Hugging Face model folder), an empty or truncated file, a model's ``.safetensors``
weights, a zip archive that ``torch.save`` did not write, a plain ``state_dict``, a checkpoint of
another LightningModule, or one holding objects PyTorch only unpickles with ``weights_only=False``.
A damaged file also names the newest checkpoint beside it that really loads (every record read and
checked against its CRC, the contents unpickled and checked as for the file given).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CKPT_SUFFIX = ".ckpt"
#: Every weight of a GRPOModule is named under its policy (the reference model's are rebuilt).
MODULE_PREFIX = "policy."
#: The index file of a sharded (FSDP2 / distributed checkpoint) folder, which its strategy reads.
SHARDED_INDEX = ".metadata"
#: How far down a folder given as a checkpoint is searched: a run's group folder holds
#: ``version_N/checkpoints/*.ckpt``.
FOLDER_DEPTH = 3
#: How to load a checkpoint that holds other objects, as the command line and ``trainer.fit`` take it.
UNSAFE_FLAG = "--weights_only false"
_READ_CHUNK = 1 << 20


class CheckpointFileError(RuntimeError):
    """A file given as a checkpoint cannot be resumed from; the message says why and what to use."""


@dataclass(frozen=True)
class Diagnosis:
    """What reading a checkpoint found: ``problem`` (None: usable) and, for an intact file that holds
    objects outside PyTorch's weights-only allow-list, ``unsafe_global`` (their first class name)."""

    problem: str | None = None
    unsafe_global: str | None = None


def is_local_path(path: str | os.PathLike[str]) -> bool:
    """True for a plain file-system path (no ``s3://``-style URL)."""
    return "://" not in str(path) or str(path).startswith("file://")


def local_path(path: str | os.PathLike[str]) -> Path:
    """``path`` without a ``file://`` prefix."""
    text = str(path)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


# ---- what kind of file is it -------------------------------------------------------------------------


def _file_problem(path: Path) -> str | None:
    """Problems visible from the file's first bytes and zip directory (cheap: nothing is unpickled)."""
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return _folder_problem(path)
    with path.open("rb") as f:
        head = f.read(16)
    if not head:
        return "is empty (0 bytes): its write was cut off"
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return (
            "is a safetensors file of model weights, not a training checkpoint (which also holds the optimizer, "
            "the step and the data position). To start a new run from these weights, pass the folder that "
            "holds it and its config.json as --model.model, without --ckpt_path"
        )
    if head[:1] == b"\x80":  # a pickle: torch.save's legacy (non-zip) format, read by torch.load
        return None
    if head[:2] != b"PK":
        return f"is not a checkpoint: not a torch.save archive (it starts with {head[:8]!r})"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "is truncated: its zip directory, written last, is missing, so its write was cut off"
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return (
            f"is a zip archive, but not a checkpoint: torch.save archives hold a data.pkl record, and this one "
            f"holds {names[:5]}"
        )
    return None


def _folder_problem(path: Path) -> str | None:
    if (path / SHARDED_INDEX).is_file():
        return None  # a sharded checkpoint: the strategy that wrote it reads it
    text = "is a folder, not a checkpoint file"
    if (path / "config.json").is_file():
        text += (
            f". It holds a Hugging Face model: to start a new run from those weights, pass --model.model {path} "
            "(without --ckpt_path)"
        )
    found = newest_loadable(path, depth=FOLDER_DEPTH)
    if found is not None:
        text += f". The newest checkpoint in it is {found[0]}: resume with {_resume_args(*found)}"
    return text


def _records_problem(path: Path) -> str | None:
    """Read every record of the archive to its end, which checks each against its CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                try:
                    with archive.open(info) as record:
                        while record.read(_READ_CHUNK):
                            pass
                except zipfile.BadZipFile:
                    if info.CRC != 0:  # 0: written without checksums (torch's crc32 option off)
                        return f"is damaged: its record {info.filename!r} fails its CRC-32 check"
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        return f"is damaged: its records cannot be read ({type(err).__name__}: {err})"
    return None


def content_problem(
    checkpoint: Any, path: Path | None = None, module_keys: Collection[str] | None = None
) -> str | None:
    """Why a loaded object (read from ``path``) is not a Lightning checkpoint of the module to resume
    (None when it is one). That module's weights are named ``module_keys``; without them, a
    GRPOModule's (under :data:`MODULE_PREFIX`)."""
    if not isinstance(checkpoint, Mapping):
        return f"holds a {type(checkpoint).__name__}, not a Lightning checkpoint"
    if "pytorch-lightning_version" not in checkpoint or "state_dict" not in checkpoint:
        tensors = [k for k, v in checkpoint.items() if isinstance(v, torch.Tensor)]
        what = (
            f"model weights only (a state dict of {len(tensors)} tensor(s), e.g. {tensors[:2]})"
            if tensors
            else f"a dictionary with the keys {list(checkpoint)[:5]}"
        )
        model_folder = path is not None and (path.parent / "config.json").is_file()
        use = (
            f"to start a new run from these weights, pass the model folder that holds them as --model.model "
            f"{path.parent}"
            if model_folder
            else "to start a new run from these weights, load them into the model, save it with "
            "save_pretrained(<folder>) and pass --model.model <folder>"
        )
        return (
            f"holds {what}, not a Lightning checkpoint: it has no step, optimizer or data position to resume. "
            f"--ckpt_path takes a checkpoint a run wrote (<run folder>/checkpoints/*.ckpt); {use}"
        )
    names = list(checkpoint["state_dict"]) if isinstance(checkpoint["state_dict"], Mapping) else []
    if not names:
        return None
    if module_keys is not None:
        # Compared by submodule (``policy`` of ``policy.model.norm.weight``): another configuration of
        # the same module (LoRA or not) shares them, and its loading names the differing weights.
        own = {key.split(".")[0] for key in module_keys}
        if own and own.isdisjoint(name.split(".")[0] for name in names):
            return (
                f"was written by another LightningModule: its weights (e.g. {names[:3]}) belong to submodules "
                f"this module does not have (it has {sorted(own)}). Give a checkpoint that this module's runs "
                "wrote"
            )
    elif not any(name.startswith(MODULE_PREFIX) for name in names):
        return (
            f"was written by another LightningModule: its weights are named e.g. {names[:3]}, and a GRPOModule's "
            f"start with {MODULE_PREFIX!r}. Give a checkpoint written by a grpo-lightning run"
        )
    return None


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _unsafe_global(err: BaseException) -> str | None:
    """The class named by torch's weights-only refusal (None for other unpickling errors)."""
    text = str(err)
    if "Weights only load failed" not in text:
        return None
    found = _GLOBAL.search(text)
    return found.group(1) if found else "an object outside the allow-list"


def diagnose(path: str | os.PathLike[str], *, deep: bool = False) -> Diagnosis:
    """Everything wrong with ``path`` as a checkpoint to resume from.

    The file's kind, then its contents unpickled weights-only (tensors memory-mapped, not read); with
    ``deep`` also every record of the archive read and CRC-checked first. A file whose only fault is
    holding objects outside the weights-only allow-list is reported in ``unsafe_global``.
    """
    path = local_path(path)
    problem = _file_problem(path)
    if problem is not None or path.is_dir():
        return Diagnosis(problem)
    if deep and (problem := _records_problem(path)) is not None:
        return Diagnosis(problem)
    zipped = zipfile.is_zipfile(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_global(err)
        if unsafe is not None:
            return Diagnosis(unsafe_global=unsafe)
        return Diagnosis(f"is damaged: its contents cannot be unpickled ({err})")
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        return Diagnosis(f"is damaged: it cannot be loaded ({type(err).__name__}: {err})")
    return Diagnosis(content_problem(checkpoint, path))


# ---- what to use instead ------------------------------------------------------------------------------


def _resume_args(path: Path, diagnosis: Diagnosis) -> str:
    return f"--ckpt_path {path}" + (f" {UNSAFE_FLAG}" if diagnosis.unsafe_global else "")


def newest_loadable(
    folder: str | os.PathLike[str],
    exclude: str | os.PathLike[str] | None = None,
    *,
    depth: int = 0,
) -> tuple[Path, Diagnosis] | None:
    """The most recently written ``*.ckpt`` file in ``folder`` (or up to ``depth`` subfolders down)
    that passes a deep :func:`diagnose`, other than ``exclude``; None if none does."""
    folder = Path(folder)
    skip = Path(exclude).resolve() if exclude is not None else None
    if not folder.is_dir():
        return None
    found = [p for level in range(depth + 1) for p in folder.glob("*/" * level + f"*{CKPT_SUFFIX}")]
    candidates = [p for p in found if p.is_file() and p.resolve() != skip]
    for candidate in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        diagnosis = diagnose(candidate, deep=True)
        if diagnosis.problem is None:
            return candidate, diagnosis
    return None


def last_good_checkpoint(
    folder: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None
) -> Path | None:
    """The newest checkpoint in ``folder`` that really loads (see :func:`newest_loadable`)."""
    found = newest_loadable(folder, exclude)
    return found[0] if found is not None else None


def checkpoint_error(path: str | os.PathLike[str], problem: str) -> CheckpointFileError:
    """The error for a checkpoint that cannot be used: the problem, then a checkpoint to use instead."""
    path = local_path(path)
    if path.is_dir() or "--model.model" in problem:  # the message already says what to use
        return CheckpointFileError(f"Cannot resume from {path}: it {problem}.")
    found = newest_loadable(path.parent, exclude=path)
    hint = (
        f"The newest checkpoint in that folder that loads is {found[0]}: resume with {_resume_args(*found)}."
        if found is not None
        else "No checkpoint that loads was found next to it: start the run again without --ckpt_path."
    )
    return CheckpointFileError(f"Cannot resume from {path}: it {problem}. {hint}")


def unsafe_error(path: str | os.PathLike[str], name: str) -> CheckpointFileError:
    """The error for an intact checkpoint that holds objects PyTorch only loads with weights_only=False."""
    return CheckpointFileError(
        f"The checkpoint {local_path(path)} holds objects that PyTorch does not unpickle by default "
        f"(weights_only=True): {name}. The file is intact. If you trust it, add {UNSAFE_FLAG} to the command "
        "(trainer.fit(..., weights_only=False) in Python), and run where that class can be imported."
    )


# ---- the checks the run makes -------------------------------------------------------------------------


def check_checkpoint_file(path: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointFileError` when the local ``path`` cannot be resumed from.

    Made before the model is built (the command line calls it as soon as it has parsed
    ``--ckpt_path``). A checkpoint that needs ``weights_only=False`` passes: whether the run loads it
    that way is decided by the load itself (:func:`read_checkpoint`).
    """
    if not is_local_path(path):
        return
    problem = diagnose(path).problem
    if problem is not None:
        raise checkpoint_error(path, problem)


def read_checkpoint(
    path: str | os.PathLike[str],
    load: Callable[[], Any] | None = None,
    module_keys: Collection[str] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint with ``load`` (default: a weights-only ``torch.load`` of ``path`` on the CPU)
    and check that it is one to resume from (of the module whose weights are named ``module_keys``,
    default a GRPOModule); every failure becomes one :class:`CheckpointFileError`."""
    if not is_local_path(path):
        return load() if load is not None else torch.load(path, map_location="cpu", weights_only=True)
    problem = _file_problem(local_path(path))
    if problem is None and local_path(path).is_dir():  # sharded, but this strategy reads single files
        problem = (
            "is a sharded checkpoint folder, which only the strategy that wrote it reads: resume with the "
            "same --trainer.strategy (the FSDP2 preset) and number of devices"
        )
    if problem is not None:
        raise checkpoint_error(path, problem)
    if load is None:

        def load() -> Any:
            return torch.load(local_path(path), map_location="cpu", weights_only=True)

    try:
        checkpoint = load()
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_global(err)
        if unsafe is not None:
            raise unsafe_error(path, unsafe) from err
        raise checkpoint_error(path, f"is damaged: its contents cannot be unpickled ({err})") from err
    except (AttributeError, ModuleNotFoundError) as err:  # weights_only=False and a class not importable
        raise CheckpointFileError(
            f"The checkpoint {local_path(path)} holds an object whose class cannot be imported here "
            f"({type(err).__name__}: {err}): run with the code that wrote it importable."
        ) from err
    except (EOFError, zipfile.BadZipFile) as err:
        raise checkpoint_error(path, f"is damaged: it cannot be loaded ({type(err).__name__})") from err
    except RuntimeError as err:
        if "PytorchStreamReader" in str(err) or "zip archive" in str(err):
            raise checkpoint_error(path, "is damaged: its archive cannot be read") from err
        raise
    problem = content_problem(checkpoint, local_path(path), module_keys)
    if problem is not None:
        raise checkpoint_error(path, problem)
    return checkpoint
