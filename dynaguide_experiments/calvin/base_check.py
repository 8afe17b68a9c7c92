"""Does the base policy finish what it starts?  ``dynaguide calvin base-check``.

Steering re-weights what the base policy does; it cannot make a policy finish a behaviour it never completes.
This check runs the *unguided* base policy on the ArticulatedParts protocol (400 control steps, one scene per
target in which that target is possible, validation trial seeds and validation start poses) and reports

* ``finish_rate``: the share of trials that end with some behaviour (target: >= 0.9);
* ``reversal_rate``: the share of consecutive executed chunks whose net translations point more than 120°
  apart (:func:`dynaguide_experiments.calvin.harness.is_reversal`; target: <= 0.1), with the same measure of
  the validation segments' expert actions as the reference;
* ``first_behaviours``: how often each label was the trial's first behaviour — a play policy, not a
  specialist, does each of the 8 articulated behaviours first in >= 2 % of trials and none in > 40 %.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

from dynaguide_experiments.calvin.config import ARTICULATED_TARGETS, CalvinExperimentConfig
from dynaguide_experiments.calvin.evaluate import run_experiment
from dynaguide_experiments.calvin.harness import read_trials, reversal_counts

#: the issue's targets for a base policy that finishes (checked and reported, never tuned on evaluation seeds)
TARGETS = {"finish_rate_min": 0.9, "reversal_rate_max": 0.1, "first_share_min": 0.02, "first_share_max": 0.4}


def expert_reversal_rate(path: str | Path, period: int) -> dict:
    """Reversals of the recorded expert actions of every segment in ``path``, in ``period``-step windows."""
    reversals = pairs = 0
    with h5py.File(path, "r") as f:
        for name in f["data"]:
            r, n = reversal_counts(f["data"][name]["actions"][:], period)
            reversals, pairs = reversals + r, pairs + n
    return {"reversal_rate": reversals / pairs if pairs else float("nan"), "chunk_pairs": pairs}


def summarise_base(trials: list[dict], targets=ARTICULATED_TARGETS) -> dict:
    """Finish rate, reversal rate and first-behaviour counts of base-policy trial records, plus whether each
    of :data:`TARGETS` is met."""
    n = len(trials)
    finished = sum(1 for t in trials if t["label"] != "no_behaviour")
    reversals = sum(int(t.get("reversals", 0)) for t in trials)
    pairs = sum(int(t.get("chunk_pairs", 0)) for t in trials)
    first = Counter(t["label"] for t in trials)
    shares = {b: first[b] / n if n else 0.0 for b in targets}
    finish_rate = finished / n if n else float("nan")
    reversal_rate = reversals / pairs if pairs else float("nan")
    return {
        "n": n, "finish_rate": finish_rate, "reversal_rate": reversal_rate, "chunk_pairs": pairs,
        "first_behaviours": dict(sorted(first.items())),
        "targets": TARGETS,
        "meets": {"finish_rate": finish_rate >= TARGETS["finish_rate_min"],
                  "reversal_rate": reversal_rate <= TARGETS["reversal_rate_max"],
                  "play_not_specialist": all(TARGETS["first_share_min"] <= s <= TARGETS["first_share_max"]
                                             for s in shares.values())},
        "mean_steps": float(np.mean([t["steps"] for t in trials])) if n else float("nan"),
    }


def base_check(cfg: CalvinExperimentConfig, out_dir: str | Path, policy_dir: str | None = None, command: str = "",
               progress: bool = True) -> dict:
    """Run (or resume) the base policy's validation cells in ``out_dir`` and summarise them; ``cfg.eval`` must
    use the validation split (its trials per target and seed)."""
    if cfg.eval.split != "validation":
        raise ValueError("the base check runs on validation seeds only (eval.split: validation)")
    out = Path(out_dir)
    run_experiment(cfg, "articulated", ("base",), out, command=command, policy_dir=policy_dir, progress=progress)
    trials = [t for target in ARTICULATED_TARGETS for t in read_trials(out / "trials" / f"{target}__base.jsonl")]
    result = summarise_base(trials)
    result["expert_reference"] = expert_reversal_rate(cfg.data.validation, 8)
    result.update({"command": command, "policy": str(policy_dir or Path(cfg.training.export_dir) / "policy"),
                   "split": cfg.eval.split, "seed": cfg.eval.seed, "trials_per_target": cfg.eval.trials,
                   "horizon": cfg.eval.horizon, "start_poses": cfg.data.validation})
    (out / "base_check.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
