"""Experiments over the harness: cells of (target, method), results JSON, Markdown table, bar plot.

The cells run here one after another, or with ``ray=`` on a Ray cluster
(:mod:`dynaguide_experiments.calvin.ray_eval`); both write the same files.

``results/calvin/<experiment>/`` gets ``trials/<target>__<method>.jsonl`` (one line per finished trial:
the resume log, committed with the results), ``results.json``, ``results.md`` and ``bars.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import torch

from calvin_bridge.config import CalvinEnvConfig
from dynaguide.checkpoint import load_checkpoint
from dynaguide.config import to_dict
from dynaguide.embedders.factory import make_embedder
from dynaguide.embedders.identity import embedder_id
from dynaguide.guidance.objectives import action_transform_for
from dynaguide_experiments.calvin.config import (ARTICULATED_TARGETS, METHODS, MOVABLE_TARGETS,
                                                 MULTI_OBJECTIVE_SETUPS, CalvinExperimentConfig)
from dynaguide_experiments.calvin.harness import (POLICY_CAMERA, CellRunner, Planners, Task, load_goal_images,
                                                  load_start_poses, read_trials, summarise)

logger = logging.getLogger(__name__)

EXPERIMENTS = {"articulated": ARTICULATED_TARGETS, "movable": MOVABLE_TARGETS,
               "underspecified": ARTICULATED_TARGETS, "multi_objective": tuple(MULTI_OBJECTIVE_SETUPS)}
#: experiments that differ from another one only in their goal images (same targets, same trial seeds)
EXPERIMENT_GOAL_SETS = {"underspecified": "underspecified"}


def task_of(experiment: str, name: str) -> Task:
    """The cell task ``name`` of ``experiment``: a MultiObjectives setup or a single target behaviour."""
    if experiment == "multi_objective":
        return Task.from_setup(name, MULTI_OBJECTIVE_SETUPS[name])
    return Task.single(name)


def seed_index_of(experiment: str, name: str) -> int:
    """The index ``i`` of a cell's trial seeds ``seed + 1000 * i + trial``: its position among the experiment's
    targets — but MultiObjectives setups that differ only in ``sum_positives`` share it (paired scenes)."""
    names = EXPERIMENTS[experiment]
    if experiment == "multi_objective":
        key = dataclasses.replace(MULTI_OBJECTIVE_SETUPS[name], sum_positives=False)
        return next(i for i, n in enumerate(names)
                    if dataclasses.replace(MULTI_OBJECTIVE_SETUPS[n], sum_positives=False) == key)
    return names.index(name)


def env_config_for(cfg: CalvinExperimentConfig) -> CalvinEnvConfig:
    size = cfg.data.static_size
    base = CalvinEnvConfig()
    return dataclasses.replace(base, static_camera=dataclasses.replace(base.static_camera, width=size, height=size))


#: methods that steer through the latent dynamics model
DYNAMICS_METHODS = ("dynaguide", "gpc")


def load_models(cfg: CalvinExperimentConfig, policy_dir: str | None = None, dynamics_dir: str | None = None,
                need_dynamics: bool = True, policy_kind: str = "dynaguide", map_actions: bool = False):
    """``(policy, dynamics or None)`` from the export directory (or the given checkpoint directories).

    ``policy_kind``: ``"dynaguide"`` (our checkpoint) or ``"lerobot"`` (a LeRobot DiffusionPolicy
    ``save_pretrained`` directory, :func:`dynaguide.policy.lerobot_adapter.load_policy`; its image feature
    is fed the static camera, resized to the checkpoint's size).  ``map_actions``: accept a dynamics model
    whose action normalisation (min/max) differs from the policy's — the caller maps chunks with
    :func:`dynaguide.guidance.objectives.action_transform_for`; a horizon or action-dimension mismatch always raises.
    """
    from dynaguide.policy.lerobot_adapter import LeRobotAdapterConfig, load_policy

    export = Path(cfg.training.export_dir)
    path = Path(policy_dir) if policy_dir else export / "policy"
    if policy_kind == "dynaguide":
        policy, _ = load_checkpoint(path)
    else:
        policy = load_policy(policy_kind, path, image_keys=(POLICY_CAMERA,),
                             lerobot=LeRobotAdapterConfig(resize_images=True))
    if not need_dynamics:
        return policy.eval(), None
    dynamics, _ = load_checkpoint(Path(dynamics_dir) if dynamics_dir else export / "dynamics")
    if map_actions:
        action_transform_for(policy, dynamics)   # raises unless the chunks can be mapped
    else:
        dynamics.check_compatible_with(policy)
    return policy.eval(), dynamics.eval()


def check_embedder(dynamics, embedder) -> None:
    """Refuse to steer with tokens of another embedder than the one the dynamics model was trained on."""
    expected = dynamics.cfg.embedder_id
    if expected is not None and embedder_id(embedder) != expected:
        raise ValueError(f"the dynamics model was trained on embedder {expected} but the experiment config builds "
                         f"{embedder_id(embedder)}; set the config's embedder section to match")


@dataclass(frozen=True)
class Sweep:
    """The cells one evaluation run covers: ``targets`` × ``methods`` of ``experiment``, results in ``out``, and
    the models they are evaluated with (``policy_dir`` … ``gc_dir``; None = the config's export directory)."""

    cfg: CalvinExperimentConfig
    experiment: str
    methods: tuple[str, ...]
    targets: tuple[str, ...]
    out: Path
    policy_dir: str | None = None
    dynamics_dir: str | None = None
    gc_dir: str | None = None
    policy_kind: str = "dynaguide"

    @classmethod
    def plan(cls, cfg: CalvinExperimentConfig, experiment: str, methods: Sequence[str], out_dir: str | Path,
             targets: Sequence[str] | None = None, **models) -> Sweep:
        """Check the experiment, methods and targets (ValueError naming the known ones)."""
        if experiment not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {experiment!r}; known: {sorted(EXPERIMENTS)}")
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {METHODS}")
        targets = tuple(targets or EXPERIMENTS[experiment])
        unknown = sorted(set(targets) - set(EXPERIMENTS[experiment]))
        if unknown:
            raise ValueError(f"unknown targets {unknown} for experiment {experiment!r}; "
                             f"known: {EXPERIMENTS[experiment]}")
        if experiment in EXPERIMENT_GOAL_SETS:   # e.g. UnderspecifiedObjectives: ArticulatedParts with lesser goals
            cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval,
                                                                    goal_set=EXPERIMENT_GOAL_SETS[experiment]))
        return cls(cfg, experiment, tuple(methods), targets, Path(out_dir), **models)

    def trials_file(self, target: str, method: str) -> Path:
        return self.out / "trials" / f"{target}__{method}.jsonl"

    def pending(self) -> list[tuple[str, str, set[int]]]:
        """``(target, method, finished trials)`` of every cell not complete yet, in the sequential run's order."""
        cells = []
        for target in self.targets:
            for method in self.methods:
                done = {t["trial"] for t in read_trials(self.trials_file(target, method))
                        if t["trial"] < self.cfg.eval.trials}
                if len(done) < self.cfg.eval.trials:
                    cells.append((target, method, done))
        return cells


class CellEvaluator:
    """The models, goals and environments one process evaluates the cells of a :class:`Sweep` with (loaded once;
    the sequential run has one, a Ray run one per worker)."""

    def __init__(self, sweep: Sweep) -> None:
        cfg, methods, ev = sweep.cfg, sweep.methods, sweep.cfg.eval
        self.sweep = sweep
        self.tasks = {name: task_of(sweep.experiment, name) for name in sweep.targets}
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        policy, dynamics = load_models(cfg, sweep.policy_dir, sweep.dynamics_dir,
                                       need_dynamics=any(m in DYNAMICS_METHODS for m in methods),
                                       policy_kind=sweep.policy_kind, map_actions=True)
        action_transform = action_transform_for(policy, dynamics) if dynamics is not None else None
        gc_default = Path(cfg.training.export_dir) / "gc_policy"
        gc_dir = sweep.gc_dir or (str(gc_default) if "goal_conditioned" in methods and gc_default.is_dir() else None)
        gc_policy = load_checkpoint(Path(gc_dir))[0].eval() if gc_dir else None
        embedder = make_embedder(cfg.embedder)
        if dynamics is not None:
            check_embedder(dynamics, embedder)
        goals = {}
        goal_behaviours = {b for task in self.tasks.values() for b in (*task.positives, *task.negatives)}
        if ev.negatives == "others":
            goal_behaviours |= {b for name in EXPERIMENTS[sweep.experiment]
                                for b in task_of(sweep.experiment, name).positives}
        for b in sorted(goal_behaviours):
            goals[b] = load_goal_images(cfg.data.goals, b, ev.goal_set, ev.goals_per_target)
        start_poses = load_start_poses(cfg.data.validation, ev.split)
        env_cfg = env_config_for(cfg)
        self.load_s = round(time.perf_counter() - t0, 1)
        self.planners = Planners(policy, dynamics, embedder, ev, goals, env_cfg.max_rel_pos, gc_policy,
                                 action_transform=action_transform)
        self.runner = CellRunner(env_cfg, ev, start_poses, policy.cfg.n_obs_steps,
                                 ev.commit_steps or policy.cfg.n_action_steps, policy.unnormalize_actions,
                                 action_offset=int(getattr(policy, "action_offset", 0)),
                                 cameras=policy.cfg.image_keys)

    def planner(self, target: str, method: str):
        return self.planners.make(method, self.tasks[target])

    def run(self, target: str, method: str, done: set[int], record, progress: bool = False, planner=None) -> None:
        """The trials of cell (``target``, ``method``) not in ``done``; ``record(result)`` per finished trial
        (the result already carries ``method``).  ``planner``: :meth:`planner` made beforehand (or here)."""
        planner = planner if planner is not None else self.planner(target, method)
        self.runner.run_cell(self.tasks[target], seed_index_of(self.sweep.experiment, target), planner, done,
                             lambda result: record({**result, "method": method}), progress,
                             desc=f"{target}/{method}")

    def close(self) -> None:
        self.runner.close()


def append_trials(path: Path):
    """The trials file of a cell opened for appending (a line torn by a kill is ended first, so the next record
    parses)."""
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with path.open("a") as log:
            log.write("\n")
    return path.open("a")


def run_experiment(cfg: CalvinExperimentConfig, experiment: str, methods: Sequence[str], out_dir: str | Path,
                   targets: Sequence[str] | None = None, command: str = "", policy_dir: str | None = None,
                   dynamics_dir: str | None = None, gc_dir: str | None = None, progress: bool = True,
                   policy_kind: str = "dynaguide", ray=None) -> dict:
    """Run (or resume) every (target, method) cell of ``experiment`` and write the result files.

    ``ray``: a :class:`dynaguide_experiments.calvin.ray_eval.RayEvalConfig` to run the cells on a Ray cluster
    (same per-trial seeds, same result files); None runs them here, one after another."""
    sweep = Sweep.plan(cfg, experiment, methods, out_dir, targets, policy_dir=policy_dir, dynamics_dir=dynamics_dir,
                       gc_dir=gc_dir, policy_kind=policy_kind)
    (sweep.out / "trials").mkdir(parents=True, exist_ok=True)
    if ray is not None:
        from dynaguide_experiments.calvin.ray_eval import run_on_ray

        stages = run_on_ray(sweep, ray, progress)
    else:
        stages = _run_here(sweep, progress)
    return write_results(sweep.cfg, experiment, sweep.methods, sweep.out, sweep.targets, command, stages)


def _run_here(sweep: Sweep, progress: bool) -> dict[str, float]:
    evaluator = CellEvaluator(sweep)
    stages: dict[str, float] = {"load_s": evaluator.load_s}
    try:
        for target, method, done in sweep.pending():
            start = time.perf_counter()
            planner = evaluator.planner(target, method)   # a method that cannot run this cell: before any file
            with append_trials(sweep.trials_file(target, method)) as log:
                def record(result: dict, log=log) -> None:
                    log.write(json.dumps(result) + "\n")
                    log.flush()
                evaluator.run(target, method, done, record, progress, planner)
            stages[f"{target}/{method}_s"] = round(time.perf_counter() - start, 1)
    finally:
        evaluator.close()
    return stages


def write_results(cfg: CalvinExperimentConfig, experiment: str, methods: Sequence[str], out: Path,
                  targets: Sequence[str], command: str, stages: dict | None = None) -> dict:
    """Summarise every trials file of the experiment into ``results.json``, ``results.md``, ``bars.png``."""
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    behaviours: dict[str, dict] = {}
    for target in EXPERIMENTS[experiment]:
        for method in METHODS:
            trials = [t for t in read_trials(out / "trials" / f"{target}__{method}.jsonl")
                      if t["trial"] < cfg.eval.trials]
            if trials:
                behaviours.setdefault(target, {})[method] = summarise(trials, task_of(experiment, target))
    stages_all = {**previous.get("stages_s", {}), **(stages or {})}
    result = {"experiment": experiment, "behaviours": behaviours,
              "settings": {"eval": to_dict(cfg.eval), "embedder": to_dict(cfg.embedder), "models": to_dict(cfg.model),
                           "static_size": cfg.data.static_size},
              "stages_s": stages_all, "command": command or previous.get("command", ""),
              # every command that added cells to this directory, oldest first (cells of earlier runs are kept)
              "commands": _commands(previous, command),
              "machine": {"cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}}
    result["means"] = {m: float(np.mean([behaviours[t][m]["rate"] for t in behaviours if m in behaviours[t]]))
                       for m in METHODS if any(m in behaviours[t] for t in behaviours)}
    if experiment == "multi_objective":
        result["setups"] = {name: dataclasses.asdict(MULTI_OBJECTIVE_SETUPS[name]) for name in behaviours}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    if experiment == "multi_objective":
        (out / "results.md").write_text(markdown_table(result) + multi_objective_table(result))
        plot_distributions(result, out / "distributions.png")
    else:
        (out / "results.md").write_text(markdown_table(result))
    plot_bars(result, out / "bars.png")
    return result


def multi_objective_table(result: dict) -> str:
    """Positive / negative / other / no-behaviour shares and the whole first-behaviour distribution per cell."""
    lines = ["## Shares of first behaviours (MultiObjectives)", "",
             "| setup | method | positive | negative | other behaviour | no behaviour | distribution |",
             "|---|---|---|---|---|---|---|"]
    for name, cells in result["behaviours"].items():
        for m in METHODS:
            c = cells.get(m)
            if not c:
                continue
            shares = [percent_ci(c[f"{k}_share"], c[f"{k}_share_ci95"])
                      for k in ("positive", "negative", "other", "none")]
            dist = ", ".join(f"{label} {count}" for label, count in
                             sorted(c["distribution"].items(), key=lambda kv: -kv[1]))
            lines.append(f"| {name} | {m} | " + " | ".join(shares) + f" | {dist} |")
    lines += ["", "Setups (positives / negatives / scene): " + "; ".join(
        f"`{n}`: +{list(s['positives'])} -{list(s['negatives'])} scene {list(s['scene'])}"
        + (" (sum of per-behaviour logsumexps)" if s["sum_positives"] else "")
        for n, s in result.get("setups", {}).items()), ""]
    return "\n".join(lines)


def plot_distributions(result: dict, png: Path) -> None:
    """Stacked first-behaviour distributions, one bar per (setup, method) — like the paper's Fig. 5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(name, m, cells[m]) for name, cells in result["behaviours"].items() for m in METHODS if m in cells]
    if not bars:
        return
    labels = sorted({label for _, _, c in bars for label in c["distribution"]},
                    key=lambda lab: (lab == "no_behaviour", lab))
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(bars) + 3), 4.2))
    for i, (name, _, c) in enumerate(bars):
        positives, negatives = (_labels(result, name, kind) for kind in ("positives", "negatives"))
        bottom = 0.0
        for j, label in enumerate(labels):
            share = 100 * c["distribution"].get(label, 0) / c["n"]
            colour = "lightgrey" if label == "no_behaviour" else cmap(j % 20)
            positive, negative = label in positives, label in negatives
            ax.bar(i, share, 0.7, bottom=bottom, color=colour, hatch="//" if negative else None,
                   edgecolor="black" if positive or negative else "none")
            bottom += share
    ax.set_xticks(range(len(bars)), [f"{name.replace('+', '+' + chr(10))}\n{m}" for name, m, _ in bars], fontsize=7)
    ax.set_ylabel("first behaviour (% of trials)")
    ax.set_ylim(0, 100)
    handles = [plt.Rectangle((0, 0), 1, 1, color="lightgrey" if lab == "no_behaviour" else cmap(j % 20))
               for j, lab in enumerate(labels)]
    ax.legend(handles, labels, fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title("CALVIN multi_objective: first-behaviour distribution (positives outlined, negatives hatched)",
                 fontsize=10)
    fig.text(0.01, 0.01, result["command"][:160], fontsize=6, family="monospace")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _labels(result: dict, setup: str, kind: str) -> set[str]:
    """Evaluation labels of a setup's ``positives`` or ``negatives``."""
    from dynaguide_experiments.calvin.harness import label_of

    return {label_of(b) for b in result.get("setups", {}).get(setup, {}).get(kind, ())}


def percent_ci(rate: float, ci: Sequence[float]) -> str:
    """``"45 % [26, 66]"``: a rate and its 95 % interval, in whole percent."""
    return f"{100 * rate:.0f} % [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"


def error_bars(cells: Sequence[dict]) -> list[list[float]]:
    """Matplotlib ``yerr`` in percent (below, above) of cells with ``rate`` and ``ci95``."""
    return [[100 * (c["rate"] - c["ci95"][0]) for c in cells], [100 * (c["ci95"][1] - c["rate"]) for c in cells]]


def _commands(previous: dict, command: str) -> list[str]:
    commands = list(previous.get("commands") or ([previous["command"]] if previous.get("command") else []))
    if command and command not in commands:
        commands.append(command)
    return commands


def markdown_table(result: dict) -> str:
    methods = [m for m in METHODS if m in result["means"]]
    what = ("success rate (first behaviour a positive one; with negatives only: a behaviour outside the negatives)"
            if result["experiment"] == "multi_objective" else "target-behaviour rate (first behaviour = target)")
    lines = [f"# CALVIN {result['experiment']}: {what}", "",
             "Commands: " + "; ".join(f"`{c}`" for c in result.get("commands") or [result["command"]]), "",
             "| target | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for target, cells in result["behaviours"].items():
        row = []
        for m in methods:
            c = cells.get(m)
            row.append(f"{percent_ci(c['rate'], c['ci95'])} (n={c['n']})" if c else "–")
        lines.append(f"| {target} | " + " | ".join(row) + " |")
    total = len(result["behaviours"])

    def mean_cell(m: str) -> str:
        k = sum(1 for cells in result["behaviours"].values() if m in cells)
        return f"**{100 * result['means'][m]:.1f} %**" + ("" if k == total else f" ({k} of {total} targets)")

    lines.append("| **mean** | " + " | ".join(mean_cell(m) for m in methods) + " |")
    lines += ["", "Rates with 95 % Wilson intervals; `distribution` in results.json lists every first behaviour.", ""]
    return "\n".join(lines)


def plot_bars(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if m in result["means"]]
    targets = list(result["behaviours"])
    if not targets or not methods:
        return
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(targets) + 2), 3.8))
    for j, m in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for i, t in enumerate(targets):
            c = result["behaviours"][t].get(m)
            if c:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(100 * c["rate"])
                lo.append(100 * (c["rate"] - c["ci95"][0]))
                hi.append(100 * (c["ci95"][1] - c["rate"]))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=f"{m} (mean {100 * result['means'][m]:.0f} %)")
    ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right")
    ax.set_ylabel("target behaviour first (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(f"CALVIN {result['experiment']}", fontsize=10)
    fig.text(0.01, 0.01, result["command"][:160], fontsize=6, family="monospace")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(png, dpi=120)
    plt.close(fig)
