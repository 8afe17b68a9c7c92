"""Persist the last accepted guidance (raw goal tokens + parameters) as safetensors + JSON."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


@dataclass
class StoredGuidance:
    positive: np.ndarray      # (K, N, D) raw embedder tokens (K may be 0)
    negative: np.ndarray      # (K', N, D)
    grid_hw: tuple[int, int]
    embedder_id: str
    scale: float
    sigma: float
    stochastic_steps: int
    revision: int


def save_guidance(directory: str | Path, g: StoredGuidance) -> None:
    """Atomically replace ``directory/guidance.{safetensors,json}``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in asdict(g).items() if k not in ("positive", "negative")}
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        save_file({"positive": np.ascontiguousarray(g.positive, np.float32),
                   "negative": np.ascontiguousarray(g.negative, np.float32)}, os.path.join(tmp, "t.safetensors"))
        Path(tmp, "m.json").write_text(json.dumps(meta, indent=2))
        os.replace(os.path.join(tmp, "t.safetensors"), directory / "guidance.safetensors")
        os.replace(os.path.join(tmp, "m.json"), directory / "guidance.json")


def load_guidance(directory: str | Path) -> StoredGuidance | None:
    """The stored guidance, or None when there is none; raises ``ValueError`` if it is corrupt."""
    directory = Path(directory)
    if not (directory / "guidance.json").is_file():
        return None
    try:
        meta = json.loads((directory / "guidance.json").read_text())
        tensors = load_file(str(directory / "guidance.safetensors"))
        return StoredGuidance(positive=tensors["positive"], negative=tensors["negative"],
                              grid_hw=tuple(meta["grid_hw"]), embedder_id=str(meta["embedder_id"]),
                              scale=float(meta["scale"]), sigma=float(meta["sigma"]),
                              stochastic_steps=int(meta["stochastic_steps"]), revision=int(meta["revision"]))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"stored guidance in {directory} is unreadable: {exc}") from exc


def clear_guidance(directory: str | Path) -> None:
    for name in ("guidance.json", "guidance.safetensors"):
        try:
            os.remove(Path(directory) / name)
        except FileNotFoundError:
            pass
