"""Markdown table and PNG figures from ``results.json`` and the evaluation cells' trajectories."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .config import BlockTouchConfig  # noqa: E402
from .env import COLOR_NAMES, COLOR_RGB, render_static  # noqa: E402
from .stages.workdir import Paths  # noqa: E402

GUIDED = ("dynaguide_classifier", "dynaguide_latent")
TARGET_MEAN = 0.85
TARGET_GAP = 0.15
GAP_LAYOUTS = ("late_decision", "cube_blockade")


def target_checks(results: dict) -> list[str]:
    """The issue's targets, evaluated on the run's own numbers (one line each, PASS/MISS with the margin)."""
    lines = []
    mean = results.get("mean_over_layouts", {})
    for m in GUIDED:
        if m in mean:
            ok = mean[m] >= TARGET_MEAN
            lines.append(f"{'PASS' if ok else 'MISS'}: {m} mean target-touch over the layouts = {mean[m]:.1%} "
                         f"(target >= {TARGET_MEAN:.0%}, margin {mean[m] - TARGET_MEAN:+.1%})")
    lay = results.get("layouts", {})
    for m in GUIDED:
        for layout in GAP_LAYOUTS:
            cell = lay.get(layout, {})
            if m in cell and "sampling" in cell:
                gap = cell[m]["rate"] - cell["sampling"]["rate"]
                lines.append(f"{'PASS' if gap >= TARGET_GAP else 'MISS'}: {m} - sampling on {layout} = {gap:+.1%} "
                             f"(target >= +{TARGET_GAP:.0%})")
    for layout in ("random", "early_decision"):
        if "base" in lay.get(layout, {}):
            lines.append(f"info: base policy on {layout} = {lay[layout]['base']['rate']:.1%} "
                         "(paper: near chance, 25 %)")
    total = results.get("total_s")
    if total is not None:
        lines.append(f"{'PASS' if total <= 3600 else 'MISS'}: total stage time {total / 60:.1f} min (target <= 60 min)")
    return lines


def markdown_table(results: dict) -> str:
    lay = results["layouts"]
    methods = list(dict.fromkeys(m for cells in lay.values() for m in cells))
    out = [f"Command: `{results.get('command', '')}`", "",
           f"Target-touch rate, 95 % Wilson interval, n rollouts per cell (horizon "
           f"{results.get('config', {}).get('eval', {}).get('horizon', '?')} steps).", "",
           "| layout | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for layout, cells in lay.items():
        row = []
        for m in methods:
            c = cells.get(m)
            row.append("–" if c is None else f"{c['rate']:.0%} [{c['ci95'][0]:.0%}, {c['ci95'][1]:.0%}] n={c['n']}")
        out.append(f"| {layout} | " + " | ".join(row) + " |")
    mean = results.get("mean_over_layouts", {})
    if mean:
        out.append("| **mean** | " + " | ".join(f"{mean[m]:.1%}" if m in mean else "–" for m in methods) + " |")
    out += ["", "Stage wall-clock times (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in results.get("stages_s", {}).items())
            + f"; total {results.get('total_s', 0) / 60:.1f} min", "", "Targets:", ""]
    out += [f"- {line}" for line in target_checks(results)]
    return "\n".join(out) + "\n"


def plot_bars(results: dict, path: Path) -> None:
    lay = results["layouts"]
    layouts = list(lay)
    methods = list(dict.fromkeys(m for cells in lay.values() for m in cells))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(layouts) + 2), 4))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for i, layout in enumerate(layouts):
            c = lay[layout].get(m)
            if c is None:
                continue
            xs.append(i + (j - (len(methods) - 1) / 2) * width)
            ys.append(c["rate"])
            lo.append(max(0.0, c["rate"] - c["ci95"][0]))
            hi.append(max(0.0, c["ci95"][1] - c["rate"]))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=m)
    ax.axhline(0.25, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(layouts)), layouts, rotation=15)
    ax.set_ylabel("target-touch rate")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title(f"BlockTouch — {results.get('command', '')}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trajectories(cfg: BlockTouchConfig, layout: str, methods: list[str], path: Path, command: str) -> bool:
    """Fig.-7-style panels: agent paths of repeated rollouts from the layout's first scene, one panel per method."""
    paths = Paths(cfg)
    methods = [m for m in methods if paths.cell(layout, m).with_suffix(".npz").exists()]
    if not methods:
        return False
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.5), squeeze=False)
    hi_cfg = replace(cfg.env, image_size=256, supersample=2)
    summary = {m: json.loads(paths.cell(layout, m).read_text()) for m in methods}
    for ax, m in zip(axes[0], methods):
        data = np.load(paths.cell(layout, m).with_suffix(".npz"))
        bg = render_static(data["blocks"][:1], data["yaw"][:1], hi_cfg)[0] / 255.0
        ax.imshow(bg, extent=(0, cfg.env.arena_px, cfg.env.arena_px, 0))
        n = int(len(data["touched"]))
        for i in range(n):
            tr = data[f"traj_{i}"]
            t = int(data["touched"][i])
            col = COLOR_RGB[t] / 255.0 if t >= 0 else (0.4, 0.4, 0.4)
            ax.plot(tr[:, 0], tr[:, 1], color=col, lw=0.9, alpha=0.8)
            ax.plot(tr[0, 0], tr[0, 1], "o", color="k", ms=2)
        s = summary[m]
        ax.set_title(f"{m}\nthis scene: {np.mean(data['touched'] == data['target']):.0%} of {n}; "
                     f"layout: {s['rate']:.0%} (n={s['n']})", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    target = COLOR_NAMES[int(data["target"][0])]
    fig.suptitle(f"{layout}: {n} rollouts from the layout's first scene, target {target} "
                 f"(line colour = touched block, grey = none)\n{command}", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(cfg: BlockTouchConfig) -> list[Path]:
    paths = Paths(cfg)
    res_file = paths.results / "results.json"
    if not res_file.exists():
        raise ValueError(f"{res_file} does not exist: run `dynaguide blocktouch eval` first")
    results = json.loads(res_file.read_text())
    written = [paths.results / "results.md", paths.results / "bars.png"]
    written[0].write_text("# BlockTouch results\n\n" + markdown_table(results))
    plot_bars(results, written[1])
    methods = [m for m in ("base",) + GUIDED + ("sampling",) if m in cfg.eval.methods]
    for layout in cfg.eval.layouts:
        p = paths.results / f"trajectories_{layout}.png"
        if plot_trajectories(cfg, layout, methods, p, results.get("command", "")):
            written.append(p)
    return written
