"""Frozen-embedder tokens of every frame of a dataset's camera, cached in an HDF5 file next to the dataset.

Cache file: attrs ``source`` / ``source_size`` / ``source_mtime_ns`` (the dataset it was built from), ``camera``,
``embedder`` (the embedder fingerprint that is checked), ``embedder_id``, ``num_tokens``, ``dim``; group
``tokens/<demo name>`` → ``(L, N, D)`` tokens (``float16`` by default), one row per frame.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from dynaguide.data.datasets import to_image_tensor
from dynaguide.data.schema import Demo
from dynaguide.data.source import DemoSource


def _file_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"source": str(path.resolve()), "source_size": int(st.st_size), "source_mtime_ns": int(st.st_mtime_ns)}


def default_cache_path(dataset_path: str | Path, camera: str, fingerprint: str) -> Path:
    """``<dataset stem>.<camera>.<embedder fingerprint>.emb.h5`` next to the dataset."""
    p = Path(dataset_path)
    return p.with_name(f"{p.stem}.{camera}.{fingerprint}.emb.h5")


class EmbeddingCache(Mapping):
    """Read-only mapping demo name → ``(L, N, D)`` HDF5 dataset of embedder tokens for every frame.

    The cache records the dataset file it was built from (absolute path, size, mtime), the camera and
    the embedder fingerprint; opening it against a changed dataset or another embedder raises ``ValueError``.
    """

    def __init__(self, cache_path: str | Path, dataset_path: str | Path | None = None, camera: str | None = None,
                 fingerprint: str | None = None) -> None:
        self.path = Path(cache_path)
        if not self.path.is_file():
            raise ValueError(f"embedding cache {self.path} does not exist")
        self._file: h5py.File | None = None
        self._pid = os.getpid()
        attrs = dict(self._h5().attrs)
        if dataset_path is not None:
            key = _file_key(Path(dataset_path))
            if int(attrs.get("source_size", -1)) != key["source_size"] or \
                    int(attrs.get("source_mtime_ns", -1)) != key["source_mtime_ns"]:
                raise ValueError(f"embedding cache {self.path} was built from a different version of {dataset_path}; "
                                 "rebuild it")
        if camera is not None and attrs.get("camera") != camera:
            raise ValueError(f"embedding cache {self.path} is for camera {attrs.get('camera')!r}, not {camera!r}")
        if fingerprint is not None and attrs.get("embedder") != fingerprint:
            raise ValueError(f"embedding cache {self.path} was built with another embedder")
        self.attrs = attrs

    def _h5(self) -> h5py.File:
        if self._file is not None and self._pid != os.getpid():
            self._file = None  # inherited through fork: reopen in this process
        if self._file is None:
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getitem__(self, name: str):
        return self._h5()["tokens"][name]

    def __iter__(self):
        return iter(self._h5()["tokens"].keys())

    def __len__(self) -> int:
        return len(self._h5()["tokens"])


class _closing:
    def __init__(self, source: DemoSource) -> None:
        self.source = source

    def __enter__(self) -> DemoSource:
        return self.source

    def __exit__(self, *exc) -> None:
        self.source.close()


@torch.no_grad()
def build_embedding_cache(dataset_path: str | Path, embedder, camera: str, cache_path: str | Path | None = None,
                          batch_size: int = 32, dtype: str = "float16", device: str | torch.device = "cpu",
                          overwrite: bool = False, progress: bool = True) -> EmbeddingCache:
    """Embed every frame of ``camera`` in the dataset with ``embedder`` → an :class:`EmbeddingCache`.

    Reuses an existing, matching cache unless ``overwrite``.  Tokens are stored as ``dtype``.
    """
    from tqdm import tqdm

    from dynaguide.embedders.identity import embedder_fingerprint, embedder_id
    from dynaguide.inputs import atomic_output

    dataset_path = Path(dataset_path)
    fingerprint = embedder_fingerprint(embedder)
    cache_path = Path(cache_path) if cache_path is not None else default_cache_path(dataset_path, camera, fingerprint)
    if cache_path.is_file() and not overwrite:
        try:
            return EmbeddingCache(cache_path, dataset_path, camera, fingerprint)
        except ValueError:
            pass  # stale: rebuild below
    source = DemoSource(dataset_path)
    total = sum(source.length(n) for n in source.names)
    # a temp file next to the cache, renamed when complete; removed on any error, Ctrl-C or SIGTERM (and left
    # by a SIGKILLed run: removed by the next one)
    with atomic_output(cache_path) as tmp, h5py.File(tmp, "w") as f, \
            tqdm(total=total, desc=f"embedding {camera}", disable=not progress) as bar, _closing(source):
        for k, v in {**_file_key(dataset_path), "camera": camera, "embedder": fingerprint,
                     "embedder_id": embedder_id(embedder),  # human-readable; the fingerprint is what is checked
                     "num_tokens": int(embedder.num_tokens), "dim": int(embedder.dim)}.items():
            f.attrs[k] = v
        group = f.create_group("tokens")
        for name in source.names:
            length = source.length(name)
            out = group.create_dataset(name, shape=(length, embedder.num_tokens, embedder.dim), dtype=dtype)
            for start in range(0, length, batch_size):
                frames = source.frames(name, camera, range(start, min(length, start + batch_size)))
                tokens = embedder(to_image_tensor(frames).to(device))
                out[start:start + len(frames)] = tokens.float().cpu().numpy().astype(dtype)
                bar.update(len(frames))
    return EmbeddingCache(cache_path, dataset_path, camera, fingerprint)


@torch.no_grad()
def embed_demos(demos: Sequence[Demo], embedder, camera: str, batch_size: int = 32) -> dict[str, np.ndarray]:
    """In-memory counterpart of :func:`build_embedding_cache`: demo name → ``(L, N, D)`` float32 tokens."""
    out = {}
    for i, demo in enumerate(demos):
        frames = demo.images[camera]
        chunks = [embedder(to_image_tensor(frames[s:s + batch_size])).float().cpu().numpy()
                  for s in range(0, len(frames), batch_size)]
        out[demo.name or f"demo_{i}"] = np.concatenate(chunks)
    return out
