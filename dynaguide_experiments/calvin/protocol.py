"""A pre-registered evaluation protocol: everything chosen on validation seeds, frozen before the evaluation.

``dynaguide calvin protocol --config C --policy P --dynamics D [--scale s --sigma σ --stochastic-steps M]
--evidence DIR --out results/calvin/protocol.json`` writes the chosen configuration — the models with the
SHA-256 of their files, the guidance settings, the evaluation seeds and N, the experiments and methods, the
validation results it was chosen on and the git commit it was chosen at.  Commit that file, then run
``dynaguide calvin eval --protocol results/calvin/protocol.json --experiment articulated``: the evaluation
takes every setting from the protocol, refuses models whose bytes differ from the registered ones and a
protocol file that is not committed, and stamps the protocol's SHA-256 into its ``results.json``.

A protocol may register further models by name (``--model gc_policy=DIR``, an UnderrepresentedBehaviors policy
``--model switch_on_1pct=DIR``) and carry over the settings of an earlier protocol unchanged
(``--settings-from results/calvin/protocol.json``: same guidance, seeds, N, data).  It also records the SHA-256
of the start-pose and goal files: regenerated data (the play collection is not bit-identical across machines)
is refused rather than silently evaluated on other start poses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

from dynaguide.config import from_dict, to_dict
from dynaguide_experiments.calvin.config import CalvinExperimentConfig, EvalConfig

FORMAT = "dynaguide-calvin-protocol/1"


class ProtocolError(ValueError):
    """The evaluation does not match its pre-registered protocol."""


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 over a checkpoint directory's files (sorted names and bytes): the identity of a model."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise ProtocolError(f"{path} holds no files to register")
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def git_commit(cwd: str | Path = ".") -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of one data file's bytes (read in 16 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def write_protocol(cfg: CalvinExperimentConfig, out: str | Path, policy: str, dynamics: str,
                   experiments: list[str], methods: list[str], evidence: list[str], note: str = "",
                   extra_models: dict[str, str] | None = None, settings_from: str | None = None) -> dict:
    """Freeze ``cfg.eval`` (must be the evaluation split) with the models' and data files' hashes into ``out``.

    ``extra_models``: further registered models, ``{name: checkpoint dir}``.  ``settings_from``: an earlier
    protocol whose evaluation settings and data are carried over unchanged (``cfg.eval`` and ``cfg.data`` are
    then ignored; the earlier protocol is named in ``settings_from``)."""
    models = {"policy": policy, "dynamics": dynamics, **(extra_models or {})}
    data = {"start_poses": cfg.data.validation, "goals": cfg.data.goals, "static_size": cfg.data.static_size}
    ev = to_dict(cfg.eval)
    if settings_from is not None:
        try:
            earlier = json.loads(Path(settings_from).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"cannot read protocol {settings_from}: {exc}") from None
        if earlier.get("format") != FORMAT:
            raise ProtocolError(f"{settings_from} is not a {FORMAT} file")
        ev = to_dict(from_dict(EvalConfig, earlier["eval"]))
        data = {k: earlier["data"][k] for k in ("start_poses", "goals", "static_size")}
    if ev["split"] != "evaluation":
        raise ProtocolError("a protocol registers the evaluation split's seeds (eval.split: evaluation)")
    for key in ("start_poses", "goals"):
        if not Path(data[key]).is_file():
            raise ProtocolError(f"the {key.replace('_', ' ')} file {data[key]} does not exist")
        data[f"{key}_sha256"] = file_sha256(data[key])
    protocol = {
        "format": FORMAT,
        "models": {name: {"path": path, "sha256": checkpoint_sha256(path)} for name, path in models.items()},
        "eval": ev,
        "data": data,
        "experiments": list(experiments), "methods": list(methods),
        "chosen_on": list(evidence), "chosen_at_commit": git_commit(), "note": note,
    }
    if settings_from is not None:
        protocol["settings_from"] = str(settings_from)
    out = Path(out)
    if out.exists():
        raise ProtocolError(f"{out} exists: a protocol is registered once (write a new file for a new protocol)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(protocol, indent=2) + "\n")
    return protocol


def apply_protocol(cfg: CalvinExperimentConfig, path: str | Path, require_committed: bool = True
                   ) -> tuple[CalvinExperimentConfig, dict]:
    """``cfg`` with the protocol's evaluation settings, and the protocol (with its own ``sha256``).  Raises
    :class:`ProtocolError` when the file is not committed, or a registered model's bytes changed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        protocol = json.loads(raw)
    except (OSError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"cannot read protocol {path}: {exc}") from None
    if protocol.get("format") != FORMAT:
        raise ProtocolError(f"{path} is not a {FORMAT} file")
    if require_committed:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], capture_output=True)
        clean = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(path)], capture_output=True)
        if tracked.returncode != 0 or clean.returncode != 0:
            raise ProtocolError(f"{path} is not committed as it is: commit the protocol before the evaluation runs")
    for name, model in protocol["models"].items():
        if checkpoint_sha256(model["path"]) != model["sha256"]:
            raise ProtocolError(f"the {name} model at {model['path']} is not the registered one (SHA-256 differs)")
    for key in ("start_poses", "goals"):
        registered = protocol["data"].get(f"{key}_sha256")
        if registered is not None and file_sha256(protocol["data"][key]) != registered:
            raise ProtocolError(f"the {key.replace('_', ' ')} file {protocol['data'][key]} is not the registered "
                                "one (SHA-256 differs; regenerated data give other start poses or goals)")
    ev = from_dict(EvalConfig, protocol["eval"])
    data = dataclasses.replace(cfg.data, validation=protocol["data"]["start_poses"], goals=protocol["data"]["goals"],
                               static_size=protocol["data"]["static_size"])
    protocol["sha256"] = hashlib.sha256(raw).hexdigest()
    return dataclasses.replace(cfg, eval=ev, data=data), protocol
