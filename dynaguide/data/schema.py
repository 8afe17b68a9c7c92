"""The HDF5 demonstration layout (robomimic / official-DynaGuide), its in-memory form and checked reads.

File layout::

    data/                      (attrs: anything)
      demo_0/                  attrs: behavior = "<outcome label>" (optional)
        actions                (L, A) float, raw units
        obs/<camera>           (L, H, W, 3) uint8 RGB (one dataset per camera)
        obs/proprio            (L, P) float, raw units
        obs/states             (L, S) float (simulator state; optional)
      demo_1/ ...

Written by :mod:`dynaguide.data.writer`, read by :class:`dynaguide.data.source.DemoSource`.

Reading a file checks its layout before trusting it (:class:`~dynaguide.inputs.InputError` naming the file and
dataset): actions ``(L, A)`` and proprio ``(L, P)`` numeric, cameras ``(L, H, W, 3)`` uint8 with the actions'
``L``, and every declared size against :func:`dynaguide.inputs.check_hdf5_dataset` before a read (a 4.7 KB file
declaring a ``(2e9, 7)`` dataset is refused, not allocated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from dynaguide.inputs import MAX_IN_MEMORY_BYTES, InputError, check_hdf5_dataset


@dataclass
class Demo:
    """One demonstration in memory: ``actions (L, A)``, ``images {camera: (L, H, W, 3) uint8}``,
    ``proprio (L, P)``, optional ``states (L, S)`` and ``behaviour`` label."""

    actions: np.ndarray
    images: dict[str, np.ndarray]
    proprio: np.ndarray
    states: np.ndarray | None = None
    behaviour: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.proprio = np.asarray(self.proprio, dtype=np.float32)
        if self.actions.ndim != 2:
            raise ValueError(f"actions must be (L, A), got {self.actions.shape}")
        length = self.actions.shape[0]
        if length == 0:
            raise ValueError("a demo needs at least one step")
        if self.proprio.ndim == 1 and self.proprio.size == 0:
            self.proprio = np.zeros((length, 0), np.float32)
        if self.proprio.ndim != 2 or self.proprio.shape[0] != length:
            raise ValueError(f"proprio must be (L={length}, P), got {self.proprio.shape}")
        for cam, img in self.images.items():
            img = np.asarray(img)
            if img.ndim != 4 or img.shape[0] != length or img.shape[-1] != 3 or img.dtype != np.uint8:
                raise ValueError(f"images[{cam!r}] must be (L={length}, H, W, 3) uint8, got {img.shape} {img.dtype}")
            self.images[cam] = img
        if self.states is not None:
            self.states = np.asarray(self.states, dtype=np.float32)
            if self.states.shape[0] != length:
                raise ValueError(f"states must have L={length} rows, got {self.states.shape}")

    def __len__(self) -> int:
        return self.actions.shape[0]


def read_hdf5_array(ds: Any, where: str, ndim: int | None = None,
                    max_bytes: int | None = MAX_IN_MEMORY_BYTES) -> np.ndarray:
    """All of HDF5 dataset ``ds`` as a numpy array, after checking that it is a numeric dataset with ``ndim``
    dimensions whose declared size is plausible (:func:`~dynaguide.inputs.check_hdf5_dataset`); ``where`` names
    it in errors."""
    if not isinstance(ds, h5py.Dataset):
        raise InputError(f"{where} is a {type(ds).__name__}, not a dataset")
    if ds.dtype.kind not in "fiub":
        raise InputError(f"{where} holds {ds.dtype}, not numbers")
    if ndim is not None and ds.ndim != ndim:
        raise InputError(f"{where} must have {ndim} dimensions, got shape {list(ds.shape)}")
    check_hdf5_dataset(ds, where, max_bytes=max_bytes)
    return ds[()]


def demo_sort_key(name: str) -> tuple[int, str]:
    """Sort key of a demo group name: ``demo_<i>`` by ``i`` (numerically), other names after them by name."""
    tail = name.rsplit("_", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (math.inf, name)  # type: ignore[return-value]
