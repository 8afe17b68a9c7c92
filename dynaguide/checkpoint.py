"""Checkpoints as safetensors + JSON — never pickle.

A checkpoint is a directory::

    config.json            {"format": "dynaguide-checkpoint/1", "kind": ..., "config": {...},
                            "step": int | null, "extra": {...}, "optimizer": {param_groups...} | null}
    model.safetensors      the model's state_dict (weights + buffers such as normaliser stats)
    ema.safetensors        EMA weights (optional; what inference should use when present)
    optimizer.safetensors  optimizer state tensors (optional; for resuming training)

``kind`` names a registered (config dataclass, model class) pair; the built-in kinds are
``diffusion_policy`` and ``latent_dynamics``, others are added with :func:`register_checkpoint_kind` (BlockTouch's
``outcome_classifier`` registers itself when ``dynaguide_experiments.blocktouch.classifier`` is imported).
Loading a pickle-based file (``.pt/.pth/.pkl/.ckpt/.bin``) is refused with a ``ValueError`` — pickle can
execute arbitrary code.

Loading validates before allocating: the config dataclass bounds every size (``check_ranges``), the model is
first built on the ``meta`` device (no memory) and its parameter count is capped (:data:`MAX_PARAMETERS`), and
the safetensors header must declare exactly that model's tensors (names, shapes, dtypes) — so a 1 KB
``config.json`` asking for a 12 TB model is refused in one line.  Loaded weights must be finite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dynaguide.config import from_dict, to_dict
from dynaguide.inputs import InputError, check_finite_tensors, check_state_dict_matches

FORMAT = "dynaguide-checkpoint/1"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
CONFIG_FILE = "config.json"

MAX_PARAMETERS = 2_000_000_000
"""Most parameters + buffers (elements) a model built from a config file may have (8 GB of float32)."""

_KINDS: dict[str, tuple[Callable[[], type], Callable[[], type]]] = {}


def register_checkpoint_kind(kind: str, config_cls: type | Callable[[], type],
                             model_cls: type | Callable[[], type]) -> None:
    """Register ``kind`` → (config dataclass, model class taking the config).  Either may be a zero-arg
    factory returning the class (lazy import)."""
    as_factory = lambda c: c if not isinstance(c, type) else (lambda: c)  # noqa: E731
    _KINDS[kind] = (as_factory(config_cls), as_factory(model_cls))


def _builtin(module: str, name: str) -> Callable[[], type]:
    def factory() -> type:
        import importlib

        return getattr(importlib.import_module(module), name)

    return factory


register_checkpoint_kind("diffusion_policy", _builtin("dynaguide.policy", "DiffusionPolicyConfig"),
                         _builtin("dynaguide.policy", "DiffusionPolicy"))
register_checkpoint_kind("latent_dynamics", _builtin("dynaguide.dynamics", "LatentDynamicsConfig"),
                         _builtin("dynaguide.dynamics", "LatentDynamicsModel"))


def _kind_of(model: nn.Module) -> str:
    kind = getattr(model, "checkpoint_kind", None)
    if not kind or kind not in _KINDS:
        raise ValueError(f"{type(model).__name__} has no registered checkpoint kind (set `checkpoint_kind` and "
                         "call register_checkpoint_kind)")
    return kind


def _state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                          meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    config: Any,
    extra: dict | None = None,
    *,
    ema_model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    step: int | None = None,
) -> Path:
    """Write ``model`` (and optionally EMA weights, optimizer state, step) to ``directory`` atomically.

    ``config`` is the dataclass the model was built from; ``extra`` must be JSON-serialisable.
    The directory is written next to its final place and then renamed, so a crash never leaves a
    half-written checkpoint under the final name.
    """
    if not dataclasses.is_dataclass(config):
        raise ValueError(f"config must be a dataclass instance, got {type(config).__name__}")
    kind = _kind_of(model)
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"format": FORMAT, "kind": kind, "config": to_dict(config), "step": step,
                            "extra": extra or {}, "optimizer": None}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file(_state_tensors(model), str(tmp / MODEL_FILE), metadata={"format": FORMAT, "kind": kind})
        if ema_model is not None:
            save_file(_state_tensors(ema_model), str(tmp / EMA_FILE), metadata={"format": FORMAT, "kind": kind})
        if optimizer is not None:
            tensors, opt_meta = _optimizer_to_files(optimizer)
            save_file(tensors, str(tmp / OPTIMIZER_FILE), metadata={"format": FORMAT})
            meta["optimizer"] = opt_meta
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        old = None
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _refuse_pickle(path: Path) -> None:
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ValueError(f"refusing to load {path}: pickle-based checkpoints ({', '.join(PICKLE_SUFFIXES)}) "
                             "can run arbitrary code; convert it to a dynaguide safetensors checkpoint directory")
        raise ValueError(f"{path} is a file; a dynaguide checkpoint is a directory with {CONFIG_FILE} and {MODEL_FILE}")
    if not path.is_dir():
        raise ValueError(f"checkpoint directory {path} does not exist")
    if not (path / MODEL_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(f"refusing to load pickle file(s) {pickles} in {path}: only safetensors checkpoints are "
                             "accepted")
        raise ValueError(f"{path} is not a dynaguide checkpoint: needs {CONFIG_FILE} and {MODEL_FILE}")


def read_checkpoint_meta(directory: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint (kind, config, step, extra)."""
    path = Path(directory)
    _refuse_pickle(path)
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path / CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise InputError(f"{path / CONFIG_FILE}: expected an object with a 'config' object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {meta.get('format')!r} (expected {FORMAT!r})")
    if meta.get("kind") not in _KINDS:
        raise ValueError(f"{path}: unknown model kind {meta.get('kind')!r}; known: {sorted(_KINDS)}")
    return meta


def _load_tensors(file: Path, expected: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``file``; with ``expected`` (a state dict, e.g. on the meta device) the file's header
    must declare exactly those names, shapes and dtypes (checked before loading); floats must be finite."""
    if expected is not None:
        check_state_dict_matches(file, expected)
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{file} is not a valid safetensors file: {exc}") from exc
    check_finite_tensors(file, tensors)
    return tensors


def model_skeleton(model_cls: type, config: Any, where: str | Path) -> nn.Module:
    """``model_cls(config)`` built on the ``meta`` device (shapes only, no memory), refused with
    :class:`InputError` when it would hold more than :data:`MAX_PARAMETERS` elements."""
    with torch.device("meta"):
        skeleton = model_cls(config)
    count = sum(t.numel() for t in skeleton.state_dict().values())
    if count > MAX_PARAMETERS:
        raise InputError(f"{where}: the config describes a model of {count:,} parameters "
                         f"({count * 4 / 2**30:.0f} GiB as float32), over the limit of {MAX_PARAMETERS:,}: "
                         "check the sizes in the config")
    return skeleton


def load_checkpoint(directory: str | Path, *, weights: str = "auto", device: str | torch.device = "cpu"):
    """Rebuild ``(model, config)`` from a checkpoint directory.

    ``weights``: ``"auto"`` (EMA weights when saved, else the raw ones — what inference should use),
    ``"ema"`` (error if absent) or ``"model"``.  The model is returned in eval mode.
    """
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights must be 'auto', 'ema' or 'model', got {weights!r}")
    path = Path(directory)
    meta = read_checkpoint_meta(path)
    config_factory, model_factory = _KINDS[meta["kind"]]
    config = from_dict(config_factory(), meta["config"], where=f"{path / CONFIG_FILE}: config")
    model_cls = model_factory()
    file = path / MODEL_FILE
    if weights == "ema" or (weights == "auto" and (path / EMA_FILE).is_file()):
        file = path / EMA_FILE
        if not file.is_file():
            raise ValueError(f"{path} has no EMA weights ({EMA_FILE})")
    expected = model_skeleton(model_cls, config, path / CONFIG_FILE).state_dict()
    check_state_dict_matches(file, expected)  # before the model is allocated
    model = model_cls(config)
    model.load_state_dict(_load_tensors(file), strict=True)
    return model.to(device).eval(), config


def load_training_state(
    directory: str | Path,
    model: nn.Module,
    ema_model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Load raw weights, EMA weights and optimizer state into existing objects; returns the JSON meta
    (``meta["step"]`` is the step to resume from)."""
    path = Path(directory)
    meta = read_checkpoint_meta(path)
    if meta["kind"] != _kind_of(model):
        raise ValueError(f"{path} holds a {meta['kind']!r} checkpoint, not {_kind_of(model)!r}")
    model.load_state_dict(_load_tensors(path / MODEL_FILE, model.state_dict()), strict=True)
    if ema_model is not None:
        if not (path / EMA_FILE).is_file():
            raise ValueError(f"{path} has no EMA weights to resume from")
        ema_model.load_state_dict(_load_tensors(path / EMA_FILE, ema_model.state_dict()), strict=True)
    if optimizer is not None:
        if meta.get("optimizer") is None or not (path / OPTIMIZER_FILE).is_file():
            raise ValueError(f"{path} has no optimizer state to resume from")
        _optimizer_from_files(optimizer, _load_tensors(path / OPTIMIZER_FILE), meta["optimizer"])
    return meta
