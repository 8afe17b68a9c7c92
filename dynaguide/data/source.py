"""Read access to demonstrations in the HDF5 layout (:mod:`dynaguide.data.schema`) or in memory.

Sources: a path to an ``.hdf5`` file (opened lazily, so DataLoader workers each get their own
handle), an open ``h5py.File``, or a list of in-memory :class:`~dynaguide.data.schema.Demo` objects.
Reading a file checks its layout before trusting it (see :mod:`dynaguide.data.schema`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np

from dynaguide.data.schema import Demo, demo_sort_key, read_hdf5_array
from dynaguide.inputs import InputError, check_hdf5_dataset


class DemoSource:
    """Uniform read access to demos from an HDF5 path, an open ``h5py.File`` or a list of :class:`Demo`.

    Actions and proprio are read into memory once (small); images are read per frame on demand
    from HDF5 (``preload_images=True`` reads them all up front).
    """

    def __init__(self, source: str | Path | h5py.File | Sequence[Demo], demos: Iterable[str] | None = None,
                 behaviours: Iterable[str] | None = None, preload_images: bool = False) -> None:
        self._file: h5py.File | None = None
        self._path: Path | None = None
        self._memory: dict[str, Demo] | None = None
        self._owns_file = not isinstance(source, h5py.File)
        self._pid = os.getpid()
        if isinstance(source, (str, Path)):
            self._path = Path(source)
            if not self._path.is_file():
                raise ValueError(f"dataset file {self._path} does not exist")
            names_all = self._open_names(self._h5())
        elif isinstance(source, h5py.File):
            self._file = source
            self._path = Path(source.filename)
            names_all = self._open_names(source)
        elif isinstance(source, Sequence) and all(isinstance(d, Demo) for d in source):
            self._memory = {(d.name or f"demo_{i}"): d for i, d in enumerate(source)}
            names_all = list(self._memory)
        else:
            raise ValueError("source must be an HDF5 path, an open h5py.File or a list of Demo, "
                             f"got {type(source).__name__}")
        names = list(demos) if demos is not None else names_all
        missing = sorted(set(names) - set(names_all))
        if missing:
            raise ValueError(f"demos not in the dataset: {missing[:5]}")
        self.actions: dict[str, np.ndarray] = {}
        self.proprio: dict[str, np.ndarray] = {}
        self.behaviour: dict[str, str | None] = {}
        wanted = set(behaviours) if behaviours is not None else None
        self.names: list[str] = []
        for name in names:
            actions, proprio, behaviour = self._read_small(name)
            if wanted is not None and behaviour not in wanted:
                continue
            if len(actions) == 0:
                continue
            self.names.append(name)
            self.actions[name], self.proprio[name], self.behaviour[name] = actions, proprio, behaviour
        if not self.names:
            raise ValueError("no demonstrations selected (empty dataset or behaviour filter matched nothing)")
        self._preloaded: dict[tuple[str, str], np.ndarray] = {}
        self._preload = preload_images
        self._checked_cameras: set[tuple[str, str]] = set()

    @staticmethod
    def _open_names(f: h5py.File) -> list[str]:
        if "data" not in f:
            raise ValueError(f"{f.filename}: no 'data' group (expected data/demo_i/...)")
        return sorted(f["data"].keys(), key=demo_sort_key)

    def _h5(self) -> h5py.File:
        if self._file is not None and self._pid != os.getpid():
            self._file = None  # inherited through fork (DataLoader worker): never share an HDF5 handle
        if self._file is None:
            try:
                self._file = h5py.File(self._path, "r")
            except OSError as exc:
                raise InputError(f"{self._path} is not a readable HDF5 file ({exc})") from exc
            self._owns_file = True
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        """Close the HDF5 file if this source opened it (an ``h5py.File`` passed in is left to its owner)."""
        if self._file is not None and self._owns_file:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict:  # DataLoader workers reopen the file themselves
        state = dict(self.__dict__)
        if self._path is not None:
            state["_file"] = None
        return state

    def _read_small(self, name: str) -> tuple[np.ndarray, np.ndarray, str | None]:
        if self._memory is not None:
            d = self._memory[name]
            return d.actions, d.proprio, d.behaviour
        g = self._h5()["data"][name]
        if not isinstance(g, h5py.Group) or "actions" not in g or "obs" not in g \
                or not isinstance(g["obs"], h5py.Group):
            raise InputError(f"{self._path}: data/{name} lacks 'actions' or the 'obs' group")
        where = f"{self._path}: data/{name}"
        actions = np.asarray(read_hdf5_array(g["actions"], f"{where}/actions", ndim=2), dtype=np.float32)
        proprio = (np.asarray(read_hdf5_array(g["obs"]["proprio"], f"{where}/obs/proprio", ndim=2), np.float32)
                   if "proprio" in g["obs"] else np.zeros((len(actions), 0), np.float32))
        if len(proprio) != len(actions):
            raise InputError(f"{where}: obs/proprio has {len(proprio)} steps, actions {len(actions)}")
        for values, key in ((actions, "actions"), (proprio, "obs/proprio")):
            if not np.isfinite(values).all():
                raise InputError(f"{where}/{key} contains NaN or infinite values")
        behaviour = g.attrs.get("behavior")
        if isinstance(behaviour, bytes):
            behaviour = behaviour.decode()
        return actions, proprio, (str(behaviour) if behaviour is not None else None)

    def length(self, name: str) -> int:
        return self.actions[name].shape[0]

    def cameras(self, name: str) -> list[str]:
        if self._memory is not None:
            return list(self._memory[name].images)
        return [k for k in self._h5()["data"][name]["obs"].keys() if k not in ("proprio", "states")]

    def frame(self, name: str, camera: str, index: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 frame ``index`` of ``camera`` in demo ``name``."""
        if self._memory is not None:
            images = self._memory[name].images
            if camera not in images:
                raise ValueError(f"demo {name} has no camera {camera!r} (have {sorted(images)})")
            return images[camera][index]
        key = (name, camera)
        if self._preload:
            if key not in self._preloaded:
                self._preloaded[key] = read_hdf5_array(self._camera_dataset(name, camera),
                                                       f"{self._path}: data/{name}/obs/{camera}")
            return self._preloaded[key][index]
        return self._camera_dataset(name, camera)[index]

    def frames(self, name: str, camera: str, indices: Sequence[int]) -> np.ndarray:
        """``(len(indices), H, W, 3)`` uint8 frames; one contiguous HDF5 read covering the indices."""
        idx = np.asarray(indices, dtype=np.int64)
        if self._memory is not None or self._preload:
            return np.stack([self.frame(name, camera, int(i)) for i in idx])
        lo, hi = int(idx.min()), int(idx.max())
        return self._camera_dataset(name, camera)[lo:hi + 1][idx - lo]

    def _camera_dataset(self, name: str, camera: str):
        obs = self._h5()["data"][name]["obs"]
        if camera not in obs:
            raise ValueError(f"{self._path}: data/{name}/obs has no camera {camera!r} (have {sorted(obs.keys())})")
        ds = obs[camera]
        if (name, camera) not in self._checked_cameras:
            where = f"{self._path}: data/{name}/obs/{camera}"
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 4 or ds.shape[-1] != 3:
                raise InputError(f"{where} must be (L, H, W, 3), got {getattr(ds, 'shape', type(ds).__name__)}")
            if ds.dtype != np.uint8:
                raise InputError(f"{where} holds {ds.dtype} images; the layout is uint8 RGB 0..255 (convert with "
                                 "np.clip(x * 255, 0, 255).astype(np.uint8) if they are floats in [0, 1])")
            if ds.shape[0] != self.length(name):
                raise InputError(f"{where} has {ds.shape[0]} frames but the demo has {self.length(name)} actions: "
                                 "one frame per step")
            check_hdf5_dataset(ds, where, max_bytes=None)  # read a frame at a time: only the stored-size check
            self._checked_cameras.add((name, camera))
        return ds

    def stats(self) -> dict[str, np.ndarray]:
        """Min/max of raw actions and proprio over the selected demos."""
        actions = np.concatenate([self.actions[n] for n in self.names])
        proprio = np.concatenate([self.proprio[n] for n in self.names])
        out = {"action_min": actions.min(0), "action_max": actions.max(0)}
        if proprio.shape[1] > 0:
            out.update(proprio_min=proprio.min(0), proprio_max=proprio.max(0))
        return out

    @property
    def path(self) -> Path | None:
        return self._path


def split_demos(source: str | Path | h5py.File | Sequence[Demo], val_fraction: float = 0.1, seed: int = 0
                ) -> tuple[list[str], list[str]]:
    """Split demo names into (train, val) by whole demos (at least one of each when possible)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    src = DemoSource(source)
    names = list(src.names)
    src.close()
    random.Random(seed).shuffle(names)
    n_val = int(round(val_fraction * len(names)))
    if val_fraction > 0 and len(names) > 1:
        n_val = max(1, min(n_val, len(names) - 1))
    return sorted(names[n_val:], key=demo_sort_key), sorted(names[:n_val], key=demo_sort_key)
