"""UnderrepresentedBehaviors (the paper's §4.4): steer towards a behaviour the base policy barely saw.

    # one base policy per share (the dynamics model stays the shipped one); a second one with --seed 1:
    dynaguide calvin train --stage policy,export --underrepresent switch_on=0.01 [--seed 1] \
        --out-dir runs/calvin/models_switch_on_1pct --export-dir checkpoints/calvin_underrepresented/switch_on_1pct
    # then every method on the target, per policy:
    dynaguide calvin underrepresented --target switch_on --shares 0.01,0.01@1,0.02,natural

A share's policy is ``<policies>/<target>_<percent>pct/policy`` (``SHARE@K``: the one trained with ``--seed K``,
``<target>_<percent>pct_seed<K>/policy``); ``natural`` is the base policy trained on every segment (the protocol's
policy, or ``--natural-policy``), at the share the training file gives it.  Each policy's cells are ordinary
ArticulatedParts cells of ``target`` (same evaluation seeds) in ``<out>/share_<key>/``; a killed run resumes there.
``--reference DIR`` adds existing ArticulatedParts cells of the policy trained on every segment instead.
``<out>/results.json`` has ``{"shares": {"0.01": {method: {"rate", "n", "ci95"}}, "0.01@1": ...}}``;
``results.md`` and ``shares.png`` plot rate vs share (one point per policy: the seeds side by side).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py

from dynaguide_experiments.calvin.config import ARTICULATED_TARGETS, CalvinExperimentConfig
from dynaguide_experiments.calvin.evaluate import error_bars, percent_ci, run_experiment

METHODS = ("base", "dynaguide", "gpc")
NATURAL = "natural"


@dataclass(frozen=True)
class SharePolicy:
    """One base policy of the experiment: trained with the target at ``share`` of its segments and ``seed``, or
    (``share`` None) the policy trained on every segment."""

    share: float | None
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> SharePolicy:
        """``0.01``, ``0.01@1`` (training seed 1) or ``natural``."""
        if text.strip() == NATURAL:
            return cls(None)
        share, _, seed = text.strip().partition("@")
        try:
            spec = cls(float(share), int(seed) if seed else 0)
        except ValueError:
            raise ValueError(f"a share is SHARE, SHARE@SEED or {NATURAL!r} (e.g. 0.01,0.01@1), got {text!r}") from None
        if not 0.0 < spec.share < 1.0 or spec.seed < 0:
            raise ValueError(f"a share lies in (0, 1) and a seed is >= 0, got {text!r}")
        return spec

    @property
    def key(self) -> str:
        if self.share is None:
            return NATURAL
        return f"{self.share}" + (f"@{self.seed}" if self.seed else "")


def policy_dir(policies: str | Path, target: str, share: float, seed: int = 0) -> Path:
    """Where ``dynaguide calvin train --underrepresent target=share [--seed K]`` was exported (the module
    docstring's layout)."""
    return Path(policies) / (f"{target}_{round(100 * share)}pct" + (f"_seed{seed}" if seed else "")) / "policy"


def natural_share(path: str | Path, behaviour: str) -> float:
    """Share of ``behaviour`` among the segments of a training file."""
    with h5py.File(path, "r") as f:
        labels = [f["data"][n].attrs.get("behavior") for n in f["data"]]
    return sum(label == behaviour for label in labels) / len(labels)


def share_of(key: str) -> float:
    """The share of a results key (``0.01``, ``0.01@1``, ``0.0441 (natural)``)."""
    return float(key.split("@")[0].split(" ")[0])


def run_underrepresented(cfg: CalvinExperimentConfig, target: str, shares: Sequence[float | str | SharePolicy],
                         out_dir: str | Path, policies: str | Path = "checkpoints/calvin_underrepresented",
                         reference: str | None = None, methods: Sequence[str] = METHODS, command: str = "",
                         progress: bool = True, dynamics_dir: str | None = None,
                         natural_policy: str | None = None) -> dict:
    """Every method on ``target`` with each share's policy (``shares``: floats, ``SHARE@SEED`` or ``natural``);
    ``dynamics_dir`` (default: the config's export) steers all of them; ``natural_policy``: the policy trained on
    every segment (default: the config's export)."""
    if target not in ARTICULATED_TARGETS:
        raise ValueError(f"the experiment runs on an ArticulatedParts target {ARTICULATED_TARGETS}, got {target!r}")
    specs = [s if isinstance(s, SharePolicy) else SharePolicy.parse(str(s)) for s in shares]
    out = Path(out_dir)
    cells: dict[str, dict] = {}
    sources: dict[str, str] = {}
    reference_share = None
    for spec in specs:
        if spec.share is None:
            path = Path(natural_policy or Path(cfg.training.export_dir) / "policy")
            if not Path(cfg.data.merged).is_file():
                raise FileNotFoundError(f"the natural share is counted in the training file {cfg.data.merged}, "
                                        "which does not exist (dynaguide calvin train --stage merge)")
            key = f"{round(natural_share(cfg.data.merged, target), 4)} ({NATURAL})"
            sources[key] = f"{path} (trained on every segment: natural share of {cfg.data.merged})"
            reference_share = key
        else:
            path = policy_dir(policies, target, spec.share, spec.seed)
            key = spec.key
            sources[key] = str(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no policy for share {spec.key} at {path}; train it first "
                                    f"(dynaguide calvin train --underrepresent {target}={spec.share} ...)")
        result = run_experiment(cfg, "articulated", list(methods), out / f"share_{spec.key}", targets=[target],
                                command=command, policy_dir=str(path), dynamics_dir=dynamics_dir, progress=progress)
        cells[key] = result["behaviours"][target]
    if reference:
        ref = json.loads((Path(reference) / "results.json").read_text())
        share = round(natural_share(cfg.data.merged, target), 4) if Path(cfg.data.merged).is_file() else None
        if share is not None and target in ref["behaviours"]:
            cells[f"{share}"] = {m: c for m, c in ref["behaviours"][target].items() if m in methods}
            sources[f"{share}"] = f"{reference} (the shipped policy, natural share of the training file)"
            reference_share = f"{share}"
    order = sorted(cells, key=lambda k: (share_of(k), k))
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
        lines.append(f"| {_label(share)} | " + " | ".join(row) + f" | `{result['policies'][share]}` |")
    return "\n".join(lines + ["", "95 % Wilson intervals.", ""])


def _label(key: str) -> str:
    """``1.0 %``, ``1.0 % (seed 1)``, ``4.4 % (natural)``."""
    text = f"{100 * share_of(key):.1f} %"
    if "@" in key:
        return f"{text} (seed {key.split('@')[1]})"
    return f"{text} ({NATURAL})" if NATURAL in key else text


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
    retrained = [s for s in shares if s not in reference and "@" not in s]   # seed 0: joined by lines
    reseeded = [s for s in shares if "@" in s]                                # other seeds: markers beside them
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for i, m in enumerate(METHODS):
        pts = [(100 * share_of(s), result["shares"][s][m]) for s in retrained if m in result["shares"][s]]
        line = None
        if pts:
            line = ax.errorbar([x for x, _ in pts], [100 * c["rate"] for _, c in pts],
                               yerr=error_bars([c for _, c in pts]), marker="o", capsize=3, label=m)
        color = line[0].get_color() if line else None
        for marker, keys, label in (("s", reference, "trained on every segment (natural share)"),
                                    ("x", reseeded, "another training seed")):
            for s in keys:
                if m in result["shares"][s]:
                    c = result["shares"][s][m]
                    ax.errorbar([100 * share_of(s) * (1.0 + 0.06 * (i - 1))], [100 * c["rate"]],
                                yerr=error_bars([c]), marker=marker, fillstyle="none", linestyle="none", capsize=3,
                                color=color, label=label if i == 0 and s == sorted(keys)[0] else None)
    ax.set_xscale("log")
    ticks = sorted({100 * share_of(s) for s in shares})
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
