"""Chained play episodes with recovery labels: CALVIN-style play data from the scripted experts.

CALVIN's play data are long teleoperated episodes in which each behaviour starts wherever the previous one
ended.  :func:`collect_play` does the same with the scripted experts: an episode starts in a fully random
scene with the robot near home, then chains ``segments_per_episode`` behaviours, each picked among those
that are possible in the *current* state (:func:`calvin_bridge.experts.is_possible`), so start states cover
the table instead of one home pose.  Each behaviour becomes one segment (the layout of
:mod:`calvin_bridge.datasets`); its label counts from the segment's own first state
(:meth:`CalvinEnv.begin_segment`).

Recovery labels (DART, Laskey et al. 2017): in a share ``noise_share`` of the segments the *executed*
translation is perturbed with Gaussian noise of ``noise`` action units (1 unit = ``max_rel_pos`` = 2 cm
per step) while the recorded action is the expert's own, which — the experts being closed-loop waypoint
followers — is the correction from the perturbed state.  A segment whose expert fails is not written, but the
episode goes on from where it stopped: the next segment is the expert recovering from that state.

Shards and resuming: ``workers`` processes each own the episodes ``i ≡ worker (mod workers)`` and write
``play_<worker>of<workers>.h5`` in ``out_dir``.  After every episode a shard records ``next_episode`` (the
episode index in the worker's sequence); segments of an episode cut by a kill are deleted on resume and the
episode runs again with the same seed.  (A resumed episode can still differ from the uninterrupted run's by a
step or two: PyBullet's contact solver warm-starts from whatever the process simulated before.)
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from calvin_bridge.config import CalvinEnvConfig
from calvin_bridge.datasets import record_segment, write_segment
from calvin_bridge.env import CalvinEnv
from calvin_bridge.experts import BEHAVIOURS, is_possible


@dataclass
class PlayConfig:
    """Episodes ``0 … episodes − 1`` with episode seeds ``seed + i``.

    ``mixture``: behaviour weights (empty = uniform over all 14); at each segment the weights of the
    behaviours possible now are renormalised.  ``balance``: divide each weight by ``1 + attempts`` of that
    behaviour so far in the shard — without it the behaviours possible in almost every state (the button)
    crowd out those that are rarely possible (blocks on the table with room to push, the switch), 3:1 and
    more (measured on the validation collection, ``results/calvin/play/``).
    ``noise``: standard deviation (action units) of the noise on
    the executed xyz action in a perturbed segment; ``noise_share``: share of segments perturbed.
    """

    episodes: int = 100
    seed: int = 0
    segments_per_episode: int = 6
    mixture: dict[str, float] = field(default_factory=dict)
    noise: float = 0.3
    noise_share: float = 0.5
    workers: int = 1
    balance: bool = True

    def __post_init__(self) -> None:
        if self.episodes <= 0 or self.segments_per_episode <= 0 or self.workers <= 0:
            raise ValueError("episodes, segments_per_episode and workers must be positive, got "
                             f"{self.episodes}, {self.segments_per_episode}, {self.workers}")
        if not (np.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, got {self.noise}")
        if not 0.0 <= self.noise_share <= 1.0:
            raise ValueError(f"noise_share must be in [0, 1], got {self.noise_share}")
        unknown = sorted(set(self.mixture) - set(BEHAVIOURS))
        if unknown:
            raise ValueError(f"mixture names unknown behaviours {unknown}; known: {list(BEHAVIOURS)}")
        if any(not np.isfinite(w) or w < 0 for w in self.mixture.values()) or \
                (self.mixture and sum(self.mixture.values()) <= 0):
            raise ValueError(f"mixture weights must be finite, >= 0, with a positive sum; got {self.mixture}")

    def weight(self, behaviour: str) -> float:
        return self.mixture.get(behaviour, 0.0) if self.mixture else 1.0


def shard_path(out_dir: str | Path, worker: int, workers: int) -> Path:
    return Path(out_dir) / f"play_{worker:02d}of{workers:02d}.h5"


def _new_stats() -> dict:
    return {"episodes": 0, "segments": 0, "frames": 0, "seconds": 0.0, "no_possible_behaviour": 0,
            "attempts": {b: 0 for b in BEHAVIOURS}, "successes": {b: 0 for b in BEHAVIOURS},
            "attempts_perturbed": 0, "successes_perturbed": 0,
            "attempts_chained": 0, "successes_chained": 0}


def play_episode(env: CalvinEnv, cfg: PlayConfig, episode_seed: int, attempts: dict[str, int] | None = None):
    """Run one chained episode; yields ``(arrays, attrs, result)`` for every attempted segment (failed ones too,
    ``result["success"]`` tells), in order.  Deterministic in ``episode_seed`` and ``attempts`` (the shard's
    attempts per behaviour so far, read for ``cfg.balance``; the caller counts each yielded attempt in it)."""
    rng = np.random.default_rng(episode_seed)
    env.reset(seed=episode_seed)   # fully random scene, robot at home ± robot_joint_noise
    for index in range(cfg.segments_per_episode):
        possible = [b for b in BEHAVIOURS if cfg.weight(b) > 0 and is_possible(env, b)]
        if not possible:
            yield None, {"episode_seed": episode_seed, "index": index}, {"success": False, "none_possible": True}
            return
        weights = np.array([cfg.weight(b) / ((1.0 + (attempts or {}).get(b, 0)) if cfg.balance else 1.0)
                            for b in possible])
        behaviour = possible[int(rng.choice(len(possible), p=weights / weights.sum()))]
        perturbed = cfg.noise > 0 and bool(rng.random() < cfg.noise_share)
        noise_rng = np.random.default_rng(rng.integers(2**63))

        def perturb(action: np.ndarray, noise_rng=noise_rng) -> np.ndarray:
            out = np.array(action, dtype=np.float64)
            out[:3] = np.clip(out[:3] + noise_rng.normal(0.0, cfg.noise, 3), -1.0, 1.0)
            return out

        env.begin_segment()
        arrays, result = record_segment(env, behaviour, rng, perturb=perturb if perturbed else None)
        attrs = {"behavior": behaviour, "label": result["label"], "seed": episode_seed, "episode_seed": episode_seed,
                 "index": index, "perturbed": perturbed, "noise": cfg.noise if perturbed else 0.0,
                 "success": bool(result["success"])}
        yield arrays, attrs, result


def _collect_shard(env_config: CalvinEnvConfig, cfg: PlayConfig, out_dir: str, worker: int, resume: bool,
                   progress: bool) -> dict:
    """Collect worker ``worker``'s episodes into its shard; returns the shard's cumulative stats."""
    path = shard_path(out_dir, worker, cfg.workers)
    if path.exists() and not resume:
        raise FileExistsError(f"{path} exists: pass --resume to continue it, or choose another --out")
    env_config = dataclasses.replace(env_config, render_every_step=True)
    mine = list(range(worker, cfg.episodes, cfg.workers))
    with h5py.File(path, "a") as f, CalvinEnv(env_config) as env:
        data = f.require_group("data")
        mine_settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "episodes"}
        settings = json.dumps(mine_settings, sort_keys=True)
        if "play_config" in data.attrs:
            # shards written before balancing existed were unbalanced
            stored = {"balance": False, **json.loads(data.attrs["play_config"])}
            if stored != mine_settings:
                raise ValueError(f"{path} was collected with other settings ({json.dumps(stored, sort_keys=True)}); "
                                 "resume it with those or write elsewhere")
        data.attrs["play_config"] = settings
        data.attrs["env"] = "calvin_bridge:" + env.scene.source
        data.attrs["action_space"] = "calvin_relative_7d"
        done = int(data.attrs.get("next_episode", 0))
        stats = json.loads(data.attrs.get("stats", json.dumps(_new_stats())))
        for name in [n for n in data if int(data[n].attrs.get("episode_order", -1)) >= done]:
            del data[name]   # the segments of an episode cut by a kill: it runs again
        next_demo = int(data.attrs.get("next_demo", 0))
        bar = tqdm(total=len(mine), initial=min(done, len(mine)), desc=f"play w{worker}", position=worker,
                   disable=not progress, dynamic_ncols=True)
        for order in range(done, len(mine)):
            start = time.perf_counter()
            for arrays, attrs, result in play_episode(env, cfg, cfg.seed + mine[order], stats["attempts"]):
                if arrays is None:
                    stats["no_possible_behaviour"] += 1
                    continue
                b = attrs["behavior"]
                stats["attempts"][b] += 1
                stats["attempts_perturbed"] += int(attrs["perturbed"])
                stats["attempts_chained"] += int(attrs["index"] > 0)
                if not result["success"]:
                    continue
                stats["successes"][b] += 1
                stats["successes_perturbed"] += int(attrs["perturbed"])
                stats["successes_chained"] += int(attrs["index"] > 0)
                write_segment(data, f"demo_{next_demo}", arrays, {**attrs, "episode_order": order})
                next_demo += 1
                stats["segments"] += 1
                stats["frames"] += int(arrays["actions"].shape[0])
            stats["episodes"] += 1
            stats["seconds"] = round(stats["seconds"] + time.perf_counter() - start, 1)
            data.attrs["next_demo"] = next_demo
            data.attrs["stats"] = json.dumps(stats)
            data.attrs["next_episode"] = order + 1
            f.flush()
            bar.update(1)
            bar.set_postfix(segments=stats["segments"])
        bar.close()
    return stats


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _shard_job(args) -> dict:
    return _collect_shard(*args)


def collect_play(env_config: CalvinEnvConfig, cfg: PlayConfig, out_dir: str | Path, resume: bool = False,
                 progress: bool = True) -> dict:
    """Collect ``cfg.episodes`` chained episodes into ``cfg.workers`` shards under ``out_dir`` (processes run in
    parallel, one simulator each); returns :func:`summarise_play` of all shards."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(env_config, cfg, str(out_dir), w, resume, progress) for w in range(cfg.workers)]
    if cfg.workers == 1:
        _shard_job(jobs[0])
    else:
        # a plain `kill` of this process must not orphan the workers: SIGTERM unwinds the pool (terminate())
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            with multiprocessing.get_context("spawn").Pool(cfg.workers) as pool:
                pool.map(_shard_job, jobs)
        finally:
            signal.signal(signal.SIGTERM, previous)
    return summarise_play([shard_path(out_dir, w, cfg.workers) for w in range(cfg.workers)])


def summarise_play(paths) -> dict:
    """Totals over shard files: segments, frames, the experts' success per behaviour, on chained starts
    (segments after the first of an episode) and under perturbation."""
    total = _new_stats()
    for path in paths:
        with h5py.File(path, "r") as f:
            s = json.loads(f["data"].attrs.get("stats", json.dumps(_new_stats())))
        for k, v in s.items():
            if isinstance(v, dict):
                for b, n in v.items():
                    total[k][b] = total[k].get(b, 0) + n
            else:
                total[k] += v
    rate = {b: round(total["successes"][b] / total["attempts"][b], 3) for b in BEHAVIOURS if total["attempts"][b]}
    total["success_rate"] = rate
    total["success_rate_chained"] = round(total["successes_chained"] / max(1, total["attempts_chained"]), 3)
    total["success_rate_perturbed"] = round(total["successes_perturbed"] / max(1, total["attempts_perturbed"]), 3)
    total["seconds"] = round(total["seconds"], 1)
    total["shards"] = [str(p) for p in paths]
    return total
