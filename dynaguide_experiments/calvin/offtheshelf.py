"""``results/offtheshelf/``: a LeRobot DiffusionPolicy steered on CALVIN (issue 13's proof), from a harness run.

    dynaguide calvin eval --experiment articulated --methods base,dynaguide --targets switch_on,button_on \\
        --policy-kind lerobot --policy runs/lerobot_policy/pretrained_model --out results/offtheshelf/harness
    dynaguide calvin offtheshelf --harness results/offtheshelf/harness \\
        --out results/offtheshelf --training runs/lerobot_policy

writes ``results.json`` = ``{"lerobot_version", "targets": {target: {"base": {"rate", "n", "ci95"},
"dynaguide": {...}}}, "command", ...}`` (the issue's shape, plus the training summary and the issue's target
check: DynaGuide ≥ 3× base and ≥ 50 %) and ``results.md``.
"""

from __future__ import annotations

import json
from pathlib import Path


def action_spaces(policy_dir: Path, dynamics_dir: Path) -> dict:
    """The LeRobot policy's and the dynamics model's action min/max (raw units) and whether the harness maps
    chunks between their normalised spaces (:func:`~dynaguide.guidance.objectives.action_transform_for`)."""
    from dynaguide.checkpoint import load_checkpoint
    from dynaguide.guidance.objectives import action_transform_for
    from dynaguide.policy.lerobot_adapter import load_policy

    policy = load_policy("lerobot", policy_dir, image_keys=("rgb_static",))
    dynamics, _ = load_checkpoint(dynamics_dir)
    return {"mapped": action_transform_for(policy, dynamics) is not None,
            "policy": {"min": policy.action_normalizer.min.tolist(), "max": policy.action_normalizer.max.tolist()},
            "dynamics": {"min": dynamics.action_normalizer.min.tolist(),
                         "max": dynamics.action_normalizer.max.tolist()},
            "policy_action_offset": policy.action_offset, "policy_n_obs_steps": policy.n_obs_steps,
            "policy_n_action_steps": policy.n_action_steps, "policy_ddim_steps": policy.cfg.ddim.num_inference_steps}


def _cells(harness: Path, methods: dict[str, str]) -> tuple[dict, dict]:
    """``({target: {name: cell}}, harness results)`` for ``methods`` = {harness method: name in our JSON}."""
    from dynaguide_experiments.calvin.harness import read_trials, summarise

    run = json.loads((harness / "results.json").read_text())
    rows: dict[str, dict] = {}
    for target, cells in run["behaviours"].items():
        for m, name in methods.items():
            if m not in cells:
                continue
            c = cells[m]
            cell = {"rate": c["rate"], "n": c["n"], "ci95": c["ci95"], "distribution": c["distribution"]}
            if c["n"] > 20:   # the first 20 trials (the N) kept alongside
                first = [t for t in read_trials(harness / "trials" / f"{target}__{m}.jsonl") if t["trial"] < 20]
                f = summarise(first, target)
                cell["first_20"] = {"rate": f["rate"], "n": f["n"], "ci95": f["ci95"]}
            rows.setdefault(target, {})[name] = cell
    return rows, run


def offtheshelf_results(harness: Path, out: Path, training: Path | None = None, note: str = "",
                        policy_dir: Path | None = None, dynamics_dir: Path | None = None,
                        extra: dict[str, Path] | None = None) -> dict:
    """Summarise the harness directory's ``results.json`` into ``<out>/results.json`` and ``results.md``.

    ``extra``: {name: harness directory} whose ``dynaguide`` cells are added per target under ``name``
    (e.g. another guidance scale), with that run's command under ``extra_commands``.
    """
    from dynaguide.policy.lerobot_adapter import import_lerobot

    targets, run = _cells(harness, {"base": "base", "dynaguide": "dynaguide"})
    extra_commands = {}
    for name, path in (extra or {}).items():
        rows, other = _cells(path, {"dynaguide": name})
        extra_commands[name] = other["command"]
        for target, row in rows.items():
            targets.setdefault(target, {}).update(row)
    for row in targets.values():
        if "base" in row:
            b = row["base"]["rate"]
            for name in ["dynaguide", *(extra or {})]:
                if name in row:
                    d = row[name]["rate"]
                    row["target_met" if name == "dynaguide" else f"target_met_{name}"] = bool(d >= 0.5 and d >= 3 * b)
    result = {"lerobot_version": import_lerobot(), "targets": targets, "command": run["command"],
              "extra_commands": extra_commands,
              "harness_results": str(harness / "results.json"), "settings": run["settings"],
              "stages_s": run.get("stages_s", {}), "machine": run.get("machine", {})}
    if training is not None:
        for name in ("result.json", "settings.json"):
            if (training / name).is_file():
                summary = json.loads((training / name).read_text())
                result.setdefault("training", {})[name.removesuffix(".json")] = summary
    if policy_dir is not None and dynamics_dir is not None:
        result["action_spaces"] = action_spaces(policy_dir, dynamics_dir)
    if note:
        result["note"] = note
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# A LeRobot DiffusionPolicy steered by DynaGuide on CALVIN ArticulatedParts", "",
             f"LeRobot {result['lerobot_version']}. Command: `{result['command']}`", "",
             "| target | base | DynaGuide | target met (≥ 3× base and ≥ 50 %) |"
             + "".join(f" {name} | met |" for name in extra or {}),
             "|---|---|---|---|" + "---|---|" * len(extra or {})]

    def cell(c):
        if not c:
            return "–"
        text = f"{100 * c['rate']:.0f} % [{100 * c['ci95'][0]:.0f}, {100 * c['ci95'][1]:.0f}] (n={c['n']})"
        if "first_20" in c:
            text += f"; first 20: {100 * c['first_20']['rate']:.0f} %"
        return text

    for target, row in targets.items():
        lines.append(f"| {target} | {cell(row.get('base'))} | {cell(row.get('dynaguide'))} | "
                     f"{'yes' if row.get('target_met') else 'no'} |"
                     + "".join(f" {cell(row.get(name))} | {'yes' if row.get(f'target_met_{name}') else 'no'} |"
                               for name in extra or {}))
    for name, command in extra_commands.items():
        lines += ["", f"{name}: `{command}`"]
    lines += ["", "Rates = share of trials whose first detected behaviour is the target, 95 % Wilson intervals.", ""]
    if note:
        lines += [note, ""]
    (out / "results.md").write_text("\n".join(lines))
    return result
