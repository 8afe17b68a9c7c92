"""Persist the last accepted guidance (raw goal tokens + parameters) as safetensors + JSON.

Everything loaded is validated (:func:`check_stored`): the revision is an integer in ``0..MAX_REVISION``, the
tensors are finite float32 ``(K, grid_h * grid_w, D)``, the parameters pass :class:`GuidanceConfig`'s checks (the
one validator of s, σ and M), ``active`` is a JSON boolean and the tensor file's SHA-256 is required (stores of
the earlier layout, with the fixed name ``guidance.safetensors`` and no hash, are still read).  A store that
fails is reported as a ``ValueError``; :func:`quarantine_store` moves its files aside for inspection.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

from dynaguide.inputs import one_line
from dynaguide.text import clip_text


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
MAX_REVISION = 2**63 - 1
"""Largest revision a store may hold (``revision`` is a uint64 in the messages; one more must still fit)."""
QUARANTINE_PREFIX = "corrupt-"


def check_revision(value: object) -> int:
    """``value`` as a revision, or ``ValueError`` unless it is an integer (not a bool or float) in
    ``0..MAX_REVISION``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"revision {value!r} is not an integer")
    if not 0 <= value <= MAX_REVISION:
        raise ValueError(f"revision {value} is outside 0..{MAX_REVISION}")
    return value


def check_stored(g: StoredGuidance) -> StoredGuidance:
    """Raise ``ValueError`` naming the first problem of ``g``: revision, grid, tensor shapes/dtype/values,
    embedder id, or s, σ, M (checked by :class:`~dynaguide.guidance.goals.GuidanceConfig`)."""
    from dynaguide.guidance.goals import GuidanceConfig

    check_revision(g.revision)
    grid = g.grid_hw
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 2**16 for v in grid)):
        raise ValueError(f"grid_hw {grid!r} is not two positive integers")
    if not isinstance(g.embedder_id, str) or not g.embedder_id:
        raise ValueError(f"embedder_id {g.embedder_id!r} is not a non-empty string")
    dims = set()
    for side, t in (("positive", g.positive), ("negative", g.negative)):
        if not isinstance(t, np.ndarray) or t.dtype != np.float32 or t.ndim != 3:
            raise ValueError(f"{side} tokens must be a float32 (K, N, D) array, got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {getattr(t, 'shape', '')}")
        if len(t) and (t.shape[1] != grid[0] * grid[1] or t.shape[2] == 0):
            raise ValueError(f"{side} tokens {list(t.shape)} do not match grid_hw {list(grid)} "
                             f"({grid[0] * grid[1]} tokens per image)")
        if len(t):
            dims.add(t.shape[2])
        if not np.isfinite(t).all():
            raise ValueError(f"{side} tokens contain NaN or infinite values")
    if len(g.positive) + len(g.negative) == 0:
        raise ValueError("no goal tokens (active guidance needs at least one positive or negative image)")
    if len(dims) > 1:
        raise ValueError(f"positive and negative tokens differ in width: {sorted(dims)}")
    for name, types in (("scale", (int, float)), ("sigma", (int, float)), ("stochastic_steps", int)):
        value = getattr(g, name)
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{name} {value!r} is not {'an integer' if types is int else 'a number'}")
    GuidanceConfig(scale=float(g.scale), sigma=float(g.sigma), stochastic_steps=g.stochastic_steps)
    return g


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
    store is corrupt (unreadable JSON, missing or damaged tensor file, missing or mismatched checksum, or any
    value :func:`check_stored` refuses)."""
    directory = Path(directory)
    try:
        meta = _read_meta(directory)
        if meta is None:
            return None
        active = meta.get("active", True)
        if not isinstance(active, bool):
            raise ValueError(f"'active' is {active!r}, not true or false")
        if not active:
            check_revision(meta.get("revision", 0))
            return None
        legacy = "tensors" not in meta
        name = meta.get("tensors", LEGACY_TENSOR_FILE)
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"tensor file name {str(name)[:80]!r} is not a plain file name")
        path = directory / name
        if path.is_symlink() or not path.is_file():
            raise ValueError(f"tensor file {name} is missing or not a regular file")
        data = path.read_bytes()
        if "sha256" not in meta and not legacy:
            raise ValueError(f"{STATE_FILE} names {name} but has no sha256: its integrity cannot be checked")
        if "sha256" in meta and hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise ValueError(f"{name} does not match the checksum in {STATE_FILE}")
        tensors = load(data)
        grid = meta["grid_hw"]
        stored = StoredGuidance(positive=tensors["positive"], negative=tensors["negative"],
                                grid_hw=tuple(grid) if isinstance(grid, list) else grid,
                                embedder_id=meta["embedder_id"], scale=meta["scale"], sigma=meta["sigma"],
                                stochastic_steps=meta["stochastic_steps"], revision=meta["revision"])
        check_stored(stored)
        stored.scale, stored.sigma = float(stored.scale), float(stored.sigma)
        return stored
    except Exception as exc:  # JSON, OS, safetensors (SafetensorError is no ValueError) and type errors alike
        raise ValueError(f"stored guidance in {directory} is unreadable: {type(exc).__name__}: "
                         f"{clip_text(one_line(exc), 300)}") from exc


def stored_revision(directory: str | Path) -> int:
    """The last revision recorded in ``directory`` (active or cleared), also read from the tensor file
    names when the JSON is damaged; 0 when there is none."""
    directory = Path(directory)
    revisions = [0]
    try:
        meta = _read_meta(directory)
        if meta is not None:
            revisions.append(check_revision(meta["revision"]))
    except Exception:
        pass  # a revision out of range or of the wrong type counts as none
    for f in directory.glob("guidance-r*-*.safetensors") if directory.is_dir() else ():
        head = f.name[len("guidance-r"):].split("-", 1)[0]
        if head.isdigit() and len(head) <= 19 and int(head) <= MAX_REVISION:
            revisions.append(int(head))
    return max(revisions)


def quarantine_store(directory: str | Path, revision: int) -> Path | None:
    """Move the files of a corrupt store into ``directory/corrupt-<UTC time>/`` (kept for inspection) and
    record a clear at ``revision`` so that revisions keep increasing; returns the folder (None if nothing was
    there to move)."""
    import time

    directory = Path(directory)
    files = [f for f in [directory / STATE_FILE, *directory.glob("guidance*.safetensors"),
                         *directory.glob(".guidance*.tmp")] if f.exists() or f.is_symlink()]
    if not files:
        return None
    aside = directory / f"{QUARANTINE_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    aside.mkdir()
    for f in files:
        os.replace(f, aside / f.name)
    clear_guidance(directory, revision=check_revision(revision))
    return aside


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
