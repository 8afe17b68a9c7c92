"""Scripted BlockTouch demonstrations loaded into memory, and the training batches built from them.

Time convention (the policy's, see :mod:`dynaguide.policy.model`): at step ``t`` the observation
window is frames ``t - To + 1 … t`` (clamped to the episode's first frame) and the action chunk is
``a_t … a_{t+T-1}``, padded past the episode end by repeating its last action.  The outcome classifier
and the latent dynamics model use the same start (the current step) but continue past the episode end
with the scripted plan (:func:`outcome_chunk`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import h5py
import numpy as np
import torch

from dynaguide.data.source import DemoSource


@dataclass
class DemoArrays:
    """All demonstrations, frames concatenated.

    ``images (F, 3, S, S)`` uint8, ``proprio (F, 2)``, ``actions (F, 2)`` float32 in [-1, 1],
    ``episode (F,)`` episode id of each frame; per episode ``start (E,)``, ``length (E,)``,
    ``touched (E,)`` class id, ``final_images (E, 3, S, S)`` uint8, ``final_proprio (E, 2)``,
    ``plan_tail (E, L, 2)`` the scripted targets after each episode's last step (see :mod:`.scripted`).
    """

    images: torch.Tensor
    proprio: torch.Tensor
    actions: torch.Tensor
    episode: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    touched: torch.Tensor
    final_images: torch.Tensor
    final_proprio: torch.Tensor
    plan_tail: torch.Tensor

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.start.shape[0])

    def split(self, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Frame indices of a train / validation split by whole episodes."""
        rng = np.random.default_rng(seed)
        order = rng.permutation(self.num_episodes)
        n_val = int(round(val_fraction * self.num_episodes))
        val_eps = np.zeros(self.num_episodes, dtype=bool)
        val_eps[order[:n_val]] = True
        is_val = val_eps[self.episode.numpy()]
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def load_demos(path: str | Path | Sequence[str | Path], max_demos: int | None = None) -> DemoArrays:
    """Read the collector's HDF5 file(s) (see :mod:`.scripted`) into one :class:`DemoArrays`.

    The shared layout (actions, camera ``image``, proprio) is read through :class:`dynaguide.data.source.DemoSource`
    (checked reads); BlockTouch's own datasets (``final_obs``, ``plan_tail``, attr ``touched``) next to it.
    Several paths (e.g. demonstrations + failures) are concatenated in order; ``max_demos`` caps each file.
    """
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    images, proprio, actions, episode, start, length, touched, finals, final_p = [], [], [], [], [], [], [], [], []
    tails = []
    offset = 0
    for path in paths:
        if not path.exists():
            raise ValueError(f"demonstration file {path} does not exist (run `dynaguide blocktouch collect`)")
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise ValueError(f"{path} has no 'data' group; not a demonstration file")
            if not len(f["data"]):  # e.g. a failures file with no failures
                continue
            source = DemoSource(f)
            names = source.names if max_demos is None else source.names[:max_demos]
            for name in names:
                g = f["data"][name]
                n = source.length(name)
                images.append(source.frames(name, "image", range(n)))
                proprio.append(source.proprio[name])
                actions.append(source.actions[name])
                episode.append(np.full(n, len(start)))
                start.append(offset)
                length.append(n)
                touched.append(int(g.attrs["touched"]))
                finals.append(g["final_obs/image"][0])
                final_p.append(g["final_obs/proprio"][0])
                tails.append(g["plan_tail"][()])
                offset += n
    if not start:
        raise ValueError(f"{', '.join(map(str, paths))} contain(s) no demonstrations")
    to_chw = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, -3)))  # noqa: E731
    return DemoArrays(
        images=to_chw(np.concatenate(images)), proprio=torch.from_numpy(np.concatenate(proprio)).float(),
        actions=torch.from_numpy(np.concatenate(actions)).float(), episode=torch.from_numpy(np.concatenate(episode)),
        start=torch.tensor(start), length=torch.tensor(length), touched=torch.tensor(touched),
        final_images=to_chw(np.stack(finals)), final_proprio=torch.from_numpy(np.stack(final_p)).float(),
        plan_tail=torch.from_numpy(np.stack(tails)).float())


def chunk_indices(demos: DemoArrays, idx: torch.Tensor, horizon: int) -> torch.Tensor:
    """Frame indices ``(B, horizon)`` of the chunk ``a_t … a_{t+T-1}``, clamped to the episode's last step."""
    ep = demos.episode[idx]
    last = demos.start[ep] + demos.length[ep] - 1
    return torch.minimum(idx[:, None] + torch.arange(horizon)[None], last[:, None])


def outcome_chunk(demos: DemoArrays, idx: torch.Tensor, horizon: int, plan_tail: bool = True) -> torch.Tensor:
    """The outcome models' chunk ``(B, horizon, 2)`` at frames ``idx``: executed actions, then (``plan_tail``)
    the scripted plan past the episode's last step, where the policy's chunk repeats the last action
    (``plan_tail=False`` gives exactly the policy's chunk).

    Executing such a chunk from frame ``t`` reaches the episode's outcome first, so the label stays right,
    and the models learn that a chunk running *through* a block ends at that block.
    """
    actions = demos.actions[chunk_indices(demos, idx, horizon)]
    ep = demos.episode[idx]
    last = demos.start[ep] + demos.length[ep] - 1
    beyond = idx[:, None] + torch.arange(horizon)[None] - last[:, None] - 1  # 0 = first step after the episode
    tail_len = demos.plan_tail.shape[1]
    if plan_tail and tail_len:
        tail = demos.plan_tail[ep[:, None], beyond.clamp(0, tail_len - 1)]
        actions = torch.where((beyond >= 0)[..., None], tail, actions)
    return actions


def obs_indices(demos: DemoArrays, idx: torch.Tensor, n_obs_steps: int) -> torch.Tensor:
    """Frame indices ``(B, To)`` of the observation window ``t - To + 1 … t``, clamped to the episode start."""
    first = demos.start[demos.episode[idx]]
    return torch.maximum(idx[:, None] + torch.arange(-n_obs_steps + 1, 1)[None], first[:, None])


def policy_batch(demos: DemoArrays, idx: torch.Tensor, n_obs_steps: int, horizon: int, image_key: str = "rgb") -> dict:
    """``{image_key: (B, To, 3, S, S) float [0, 1], "proprio": (B, To, 2), "actions": (B, T, 2)}``."""
    oi = obs_indices(demos, idx, n_obs_steps)
    return {image_key: demos.images[oi].float() / 255.0, "proprio": demos.proprio[oi],
            "actions": demos.actions[chunk_indices(demos, idx, horizon)]}


def classifier_batch(demos: DemoArrays, idx: torch.Tensor, horizon: int, plan_tail: bool = True) -> dict:
    """Chunks from :func:`outcome_chunk`.  ``{"image": (B, 3, S, S), "proprio": (B, 2), "actions": (B, T, 2) raw,
    "label": (B,) touched class}``."""
    return {"image": demos.images[idx].float() / 255.0, "proprio": demos.proprio[idx],
            "actions": outcome_chunk(demos, idx, horizon, plan_tail), "label": demos.touched[demos.episode[idx]]}


def dynamics_batch(demos: DemoArrays, tokens: torch.Tensor, final_tokens: torch.Tensor, idx: torch.Tensor,
                   horizon: int, plan_tail: bool = True) -> dict:
    """Latent dynamics batch: current-frame ``obs_tokens``, the episode's final-frame ``target_tokens``,
    ``proprio (B, 2)`` and raw ``actions (B, T, 2)``; ``tokens (F, N, D)`` / ``final_tokens (E, N, D)`` cached."""
    return {"obs_tokens": tokens[idx], "target_tokens": final_tokens[demos.episode[idx]],
            "proprio": demos.proprio[idx], "actions": outcome_chunk(demos, idx, horizon, plan_tail)}
