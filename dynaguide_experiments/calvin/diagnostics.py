"""Is the dynamics model good enough to steer?  Retrieval of the true behaviour from predicted outcomes.

For validation segments (seeds disjoint from training and goals), at chunk start ``t`` ∈ {0, ¼, ½ of the
segment}, the model predicts the final-frame latent from the frame at ``t``, proprio and the segment's
true action chunk — clean, or noised to DDIM train-scale step ``k`` the way guidance sees it.  Each
behaviour label's goal set (held-out goal frames) is scored by its nearest-goal distance (Eq. 2's
distance, pooled outcome latents); the prediction retrieves the label with the smallest.  Reported:
top-1 accuracy per (t, k), the same for the *true* final frame (how separable the goal sets are at all)
and for the *current* frame (what the model would score by copying its input), and the distance
scale (median nearest-goal distance to the true set and to the others: σ lives on this scale).
"""

from __future__ import annotations

import h5py
import numpy as np
import torch

from dynaguide.data.datasets import action_chunk, to_image_tensor
from dynaguide.embedders.factory import make_embedder
from dynaguide_experiments.calvin.config import CalvinExperimentConfig
from dynaguide_experiments.calvin.evaluate import check_embedder, load_models
from dynaguide_experiments.calvin.harness import label_of, load_goal_images
from dynaguide.guidance.metric import goal_distances

FRACTIONS = (0.0, 0.25, 0.5)


@torch.no_grad()
def check_dynamics(cfg: CalvinExperimentConfig, noise_steps: tuple[int, ...] = (0, 5, 10, 20, 50, 90),
                   max_segments: int = 140, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    policy, dynamics = load_models(cfg)
    embedder = make_embedder(cfg.embedder)
    check_embedder(dynamics, embedder)
    horizon = dynamics.horizon
    with h5py.File(cfg.data.goals, "r") as f:
        behaviours = sorted({str(f["data"][n].attrs["behavior"]) for n in f["data"]})
    labels = sorted({label_of(b) for b in behaviours})
    goal_latents = {}
    for label in labels:
        frames = np.concatenate([load_goal_images(cfg.data.goals, b, cfg.eval.goal_set, cfg.eval.goals_per_target)
                                 for b in behaviours if label_of(b) == label])
        goal_latents[label] = dynamics.outcome_latent(embedder(to_image_tensor(frames)))

    def nearest(pred: torch.Tensor) -> torch.Tensor:   # (B, N, D) → (B, labels) nearest-goal distance
        return torch.stack([goal_distances(pred, goal_latents[label]).min(dim=1).values for label in labels], dim=1)

    gen = torch.Generator().manual_seed(seed)
    sched = dynamics.noise_scheduler
    rows = []   # (label index, {key: distances (labels,)})
    with h5py.File(cfg.data.validation, "r") as f:
        names = sorted(f["data"], key=lambda n: int(n.split("_")[-1]))[:max_segments]
        for name in names:
            g = f["data"][name]
            label = label_of(str(g.attrs["behavior"]))
            if label not in labels:
                continue
            frames = g[f"obs/{cfg.data.camera}"]
            proprio = g["obs/proprio"][:]
            actions = g["actions"][:]
            last = len(actions) - 1
            final = dynamics.outcome_latent(embedder(to_image_tensor(frames[last][None])))
            entry = {"final": nearest(final)[0]}
            for frac in FRACTIONS:
                t = int(round(frac * last))
                tokens = embedder(to_image_tensor(frames[t][None]))
                entry[f"current@{frac}"] = nearest(dynamics.outcome_latent(tokens))[0]
                raw = torch.from_numpy(action_chunk(actions, t, horizon)).float()
                chunk = dynamics.action_normalizer.normalize(raw)[None]
                pro = torch.from_numpy(proprio[t][None]).float()
                for k in noise_steps:
                    noisy = chunk
                    if k > 0:
                        noise = torch.randn(chunk.shape, generator=gen)
                        noisy = sched.add_noise(chunk, noise, torch.tensor([k]))
                    entry[f"pred@{frac}/k={k}"] = nearest(dynamics(tokens, pro, noisy))[0]
            rows.append((labels.index(label), entry))
    if not rows:
        raise ValueError("no validation segments with a goal set to check")
    truth = torch.tensor([r[0] for r in rows])
    result: dict = {"segments": len(rows), "labels": labels, "chance": 1.0 / len(labels), "accuracy": {},
                    "distance_scale": {}}
    for key in rows[0][1]:
        d = torch.stack([r[1][key] for r in rows])                  # (S, labels)
        result["accuracy"][key] = float((d.argmin(dim=1) == truth).float().mean())
        own = d[torch.arange(len(rows)), truth]
        mask = torch.ones_like(d, dtype=torch.bool)
        mask[torch.arange(len(rows)), truth] = False
        result["distance_scale"][key] = {"true_set_median": float(own.median()),
                                         "other_sets_median": float(d[mask].median())}
    per_label = {}
    d = torch.stack([r[1]["pred@0.0/k=0"] for r in rows])
    for i, label in enumerate(labels):
        sel = truth == i
        if sel.any():
            per_label[label] = float((d[sel].argmin(dim=1) == i).float().mean())
    result["accuracy_per_label@0.0/k=0"] = per_label
    return result


@torch.no_grad()
def guidance_effect(cfg: CalvinExperimentConfig, target: str, scales: tuple[float, ...], starts: int = 16) -> dict:
    """Open-loop effect of the guidance scale: for the first frames of ``starts`` validation segments, one
    guided chunk per scale (same noise) → mean Eq. 2 metric, mean predicted nearest-goal distance, the
    metric's gradient norm at the returned chunk, and the largest |action| (normalised units)."""
    import dataclasses

    from dynaguide_experiments.calvin.harness import Observation, Planners
    from dynaguide.guidance.sampler import guided_ddim_sample, objective_value_and_grad

    torch.set_num_threads(1)
    policy, dynamics = load_models(cfg)
    embedder = make_embedder(cfg.embedder)
    check_embedder(dynamics, embedder)
    with h5py.File(cfg.data.validation, "r") as f:
        names = sorted(f["data"], key=lambda n: int(n.split("_")[-1]))[:starts]
        frames = np.stack([np.stack([f["data"][n][f"obs/{cfg.data.camera}"][0]] * policy.cfg.n_obs_steps)
                           for n in names])
        proprio = np.stack([np.stack([f["data"][n]["obs/proprio"][0]] * policy.cfg.n_obs_steps) for n in names])
    images = to_image_tensor(frames)
    goals = {target: load_goal_images(cfg.data.goals, target, cfg.eval.goal_set, cfg.eval.goals_per_target)}
    rows = {}
    for scale in scales:
        ev = dataclasses.replace(cfg.eval, guidance=dataclasses.replace(cfg.eval.guidance, scale=float(scale)))
        planners = Planners(policy, dynamics, embedder, ev, goals, max_rel_pos=0.02)
        guidance = planners.guidance_set(target)
        obs = Observation(images, torch.from_numpy(proprio).float(), torch.zeros(len(names), 3),
                          [torch.Generator().manual_seed(i) for i in range(len(names))])
        objective = planners._objective(obs, guidance)
        g = ev.guidance
        sample = guided_ddim_sample(policy, planners._cond(obs), objective if scale > 0 else None, scale=float(scale),
                                    ddim=policy.cfg.ddim, stochastic_steps=g.stochastic_steps,
                                    stochastic_mode=g.stochastic_mode, generator=obs.generators).actions
        metric = objective(sample)
        nearest = goal_distances(objective.predict_outcome(sample), guidance.positives).min(dim=1).values
        _, grad = objective_value_and_grad(objective, sample)
        rows[str(scale)] = {"metric": float(metric.mean()), "nearest_goal_distance": float(nearest.mean()),
                            "grad_norm": float(grad.flatten(1).norm(dim=1).mean()),
                            "max_abs_action": float(sample.abs().max())}
    return {"target": target, "starts": len(names), "sigma": cfg.eval.guidance.sigma,
            "stochastic_steps": cfg.eval.guidance.stochastic_steps, "by_scale": rows}
