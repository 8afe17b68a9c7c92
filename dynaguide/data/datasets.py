"""Torch datasets for training the policy and the dynamics model (or outcome classifier) from demonstrations.

Time convention shared by everything here (and by guidance at run time):

* the action chunk for step ``t`` is ``actions[t : t + T]`` — it **starts at the current step**;
  steps past the end of the demo repeat its **last action**;
* policy observations are ``o_{t-To+1} … o_t``; steps before the start repeat the first frame;
* the dynamics target is the **final frame** of the demo (the segment's outcome).

Each dataset reads its demos through a :class:`~dynaguide.data.source.DemoSource` (an HDF5 path, an open
``h5py.File`` or a list of :class:`~dynaguide.data.schema.Demo`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dynaguide.data.source import DemoSource


def to_image_tensor(frames: np.ndarray) -> torch.Tensor:
    """``(..., H, W, 3)`` uint8 → ``(..., 3, H, W)`` float32 in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)
    return t.movedim(-1, -3)


def action_chunk(actions: np.ndarray, start: int, horizon: int) -> np.ndarray:
    """``actions[start : start + horizon]`` padded by repeating the last action → ``(horizon, A)``."""
    idx = np.minimum(np.arange(start, start + horizon), len(actions) - 1)
    return actions[idx]


class _IndexedDemos(Dataset):
    def __init__(self, source, demos, behaviours, preload_images) -> None:
        self.source = (source if isinstance(source, DemoSource)
                       else DemoSource(source, demos, behaviours, preload_images))
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
                 demos: Iterable[str] | None = None, behaviours: Iterable[str] | None = None,
                 goal_key: str | None = None, goal_camera: str | None = None, preload_images: bool = False) -> None:
        if n_obs_steps <= 0 or horizon <= 0:
            raise ValueError("n_obs_steps and horizon must be positive")
        if not image_keys:
            raise ValueError("image_keys must name at least one camera")
        super().__init__(source, demos, behaviours, preload_images)
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
    the demo's final frame, or (with ``tokens``: an :class:`~dynaguide.data.embedding_cache.EmbeddingCache` or a
    mapping demo name → ``(L, N, D)`` array) ``"obs_tokens" (N, D)`` and ``"target_tokens" (N, D)``.  With
    ``class_names``, ``"label"`` = index of the demo's ``behaviour`` in it (demos with other behaviours are
    dropped).
    ``with_images=True`` returns the images even when tokens are given (classifier training).
    """

    def __init__(self, source, camera: str, horizon: int = 16, demos: Iterable[str] | None = None,
                 behaviours: Iterable[str] | None = None, tokens: Mapping[str, Any] | None = None,
                 class_names: Sequence[str] | None = None, with_images: bool = False,
                 preload_images: bool = False) -> None:
        if horizon <= 0:
            raise ValueError("horizon must be positive")
        if class_names is not None:
            behaviours = list(class_names) if behaviours is None else [b for b in behaviours if b in class_names]
        super().__init__(source, demos, behaviours, preload_images)
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
            item["label"] = torch.tensor(self.class_names.index(src.behaviour[name]), dtype=torch.long)
        return item
