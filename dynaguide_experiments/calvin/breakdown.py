"""Where the trials go: the first behaviours of evaluated single-target cells, sorted into four outcomes.

    dynaguide calvin breakdown --cell "base 9k=results/calvin/long_policy/articulated:base" \
        --cell "DynaGuide s=10=results/calvin/long_policy/articulated_s10:dynaguide" \
        --json results/calvin/breakdown.json --png results/calvin/breakdown.png

Outcomes of a trial with target ``t`` and first behaviour ``b`` (the harness's records, ``trials/<t>__<method>.jsonl``):
``target`` (b is t), ``same_part`` (b moves t's articulated part the other way, e.g. drawer_close for drawer_open),
``other`` (any other behaviour) and ``none`` (no behaviour within the horizon).  Steering can only redistribute
what the base policy finishes: the ``none`` share of the base policy bounds every method that re-weights it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from calvin_bridge.experts import BEHAVIOUR_PART
from dynaguide_experiments.calvin.harness import Task, read_trials

OUTCOMES = ("target", "same_part", "other", "none")


def outcome_of(target: str, label: str) -> str:
    """One of :data:`OUTCOMES` for a trial of ``target`` whose first behaviour label is ``label``."""
    task = Task.single(target)
    kind = task.outcome(label)
    if kind == "positive":
        return "target"
    if kind == "none":
        return "none"
    part = BEHAVIOUR_PART.get(target)
    return "same_part" if part is not None and BEHAVIOUR_PART.get(label) == part else "other"


def cell_breakdown(results_dir: str | Path, method: str) -> dict:
    """Outcome counts and shares over every ``trials/*__<method>.jsonl`` of one results directory."""
    paths = sorted(Path(results_dir, "trials").glob(f"*__{method}.jsonl"))
    if not paths:
        raise FileNotFoundError(f"no trials of method {method!r} under {Path(results_dir) / 'trials'}")
    counts: Counter = Counter()
    for path in paths:
        for trial in read_trials(path):
            counts[outcome_of(trial["target"], trial["label"])] += 1
    n = sum(counts.values())
    return {"n": n, "counts": {k: counts[k] for k in OUTCOMES}, "shares": {k: counts[k] / n for k in OUTCOMES},
            "targets": [p.name.split("__")[0] for p in paths]}


def parse_cell(spec: str) -> tuple[str, str, str]:
    """``"NAME=DIR:METHOD"`` → ``(name, dir, method)``; split at the last ``=`` (names may hold one, paths may not)."""
    name, sep, rest = spec.rpartition("=")
    directory, sep2, method = rest.rpartition(":")
    if not (sep and sep2 and name and directory and method):
        raise ValueError(f"a cell is NAME=DIR:METHOD (e.g. 'base=results/calvin/articulated:base'), got {spec!r}")
    return name, directory, method


def run_breakdown(cells: Sequence[tuple[str, str, str]]) -> dict:
    """``{"outcomes": [...], "cells": {name: {"dir", "method", "n", "counts", "shares", "targets"}}}``."""
    result: dict = {"outcomes": list(OUTCOMES), "cells": {}}
    for name, directory, method in cells:
        result["cells"][name] = {"dir": directory, "method": method, **cell_breakdown(directory, method)}
    return result


def plot(result: dict, png: Path) -> None:
    """Horizontal stacked bars: the share of each outcome per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["cells"])
    colours = {"target": "#2a9d4a", "same_part": "#f4a259", "other": "#8d99ae", "none": "#d62828"}
    labels = {"target": "target", "same_part": "target's part, other way", "other": "another behaviour",
              "none": "no behaviour in the horizon"}
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.6))
    left = [0.0] * len(names)
    for outcome in OUTCOMES:
        shares = [100 * result["cells"][n]["shares"][outcome] for n in names]
        ax.barh(names, shares, left=left, color=colours[outcome], label=labels[outcome])
        for i, (x, w) in enumerate(zip(left, shares)):
            if w >= 6:
                ax.text(x + w / 2, i, f"{w:.0f}", ha="center", va="center", fontsize=8, color="white")
        left = [x + w for x, w in zip(left, shares)]
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of trials (first behaviour)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.4 / len(names)), ncol=4, fontsize=8, frameon=False)
    ax.set_title("where the trials go: first behaviour per trial (`dynaguide calvin breakdown`, command in the JSON)",
                 fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)

