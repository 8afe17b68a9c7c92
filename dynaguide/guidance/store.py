"""Persist the last accepted guidance (raw goal tokens + parameters) as safetensors + JSON."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save


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


STATE_FILE = "guidance.json"
LEGACY_TENSOR_FILE = "guidance.safetensors"   # tensors of stores written before the file was named in the JSON


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_json_atomic(path: Path, meta: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _fsync_write(tmp, json.dumps(meta, indent=2).encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_tensor_files(directory: Path, keep: str | None = None) -> None:
    for f in list(directory.glob("guidance*.safetensors")) + list(directory.glob(".guidance*.tmp")):
        if f.name != keep:
            f.unlink(missing_ok=True)


def save_guidance(directory: str | Path, g: StoredGuidance) -> None:
    """Atomically replace the stored guidance in ``directory``.

    The tensors go to a new file (``guidance-r<revision>-<id>.safetensors``); then ``guidance.json``,
    which names that file and its SHA-256, replaces the old one with a single ``os.replace`` — the commit
    point.  A crash at any moment leaves either the old or the new guidance, never a mix of the two.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = save({"positive": np.ascontiguousarray(g.positive, np.float32),
                 "negative": np.ascontiguousarray(g.negative, np.float32)})
    name = f"guidance-r{int(g.revision)}-{uuid.uuid4().hex[:8]}.safetensors"
    tmp = directory / f".{name}.tmp"
    try:
        _fsync_write(tmp, data)
        os.replace(tmp, directory / name)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {k: v for k, v in asdict(g).items() if k not in ("positive", "negative")}
    meta.update(active=True, tensors=name, sha256=hashlib.sha256(data).hexdigest())
    _write_json_atomic(directory / STATE_FILE, meta)
    _remove_tensor_files(directory, keep=name)


def _read_meta(directory: Path) -> dict | None:
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict):
        raise ValueError(f"{STATE_FILE} holds {type(meta).__name__}, not an object")
    return meta


def load_guidance(directory: str | Path) -> StoredGuidance | None:
    """The stored guidance, or None when there is none (or it was cleared); raises ``ValueError`` if the
    store is corrupt (unreadable JSON, missing or damaged tensor file, checksum mismatch)."""
    directory = Path(directory)
    try:
        meta = _read_meta(directory)
        if meta is None or not meta.get("active", True):
            return None
        name = str(meta.get("tensors", LEGACY_TENSOR_FILE))
        if Path(name).name != name:
            raise ValueError(f"tensor file name {name[:80]!r} is not a plain file name")
        data = (directory / name).read_bytes()
        if "sha256" in meta and hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise ValueError(f"{name} does not match the checksum in {STATE_FILE}")
        tensors = load(data)
        return StoredGuidance(positive=tensors["positive"], negative=tensors["negative"],
                              grid_hw=tuple(meta["grid_hw"]), embedder_id=str(meta["embedder_id"]),
                              scale=float(meta["scale"]), sigma=float(meta["sigma"]),
                              stochastic_steps=int(meta["stochastic_steps"]), revision=int(meta["revision"]))
    except Exception as exc:  # JSON, OS, safetensors (SafetensorError is no ValueError) and type errors alike
        raise ValueError(f"stored guidance in {directory} is unreadable: {type(exc).__name__}: {exc}") from exc


def stored_revision(directory: str | Path) -> int:
    """The last revision recorded in ``directory`` (active or cleared), also read from the tensor file
    names when the JSON is damaged; 0 when there is none."""
    directory = Path(directory)
    revisions = [0]
    try:
        meta = _read_meta(directory)
        if meta is not None:
            revisions.append(int(meta["revision"]))
    except Exception:
        pass
    for f in directory.glob("guidance-r*-*.safetensors") if directory.is_dir() else ():
        head = f.name[len("guidance-r"):].split("-", 1)[0]
        if head.isdigit():
            revisions.append(int(head))
    return max(revisions)


def clear_guidance(directory: str | Path, revision: int | None = None) -> None:
    """Remove the stored guidance.  With ``revision``, record the clear (atomically) so that revision
    numbers keep increasing across restarts; without, delete every file of the store."""
    directory = Path(directory)
    if revision is not None:
        directory.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(directory / STATE_FILE, {"active": False, "revision": int(revision)})
    else:
        (directory / STATE_FILE).unlink(missing_ok=True)
    if directory.is_dir():
        _remove_tensor_files(directory)
