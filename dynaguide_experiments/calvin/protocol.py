"""A pre-registered evaluation protocol: everything chosen on validation seeds, frozen before the evaluation.

``dynaguide calvin protocol --config C --policy P --dynamics D [--scale s --sigma σ --stochastic-steps M]
--evidence DIR --out results/calvin/protocol.json`` writes the chosen configuration — the models with the
SHA-256 of their files, the guidance settings, the evaluation seeds and N, the experiments and methods, the
validation results it was chosen on and the git commit it was chosen at.  Commit that file, then run
``dynaguide calvin eval --protocol results/calvin/protocol.json --experiment articulated``: the evaluation
takes every setting from the protocol, refuses models whose bytes differ from the registered ones and a
protocol file that is not committed, and stamps the protocol's SHA-256 into its ``results.json``.
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


def write_protocol(cfg: CalvinExperimentConfig, out: str | Path, policy: str, dynamics: str,
                   experiments: list[str], methods: list[str], evidence: list[str], note: str = "") -> dict:
    """Freeze ``cfg.eval`` (must be the evaluation split) with the models' hashes into ``out``."""
    if cfg.eval.split != "evaluation":
        raise ProtocolError("a protocol registers the evaluation split's seeds (eval.split: evaluation)")
    protocol = {
        "format": FORMAT,
        "models": {"policy": {"path": policy, "sha256": checkpoint_sha256(policy)},
                   "dynamics": {"path": dynamics, "sha256": checkpoint_sha256(dynamics)}},
        "eval": to_dict(cfg.eval),
        "data": {"start_poses": cfg.data.validation, "goals": cfg.data.goals, "static_size": cfg.data.static_size},
        "experiments": list(experiments), "methods": list(methods),
        "chosen_on": list(evidence), "chosen_at_commit": git_commit(), "note": note,
    }
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
    ev = from_dict(EvalConfig, protocol["eval"])
    data = dataclasses.replace(cfg.data, validation=protocol["data"]["start_poses"], goals=protocol["data"]["goals"],
                               static_size=protocol["data"]["static_size"])
    protocol["sha256"] = hashlib.sha256(raw).hexdigest()
    return dataclasses.replace(cfg, eval=ev, data=data), protocol
