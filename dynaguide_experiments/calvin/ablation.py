"""The s / σ / M / distance ablation of the paper's appendix on one ArticulatedParts target.

    dynaguide calvin ablation --target switch_on [--params scale,sigma,stochastic_steps,squared] [--trials 20]

One parameter is varied at a time around the configured :class:`~dynaguide.guidance.goals.GuidanceConfig`
(the other three at their defaults); every cell is an ordinary ``articulated`` evaluation cell of
``dynaguide`` (same trial seeds as the ArticulatedParts experiment) in ``<out>/cells/<setting>/``, so a killed
run resumes cell by cell and trial by trial.  The base policy is one more cell.  ``<out>/results.json``
collects them (``{"grid": {param: [{"value", "rate", "n", "ci95"}]}}``), ``results.md`` and ``ablation.png``
plot the target rate against each parameter.

Squared distance changes σ's units: its σ is ``SQUARED_SIGMA`` = 3600, which gives the gradient of
``d² / σ²-units`` the same size as the Euclidean one at σ = 30 for a distance d ≈ 60 (2 d / 3600 = 1 / 30), the
nearest-goal distances these latents show (``results/calvin/dynamics_check.json``) — matched, not tuned.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from dynaguide_experiments.calvin.config import ARTICULATED_TARGETS, CalvinExperimentConfig
from dynaguide_experiments.calvin.evaluate import error_bars, percent_ci, run_experiment

#: values tried per parameter (the default value of each is always among its points)
ABLATION_GRID: dict[str, tuple] = {"scale": (1.5, 4.0, 10.0), "sigma": (15.0, 30.0, 60.0),
                                   "stochastic_steps": (1, 2, 4), "squared": (False, True)}
SQUARED_SIGMA = 3600.0
LABELS = {"scale": "guidance scale s", "sigma": "temperature σ", "stochastic_steps": "stochastic steps M",
          "squared": "squared distance"}


def _name(param: str, value) -> str:
    return f"{param}={value}"


def settings(cfg: CalvinExperimentConfig, params: Sequence[str]) -> dict[str, dict]:
    """``{cell name: {"param", "value", "guidance"}}``: the default cell plus one cell per non-default value."""
    unknown = sorted(set(params) - set(ABLATION_GRID))
    if unknown:
        raise ValueError(f"unknown ablation parameters {unknown}; known: {sorted(ABLATION_GRID)}")
    default = cfg.eval.guidance
    cells = {"default": {"param": None, "value": None, "guidance": default}}
    for param in params:
        for value in ABLATION_GRID[param]:
            if value == getattr(default, param):
                continue
            changes = {param: value}
            if param == "squared" and value:
                changes["sigma"] = SQUARED_SIGMA
            cells[_name(param, value)] = {"param": param, "value": value,
                                          "guidance": dataclasses.replace(default, **changes)}
    return cells


def run_ablation(cfg: CalvinExperimentConfig, target: str, out_dir: str | Path,
                 params: Sequence[str] = tuple(ABLATION_GRID), command: str = "", progress: bool = True,
                 policy_dir: str | None = None, dynamics_dir: str | None = None) -> dict:
    """Run (or resume) the ablation cells of ``target`` and write ``results.json``, ``results.md``, ``ablation.png``.

    ``policy_dir`` / ``dynamics_dir``: the models (None: the config's export directory)."""
    if target not in ARTICULATED_TARGETS:
        raise ValueError(f"the ablation runs on an ArticulatedParts target {ARTICULATED_TARGETS}, got {target!r}")
    out = Path(out_dir)
    cells = settings(cfg, params)
    summaries: dict[str, dict] = {}
    stages: dict[str, float] = {}
    models = {"policy_dir": policy_dir, "dynamics_dir": dynamics_dir}
    base = run_experiment(cfg, "articulated", ["base"], out / "cells" / "base", targets=[target],
                          command=command, progress=progress, **models)
    summaries["base"] = base["behaviours"][target]["base"]
    for name, cell in cells.items():
        cell_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, guidance=cell["guidance"]))
        result = run_experiment(cell_cfg, "articulated", ["dynaguide"], out / "cells" / name, targets=[target],
                                command=command, progress=progress, **models)
        summaries[name] = result["behaviours"][target]["dynaguide"]
        stages.update({f"{name}/{k}": v for k, v in result["stages_s"].items()})
    default = cfg.eval.guidance
    grid = {}
    for param in params:
        points = []
        for value in ABLATION_GRID[param]:
            name = "default" if value == getattr(default, param) else _name(param, value)
            s = summaries[name]
            points.append({"value": value, "cell": name, "rate": s["rate"], "n": s["n"], "ci95": s["ci95"]})
        grid[param] = points
    result = {"experiment": "ablation", "target": target,
              "behaviours": {target: {"base": summaries["base"],
                                      **{f"dynaguide/{n}": summaries[n] for n in cells}}},
              "grid": grid, "default": dataclasses.asdict(default), "squared_sigma": SQUARED_SIGMA,
              "trials": cfg.eval.trials, "stages_s": stages, "command": command}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result))
    plot(result, out / "ablation.png")
    return result


def markdown(result: dict) -> str:
    base = result["behaviours"][result["target"]]["base"]
    lines = [f"# CALVIN ablation on `{result['target']}` (target first, {result['trials']} trials per cell)", "",
             f"Command: `{result['command']}`", "",
             f"Base policy: {percent_ci(base['rate'], base['ci95'])}; "
             f"defaults: s = {result['default']['scale']}, σ = {result['default']['sigma']}, "
             f"M = {result['default']['stochastic_steps']}, Euclidean (squared: σ = {result['squared_sigma']:g}).", "",
             "| parameter | value | DynaGuide |", "|---|---|---|"]
    for param, points in result["grid"].items():
        for p in points:
            mark = " (default)" if p["cell"] == "default" else ""
            lines.append(f"| {param} | {p['value']}{mark} | {percent_ci(p['rate'], p['ci95'])} (n={p['n']}) |")
    return "\n".join(lines + ["", "95 % Wilson intervals.", ""])


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(result["grid"])
    if not params:
        return
    base = result["behaviours"][result["target"]]["base"]["rate"]
    fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3.2), squeeze=False)
    for ax, param in zip(axes[0], params):
        points = result["grid"][param]
        xs = list(range(len(points)))
        ys = [100 * p["rate"] for p in points]
        ax.errorbar(xs, ys, yerr=error_bars(points), marker="o", capsize=3, label="DynaGuide")
        ax.axhline(100 * base, color="grey", linestyle="--", label="base policy")
        ax.set_xticks(xs, [str(p["value"]) for p in points])
        ax.set_xlabel(LABELS.get(param, param))
        ax.set_ylim(0, 100)
        ax.set_ylabel(f"{result['target']} first (%)")
    axes[0][0].legend(fontsize=7)
    fig.text(0.01, 0.01, result["command"][:160], fontsize=6, family="monospace")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(png, dpi=120)
    plt.close(fig)
