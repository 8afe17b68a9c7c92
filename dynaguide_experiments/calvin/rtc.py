"""Real-time chunking under inference delay on CALVIN (issue 24): splice smoothness and steering.

    dynaguide calvin rtc --config config/rtc_validation.yaml --targets switch_on,button_on,drawer_open \\
        --trials 8 --latency-steps 8 --delays 4,8,12 --out results/rtc

Two measurements, on validation start poses and trial seeds only (``EvalConfig.split = "validation"``):

* ``splice_jump`` (open loop): for each target's trials 0 … n−1 (the steering run's scenes), chunk A is planned
  (DynaGuide, guided towards the target) at t = 0; the robot executes A for s = min(P, T − o − d) steps, the next
  chunk B is planned from the observation at t = s, and the robot runs A's steps s … s + d − 1 during B's delay d,
  then B from its step d.  B is sampled twice from the same noise: naive (no prefix) and RTC (A as prefix, first
  o + d steps frozen, soft over the overlap T − s).  Per splice: the jump ``‖B[o+d] − A[o+s+d−1]‖`` over the
  six motion dimensions clipped to [−1, 1] (action units: 2 cm / 0.05 rad per step), and whether the net
  translations of the 4 executed steps before and after the splice reverse (the harness's definition: cosine below
  ``REVERSAL_COSINE``, a turn past 90°, both moving at least ``REVERSAL_MIN_MOVE`` scaled to the window, 0.25
  units); every splice's cosine is kept (``splice_turns``, None where it does not count) so that any threshold can be
  recomputed.  Reference: the median step-to-step change inside chunk A's executed part.
* ``steering`` (closed loop, :mod:`dynaguide_experiments.calvin.evaluate`): DynaGuide with ``latency_steps = 0``
  (lockstep), ``latency_steps = d`` (naive splice) and ``latency_steps = d`` with RTC, the same trial seeds;
  rate = trials whose first behaviour is the target / all trials.  The closed-loop splice jumps of the naive and RTC
  runs are reported too.

Writes ``<out>.json`` (``results/rtc.json`` for ``--out results/rtc``; trial logs under ``<out>/``) and
``<out>.png``.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import torch

from dynaguide.embedders.factory import make_embedder
from dynaguide.guidance.objectives import action_transform_for
from dynaguide_experiments.calvin.config import CalvinExperimentConfig
from dynaguide_experiments.calvin.evaluate import (check_embedder, env_config_for,
                                                   load_models, read_trials, run_experiment, seed_index_of)
from dynaguide_experiments.calvin.harness import (REVERSAL_COSINE, REVERSAL_MIN_MOVE, CellRunner,
                                                  Planners, Task, load_goal_images, load_start_poses,
                                                  trial_seed, wilson_interval)
from dynaguide.guidance.rtc import RTCConfig, prefix_weights, shift_prefix

#: executed steps on each side of a splice whose net translations are compared (reversal across the splice)
SPLICE_WINDOW = 4

#: RTC variants the open-loop splice measurement also reports (beside the configured ``EvalConfig.rtc``)
SPLICE_VARIANTS = {"soft": RTCConfig(enabled=True, mode="soft", jacobian=False),
                   "hard": RTCConfig(enabled=True, mode="hard", jacobian=False),
                   "hard_jacobian": RTCConfig(enabled=True, mode="hard", jacobian=True),
                   "hard_jacobian_beta5": RTCConfig(enabled=True, mode="hard", jacobian=True, beta=5.0)}


def variant_name(rtc: RTCConfig) -> str:
    """``"soft"``, ``"hard_jacobian_beta5"``, …: the RTC settings in a name (trial-log directory ``rtc_<name>``)."""
    return "_".join([rtc.mode] + (["jacobian"] if rtc.jacobian else []) + ([f"beta{rtc.beta:g}"] if rtc.beta != 1
                                                                                   else []))


def _splice_turn(before: np.ndarray, after: np.ndarray) -> float | None:
    """Cosine between the net xyz translations ``(3,)`` of the windows either side of a splice, or None when
    either moves less than :data:`REVERSAL_MIN_MOVE` scaled to the window."""
    min_move = REVERSAL_MIN_MOVE * SPLICE_WINDOW / 8
    a, b = float(np.linalg.norm(before)), float(np.linalg.norm(after))
    if a < min_move or b < min_move:
        return None
    return float(np.dot(before, after)) / (a * b)


def splice_benchmark(cfg: CalvinExperimentConfig, targets: Sequence[str], delays: Sequence[int], trials: int,
                     policy_dir: str | None = None, dynamics_dir: str | None = None) -> dict:
    """Open-loop splice smoothness naive vs RTC at each delay (module docstring).  Returns per delay the median
    jump (action units), the reversal count over the counted splices, and the reference step change."""
    ev = cfg.eval
    policy, dynamics = load_models(cfg, policy_dir, dynamics_dir, map_actions=True)
    embedder = make_embedder(cfg.embedder)
    check_embedder(dynamics, embedder)
    goals = {t: load_goal_images(cfg.data.goals, t, ev.goal_set, ev.goals_per_target) for t in targets}
    planners = Planners(policy, dynamics, embedder, ev, goals, env_config_for(cfg).max_rel_pos,
                        action_transform=action_transform_for(policy, dynamics))
    horizon, o, p = policy.horizon, int(getattr(policy, "action_offset", 0)), policy.cfg.n_action_steps
    runner = CellRunner(env_config_for(cfg), dataclasses.replace(ev, batch_envs=trials),
                        load_start_poses(cfg.data.validation, ev.split), policy.cfg.n_obs_steps, p,
                        policy.unnormalize_actions, action_offset=o, cameras=policy.cfg.image_keys)
    variants = {"rtc": dataclasses.replace(ev.rtc, enabled=True), **SPLICE_VARIANTS}
    out: dict = {"delays": list(delays), "naive": [], "rtc": [], "naive_reversals": [], "rtc_reversals": [],
                 "counted_splices": [], "within_chunk_step": [], "execution_steps": [], "n": 0,
                 "rtc_settings": dataclasses.asdict(variants["rtc"]), "variants": {},
                 "reversal_definition": {"cosine_below": REVERSAL_COSINE,
                                         "min_move_units": REVERSAL_MIN_MOVE * SPLICE_WINDOW / 8,
                                         "window_steps": SPLICE_WINDOW},
                 "splice_turns": {}}
    try:
        for d in delays:
            s = min(p, horizon - o - d)
            if s < SPLICE_WINDOW or o + d + SPLICE_WINDOW > horizon:
                raise ValueError(f"delay {d} leaves no room in a {horizon}-step chunk (offset {o})")
            kinds = ["naive", *variants]
            jumps = {k: [] for k in kinds}
            turns: dict[str, list] = {k: [] for k in kinds}
            reversals, counted, within = {k: 0 for k in kinds}, 0, []
            for target in targets:
                task = Task.single(target)
                planner = planners.make("dynaguide", task)
                planners_rtc = {}
                for kind, rtc in variants.items():
                    planners.cfg = dataclasses.replace(ev, rtc=rtc, latency_steps=max(1, ev.latency_steps))
                    planners_rtc[kind] = planners.make("dynaguide", task)
                planners.cfg = ev
                index = seed_index_of("articulated", target)
                slots = [runner._start(runner._env(i), task, i, trial_seed(ev, index, i)) for i in range(trials)]

                def observe(prefix=None, weights=None, slots=slots):
                    return runner.observation(slots, prefix=prefix, prefix_weights=weights)

                with torch.no_grad():
                    a_norm = planner(observe())
                    a_raw = policy.unnormalize_actions(a_norm).cpu().numpy()
                for i, sl in enumerate(slots):
                    env = runner.envs[i]
                    for k, action in enumerate(a_raw[i, o:o + s]):
                        obs_k = env.step(action)[0]
                        if k >= s - runner.n_obs_steps:
                            runner.observe_frame(sl, env, obs_k["robot_obs"])
                states = [sl.generator.get_state() for sl in slots]
                chunks = {}
                for kind in kinds:
                    for sl, state in zip(slots, states):
                        sl.generator.set_state(state)      # the same noise for all
                    prefix = weights = None
                    if kind != "naive":
                        prefix = shift_prefix(a_norm, s)
                        weights = prefix_weights(horizon, o + d, horizon - s)
                    plan = planner if kind == "naive" else planners_rtc[kind]
                    with torch.no_grad():
                        chunks[kind] = policy.unnormalize_actions(plan(observe(prefix, weights))).cpu().numpy()
                for i in range(trials):
                    executed_a = np.clip(a_raw[i, o:o + s + d], -1.0, 1.0)
                    within.extend(np.linalg.norm(np.diff(executed_a[:, :6], axis=0), axis=1).tolist())
                    last = executed_a[-1]
                    before = executed_a[-SPLICE_WINDOW:, :3].sum(axis=0)
                    verdicts = {}
                    for kind, b in chunks.items():
                        b = np.clip(b[i], -1.0, 1.0)
                        jumps[kind].append(float(np.linalg.norm(b[o + d, :6] - last[:6])))
                        turn = _splice_turn(before, b[o + d:o + d + SPLICE_WINDOW, :3].sum(axis=0))
                        turns[kind].append(None if turn is None else round(turn, 4))
                        verdicts[kind] = None if turn is None else turn < REVERSAL_COSINE
                    if all(v is not None for v in verdicts.values()):
                        counted += 1
                        for kind in verdicts:
                            reversals[kind] += int(verdicts[kind])
            for kind in kinds:
                entry = out if kind in ("naive", "rtc") else out["variants"].setdefault(
                    kind, {"settings": dataclasses.asdict(variants[kind])})
                for key, value in ((kind if entry is out else "median", round(float(np.median(jumps[kind])), 4)),
                                   (f"{kind}_reversals" if entry is out else "reversals", reversals[kind]),
                                   (f"{kind}_mean" if entry is out else "mean", round(float(np.mean(jumps[kind])), 4))):
                    entry.setdefault(key, []).append(value)
            out["splice_turns"][str(d)] = turns
            out["counted_splices"].append(counted)
            out["within_chunk_step"].append(round(float(np.median(within)), 4))
            out["execution_steps"].append(s)
            out["n"] = len(jumps["naive"])
    finally:
        runner.close()
    return out


def _rate(trials: list[dict]) -> tuple[int, int]:
    return sum(1 for t in trials if t["success"]), len(trials)


def _summary(name: str, directory: Path, targets: Sequence[str], trials: int, result: dict) -> dict:
    """``{name: rate}`` of one variant's trial logs; its CI, per-target counts, closed-loop splice jumps and
    reversals go into ``result``'s sub-dicts."""
    records = [t for target in targets for t in read_trials(directory / "trials" / f"{target}__dynaguide.jsonl")
               if t["trial"] < trials]
    k, n = _rate(records)
    result["n"] = n
    result["ci95"][name] = [round(x, 4) for x in wilson_interval(k, n)]
    result["per_target"][name] = {t: _rate([r for r in records if r["target"] == t]) for t in targets}
    jumps = [j for r in records for j in r.get("splice_jumps", [])]
    if jumps:
        result["splice_jump_closed_loop"][name] = {"median": round(float(np.median(jumps)), 4),
                                                   "mean": round(float(np.mean(jumps)), 4), "splices": len(jumps)}
    result.setdefault("reversals", {})[name] = [sum(r["reversals"] for r in records),
                                                sum(r["chunk_pairs"] for r in records)]
    return {name: round(k / n, 4) if n else float("nan")}


def steering(cfg: CalvinExperimentConfig, targets: Sequence[str], latency: int, out: Path, command: str,
             policy_dir: str | None = None, dynamics_dir: str | None = None) -> dict:
    """DynaGuide in lockstep, with a naive splice and with RTC at ``latency`` steps (resumable trial logs under
    ``out/<variant>/``)."""
    rtc = dataclasses.replace(cfg.eval.rtc, enabled=True)
    rtc_dir = "rtc" if variant_name(rtc) == "soft" else f"rtc_{variant_name(rtc)}"
    variants = {"lockstep": dataclasses.replace(cfg.eval, latency_steps=0),
                "naive": dataclasses.replace(cfg.eval, latency_steps=latency),
                "rtc": dataclasses.replace(cfg.eval, latency_steps=latency, rtc=rtc)}
    result: dict = {"latency_steps": latency, "targets": list(targets), "per_target": {}, "ci95": {},
                    "splice_jump_closed_loop": {}, "rtc_settings": dataclasses.asdict(rtc), "dirs": {}}
    for name, ev in variants.items():
        directory = out / (rtc_dir if name == "rtc" else name)
        t0 = time.perf_counter()
        run_experiment(dataclasses.replace(cfg, eval=ev), "articulated", ["dynaguide"], directory, targets=targets,
                       command=command, policy_dir=policy_dir, dynamics_dir=dynamics_dir, progress=False)
        result.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        result["dirs"][name] = str(directory)
        result.update(_summary(name, directory, targets, ev.trials, result))
    # RTC variants measured by earlier runs into the same directory (other --rtc-mode / --rtc-jacobian settings)
    for directory in sorted(out.glob("rtc*")):
        if directory.is_dir() and directory.name != rtc_dir:
            name = "rtc_soft" if directory.name == "rtc" else directory.name
            result.setdefault("rtc_variants", {})[name] = _summary(name, directory, targets, cfg.eval.trials,
                                                                   result)[name]
    return result


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    sj = result.get("splice_jump")
    if sj:
        ax = axes[0]
        x = np.arange(len(sj["delays"]))
        series = [("naive splice", sj["naive"], sj["naive_reversals"]),
                  (f"RTC ({variant_name(RTCConfig(**sj['rtc_settings']))}, used)", sj["rtc"], sj["rtc_reversals"])]
        series += [(f"RTC {k}", v["median"], v["reversals"]) for k, v in sj.get("variants", {}).items()
                   if v["settings"] != sj["rtc_settings"]]
        width = 0.8 / len(series)
        for j, (label, ys, revs) in enumerate(series):
            xs = x + (j - (len(series) - 1) / 2) * width
            ax.bar(xs, ys, width, label=label)
            for i in range(len(x)):
                ax.text(xs[i], ys[i], f"{revs[i]}", ha="center", va="bottom", fontsize=6)
        ax.plot(x, sj["within_chunk_step"], "k_", markersize=40, label="step change inside a chunk")
        ax.set_xticks(x, [f"d = {d}" for d in sj["delays"]])
        ax.set_ylabel("median jump at the splice (action units)")
        ax.set_title(f"splice jump, open loop (n = {sj['n']} per delay; numbers: reversals of "
                     f"{sj['counted_splices']} counted)", fontsize=8)
        ax.legend(fontsize=8)
    st = result.get("steering")
    if st:
        ax = axes[1]
        names = ["lockstep", "naive", "rtc"]
        rates = [100 * st[n] for n in names]
        err = [[100 * (st[n] - st["ci95"][n][0]) for n in names], [100 * (st["ci95"][n][1] - st[n]) for n in names]]
        ax.bar(names, rates, yerr=err, capsize=3, color=["grey", "tab:blue", "tab:orange"])
        ax.set_ylim(0, 100)
        ax.set_ylabel("target behaviour first (%)")
        ax.set_title(f"steering, d = {st['latency_steps']} ({', '.join(st['targets'])}; n = {st['n']})",
                     fontsize=9)
    fig.text(0.01, 0.01, result.get("command", "")[:200], fontsize=6, family="monospace")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(png, dpi=120)
    plt.close(fig)


def run_rtc(cfg: CalvinExperimentConfig, targets: Sequence[str], trials: int, latency: int, delays: Sequence[int],
            out: Path, parts: Sequence[str] = ("splice", "steering"), policy_dir: str | None = None,
            dynamics_dir: str | None = None) -> dict:
    """Both measurements; writes ``out.with_suffix('.json')`` and ``.png`` (parts not rerun are kept)."""
    if cfg.eval.split != "validation":
        raise ValueError("the RTC measurements run on validation seeds: pass --split validation")
    command = "dynaguide " + shlex.join(sys.argv[1:])
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, trials=trials))
    json_path, png = out.with_suffix(".json"), out.with_suffix(".png")
    result = json.loads(json_path.read_text()) if json_path.is_file() else {}
    result.update({"command": command, "rtc": dataclasses.asdict(cfg.eval.rtc), "guidance":
                   dataclasses.asdict(cfg.eval.guidance), "split": cfg.eval.split})
    torch.set_num_threads(1)
    if "splice" in parts:
        result["splice_jump"] = {**splice_benchmark(cfg, targets, delays, trials, policy_dir, dynamics_dir),
                                 "command": command}
        _write(result, json_path, png)
    if "steering" in parts:
        result["steering"] = {**steering(cfg, targets, latency, out, command, policy_dir, dynamics_dir),
                              "command": command}
        _write(result, json_path, png)
    return result


def _write(result: dict, json_path: Path, png: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, png)
