"""UnderrepresentedBehaviors (the paper's §4.4): steer towards a behaviour the base policy barely saw.

    # one base policy per share (the dynamics model stays the shipped one):
    dynaguide calvin train --stage policy,export --underrepresent switch_on=0.01 \
        --out-dir runs/calvin/models_switch_on_1pct --export-dir checkpoints/calvin_underrepresented/switch_on_1pct
    # then every method on the target, per share:
    dynaguide calvin underrepresented --target switch_on --shares 0.01,0.02

Each share's cells are ordinary ArticulatedParts cells of ``target`` (same evaluation seeds) with that share's
policy (``<policies>/<target>_<percent>pct/policy``), in ``<out>/share_<share>/``; a killed run resumes there.
``--reference DIR`` adds the shipped policy's existing ArticulatedParts cells (``results/calvin/articulated``) at
its natural share of the training data, computed from the training file.  ``<out>/results.json`` has
``{"shares": {"0.01": {method: {"rate", "n", "ci95"}}}}``; ``results.md`` and ``shares.png`` plot rate vs share.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import h5py

from dynaguide_experiments.calvin.config import ARTICULATED_TARGETS, CalvinExperimentConfig
from dynaguide_experiments.calvin.evaluate import error_bars, percent_ci, run_experiment

METHODS = ("base", "dynaguide", "gpc")


def policy_dir(policies: str | Path, target: str, share: float) -> Path:
    """Where ``dynaguide calvin train --underrepresent target=share`` was exported (the module docstring's layout)."""
    return Path(policies) / f"{target}_{round(100 * share)}pct" / "policy"


def natural_share(path: str | Path, behaviour: str) -> float:
    """Share of ``behaviour`` among the segments of a training file."""
    with h5py.File(path, "r") as f:
        labels = [f["data"][n].attrs.get("behavior") for n in f["data"]]
    return sum(label == behaviour for label in labels) / len(labels)


def run_underrepresented(cfg: CalvinExperimentConfig, target: str, shares: Sequence[float], out_dir: str | Path,
                         policies: str | Path = "checkpoints/calvin_underrepresented", reference: str | None = None,
                         methods: Sequence[str] = METHODS, command: str = "", progress: bool = True) -> dict:
    if target not in ARTICULATED_TARGETS:
        raise ValueError(f"the experiment runs on an ArticulatedParts target {ARTICULATED_TARGETS}, got {target!r}")
    out = Path(out_dir)
    cells: dict[str, dict] = {}
    sources: dict[str, str] = {}
    reference_share = None
    for share in shares:
        path = policy_dir(policies, target, share)
        if not path.is_dir():
            raise FileNotFoundError(f"no policy for share {share} at {path}; train it first "
                                    f"(dynaguide calvin train --underrepresent {target}={share} ...)")
        result = run_experiment(cfg, "articulated", list(methods), out / f"share_{share}", targets=[target],
                                command=command, policy_dir=str(path), progress=progress)
        cells[f"{share}"] = result["behaviours"][target]
        sources[f"{share}"] = str(path)
    if reference:
        ref = json.loads((Path(reference) / "results.json").read_text())
        share = round(natural_share(cfg.data.merged, target), 4) if Path(cfg.data.merged).is_file() else None
        if share is not None and target in ref["behaviours"]:
            cells[f"{share}"] = {m: c for m, c in ref["behaviours"][target].items() if m in methods}
            sources[f"{share}"] = f"{reference} (the shipped policy, natural share of the training file)"
            reference_share = f"{share}"
    order = sorted(cells, key=float)
    result = {"experiment": "underrepresented", "target": target,
              "shares": {s: {m: {k: c[k] for k in ("rate", "n", "ci95", "distribution")} for m, c in cells[s].items()}
                         for s in order},
              "policies": sources, "reference_share": reference_share, "trials": cfg.eval.trials, "command": command}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result))
    plot(result, out / "shares.png")
    return result


def markdown(result: dict) -> str:
    methods = [m for m in METHODS if any(m in cells for cells in result["shares"].values())]
    lines = [f"# CALVIN underrepresented `{result['target']}`: target first vs its share of the base policy's data", "",
             f"Command: `{result['command']}`", "",
             "| share | " + " | ".join(methods) + " | policy |", "|---|" + "---|" * (len(methods) + 1)]
    for share, cells in result["shares"].items():
        row = [percent_ci(cells[m]["rate"], cells[m]["ci95"]) if m in cells else "–" for m in methods]
        lines.append(f"| {100 * float(share):.1f} % | " + " | ".join(row) + f" | `{result['policies'][share]}` |")
    return "\n".join(lines + ["", "95 % Wilson intervals.", ""])


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = list(result["shares"])
    if not shares:
        return
    # the --reference point is another policy (trained on every segment, possibly another collection): drawn
    # hollow and unconnected, so the lines join only the policies retrained for this experiment
    reference = {result["reference_share"]} if result.get("reference_share") else set()
    retrained = [s for s in shares if s not in reference]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for i, m in enumerate(METHODS):
        pts = [(100 * float(s), result["shares"][s][m]) for s in retrained if m in result["shares"][s]]
        line = None
        if pts:
            line = ax.errorbar([x for x, _ in pts], [100 * c["rate"] for _, c in pts],
                               yerr=error_bars([c for _, c in pts]), marker="o", capsize=3, label=m)
        for s in reference:
            if m in result["shares"][s]:
                c = result["shares"][s][m]
                ax.errorbar([100 * float(s) * (1.0 + 0.06 * (i - 1))], [100 * c["rate"]], yerr=error_bars([c]),
                            marker="s", fillstyle="none", linestyle="none", capsize=3,
                            color=line[0].get_color() if line else None,
                            label="shipped policy, natural share" if i == 0 else None)
    ax.set_xscale("log")
    ticks = [100 * float(s) for s in retrained]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(f"{result['target']} share of the base policy's training segments (%)")
    ax.set_ylabel(f"{result['target']} first (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, result["command"][:120], fontsize=5, family="monospace")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(png, dpi=120)
    plt.close(fig)
