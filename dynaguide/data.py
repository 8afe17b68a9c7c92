"""HDF5 demonstration datasets (robomimic / official-DynaGuide layout) and the policy/dynamics loaders.

File layout::

    data/                      (attrs: anything)
      demo_0/                  attrs: behavior = "<outcome label>" (optional)
        actions                (L, A) float, raw units
        obs/<camera>           (L, H, W, 3) uint8 RGB (one dataset per camera)
        obs/proprio            (L, P) float, raw units
        obs/states             (L, S) float (simulator state; optional)
      demo_1/ ...

Time convention shared by everything here (and by guidance at run time):

* the action chunk for step ``t`` is ``actions[t : t + T]`` — it **starts at the current step**;
  steps past the end of the demo repeat its **last action**;
* policy observations are ``o_{t-To+1} … o_t``; steps before the start repeat the first frame;
* the dynamics target is the **final frame** of the demo (the segment's outcome).

Sources: a path to an ``.hdf5`` file (opened lazily, so DataLoader workers each get their own
handle), an open ``h5py.File``, or a list of in-memory :class:`Demo` objects.

Reading a file checks its layout before trusting it (:class:`~dynaguide.inputs.InputError` naming the file and
dataset): actions ``(L, A)`` and proprio ``(L, P)`` numeric, cameras ``(L, H, W, 3)`` uint8 with the actions'
``L``, and every declared size against :func:`dynaguide.inputs.check_hdf5_dataset` before a read (a 4.7 KB file
declaring a ``(2e9, 7)`` dataset is refused, not allocated).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from dynaguide.inputs import MAX_IN_MEMORY_BYTES, InputError, check_hdf5_dataset


@dataclass
class Demo:
    """One demonstration in memory: ``actions (L, A)``, ``images {camera: (L, H, W, 3) uint8}``,
    ``proprio (L, P)``, optional ``states (L, S)`` and ``behavior`` label."""

    actions: np.ndarray
    images: dict[str, np.ndarray]
    proprio: np.ndarray
    states: np.ndarray | None = None
    behavior: str | None = None
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


def _demo_sort_key(name: str) -> tuple[int, str]:
    tail = name.rsplit("_", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (math.inf, name)  # type: ignore[return-value]


def write_demo(data: h5py.Group, demo: Demo, name: str, attrs: Mapping[str, Any] | None = None,
               compression: str | None = None, compression_opts: int | None = None) -> h5py.Group:
    """Write ``demo`` as group ``data/<name>`` in the layout above; returns the group.

    The one writer of that layout (:func:`write_hdf5_dataset` and ``calvin_bridge.datasets`` use it):
    ``actions`` and ``obs/proprio``/``obs/states`` as float32, cameras as uint8 (compressed with
    ``compression``/``compression_opts`` in one-frame chunks when given), attrs ``behavior`` (when the
    demo has one), ``num_samples`` and any extra ``attrs``.
    """
    g = data.create_group(name)
    g.create_dataset("actions", data=demo.actions)
    obs = g.create_group("obs")
    for cam, img in demo.images.items():
        obs.create_dataset(cam, data=img, compression=compression,
                           compression_opts=compression_opts if compression else None,
                           chunks=(1, *img.shape[1:]) if compression else None)
    obs.create_dataset("proprio", data=demo.proprio)
    if demo.states is not None:
        obs.create_dataset("states", data=demo.states)
    if demo.behavior is not None:
        g.attrs["behavior"] = demo.behavior
    for key, value in (attrs or {}).items():
        g.attrs[key] = value
    g.attrs["num_samples"] = len(demo)
    return g


def write_hdf5_dataset(path: str | Path, demos: Sequence[Demo], attrs: Mapping[str, Any] | None = None,
                       compression: str | None = None) -> Path:
    """Write ``demos`` to ``path`` in the layout above (``demo_<i>`` in order); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for key, value in (attrs or {}).items():
            data.attrs[key] = value
        for i, demo in enumerate(demos):
            write_demo(data, demo, demo.name or f"demo_{i}", compression=compression)
    return path


class DemoSource:
    """Uniform read access to demos from an HDF5 path, an open ``h5py.File`` or a list of :class:`Demo`.

    Actions and proprio are read into memory once (small); images are read per frame on demand
    from HDF5 (``preload_images=True`` reads them all up front).
    """

    def __init__(self, source: str | Path | h5py.File | Sequence[Demo], demos: Iterable[str] | None = None,
                 behaviors: Iterable[str] | None = None, preload_images: bool = False) -> None:
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
        self.behavior: dict[str, str | None] = {}
        wanted = set(behaviors) if behaviors is not None else None
        self.names: list[str] = []
        for name in names:
            actions, proprio, behavior = self._read_small(name)
            if wanted is not None and behavior not in wanted:
                continue
            if len(actions) == 0:
                continue
            self.names.append(name)
            self.actions[name], self.proprio[name], self.behavior[name] = actions, proprio, behavior
        if not self.names:
            raise ValueError("no demonstrations selected (empty dataset or behaviour filter matched nothing)")
        self._preloaded: dict[tuple[str, str], np.ndarray] = {}
        self._preload = preload_images
        self._checked_cameras: set[tuple[str, str]] = set()

    @staticmethod
    def _open_names(f: h5py.File) -> list[str]:
        if "data" not in f:
            raise ValueError(f"{f.filename}: no 'data' group (expected data/demo_i/...)")
        return sorted(f["data"].keys(), key=_demo_sort_key)

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
            return d.actions, d.proprio, d.behavior
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
        behavior = g.attrs.get("behavior")
        if isinstance(behavior, bytes):
            behavior = behavior.decode()
        return actions, proprio, (str(behavior) if behavior is not None else None)

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
    return sorted(names[n_val:], key=_demo_sort_key), sorted(names[:n_val], key=_demo_sort_key)


def to_image_tensor(frames: np.ndarray) -> torch.Tensor:
    """``(..., H, W, 3)`` uint8 → ``(..., 3, H, W)`` float32 in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)
    return t.movedim(-1, -3)


def action_chunk(actions: np.ndarray, start: int, horizon: int) -> np.ndarray:
    """``actions[start : start + horizon]`` padded by repeating the last action → ``(horizon, A)``."""
    idx = np.minimum(np.arange(start, start + horizon), len(actions) - 1)
    return actions[idx]


class _IndexedDemos(Dataset):
    def __init__(self, source, demos, behaviors, preload_images) -> None:
        self.source = source if isinstance(source, DemoSource) else DemoSource(source, demos, behaviors, preload_images)
        self.index: list[tuple[str, int]] = [(n, t) for n in self.source.names for t in range(self.source.length(n))]

    def __len__(self) -> int:
        return len(self.index)

    def close(self) -> None:
        """Close the underlying HDF5 file (reopened automatically on the next read)."""
        self.source.close()

    def stats(self) -> dict[str, np.ndarray]:
        return self.source.stats()


class PolicyDataset(_IndexedDemos):
    """Samples for diffusion-policy training, one per (demo, step ``t``).

    Item: each camera in ``image_keys`` → ``(To, 3, H, W)`` float [0, 1] (frames ``t-To+1 … t``, first
    frame repeated before the start); ``"proprio" (To, P)`` raw; ``"actions" (T, A)`` raw =
    ``actions[t : t+T]`` with the last action repeated; ``goal_key`` → ``(3, H, W)`` final frame of the
    demo from ``goal_camera`` when ``goal_key`` is set (goal-conditioned baseline).
    """

    def __init__(self, source, image_keys: Sequence[str], n_obs_steps: int = 2, horizon: int = 16,
                 demos: Iterable[str] | None = None, behaviors: Iterable[str] | None = None,
                 goal_key: str | None = None, goal_camera: str | None = None, preload_images: bool = False) -> None:
        if n_obs_steps <= 0 or horizon <= 0:
            raise ValueError("n_obs_steps and horizon must be positive")
        if not image_keys:
            raise ValueError("image_keys must name at least one camera")
        super().__init__(source, demos, behaviors, preload_images)
        self.image_keys = tuple(image_keys)
        self.n_obs_steps = n_obs_steps
        self.horizon = horizon
        self.goal_key = goal_key
        self.goal_camera = goal_camera or self.image_keys[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        name, t = self.index[i]
        src = self.source
        obs_idx = [max(0, s) for s in range(t - self.n_obs_steps + 1, t + 1)]
        item: dict[str, torch.Tensor] = {}
        for cam in self.image_keys:
            item[cam] = to_image_tensor(src.frames(name, cam, obs_idx))
        item["proprio"] = torch.from_numpy(src.proprio[name][obs_idx])
        item["actions"] = torch.from_numpy(action_chunk(src.actions[name], t, self.horizon))
        if self.goal_key is not None:
            item[self.goal_key] = to_image_tensor(src.frame(name, self.goal_camera, src.length(name) - 1))
        return item


class DynamicsDataset(_IndexedDemos):
    """Samples for latent-dynamics / outcome-classifier training, one per (demo, step ``t``).

    Item: ``"proprio" (P,)`` raw at ``t``; ``"actions" (T, A)`` raw = ``actions[t : t+T]`` with the last
    action repeated; and either (no ``tokens``) ``"image" (3, H, W)`` frame ``t`` and ``"target_image"``
    the demo's final frame, or (with ``tokens``: an :class:`EmbeddingCache` or a mapping demo name →
    ``(L, N, D)`` array) ``"obs_tokens" (N, D)`` and ``"target_tokens" (N, D)``.  With ``class_names``,
    ``"label"`` = index of the demo's ``behavior`` in it (demos with other behaviours are dropped).
    ``with_images=True`` returns the images even when tokens are given (classifier training).
    """

    def __init__(self, source, camera: str, horizon: int = 16, demos: Iterable[str] | None = None,
                 behaviors: Iterable[str] | None = None, tokens: Mapping[str, Any] | None = None,
                 class_names: Sequence[str] | None = None, with_images: bool = False,
                 preload_images: bool = False) -> None:
        if horizon <= 0:
            raise ValueError("horizon must be positive")
        if class_names is not None:
            behaviors = list(class_names) if behaviors is None else [b for b in behaviors if b in class_names]
        super().__init__(source, demos, behaviors, preload_images)
        self.camera = camera
        self.horizon = horizon
        self.tokens = tokens
        self.class_names = list(class_names) if class_names is not None else None
        self.with_images = with_images or tokens is None
        if tokens is not None:
            missing = [n for n in self.source.names if n not in tokens]
            if missing:
                raise ValueError(f"embedding cache lacks demos {missing[:5]}")

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        name, t = self.index[i]
        src = self.source
        last = src.length(name) - 1
        item: dict[str, torch.Tensor] = {
            "proprio": torch.from_numpy(src.proprio[name][t]),
            "actions": torch.from_numpy(action_chunk(src.actions[name], t, self.horizon)),
        }
        if self.with_images:
            item["image"] = to_image_tensor(src.frame(name, self.camera, t))
            item["target_image"] = to_image_tensor(src.frame(name, self.camera, last))
        if self.tokens is not None:
            demo_tokens = self.tokens[name]
            item["obs_tokens"] = torch.as_tensor(np.asarray(demo_tokens[t]), dtype=torch.float32)
            item["target_tokens"] = torch.as_tensor(np.asarray(demo_tokens[last]), dtype=torch.float32)
        if self.class_names is not None:
            item["label"] = torch.tensor(self.class_names.index(src.behavior[name]), dtype=torch.long)
        return item


# ---------------------------------------------------------------------------- embedding cache
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

    from dynaguide.embedders import embedder_fingerprint, embedder_id
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
