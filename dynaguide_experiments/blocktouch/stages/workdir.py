"""Where the stages' outputs live (:class:`Paths`), their log lines, and the stage wall-clock record
``<work_dir>/stages.json``."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from dynaguide.checkpoint import read_checkpoint_meta

from ..config import BlockTouchConfig


class Paths:
    def __init__(self, cfg: BlockTouchConfig) -> None:
        self.work = Path(cfg.work_dir)
        self.results = Path(cfg.results_dir)
        self.demos = self.work / "demos.hdf5"
        self.failures = self.work / "failures.hdf5"
        self.policy = self.work / "policy"
        self.goal_policy = self.work / "goal_policy"
        self.classifier = self.work / "classifier"
        self.dynamics = self.work / "dynamics"
        self.eval = self.work / "eval"
        self.stages = self.work / "stages.json"

    def cell(self, layout: str, method: str) -> Path:
        return self.eval / layout / f"{method}.json"


def log(msg: str) -> None:
    print(f"[blocktouch {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def record_stage(paths: Paths, name: str, seconds: float) -> None:
    """Add ``seconds`` to stage ``name`` in ``stages.json`` (a resumed stage accumulates)."""
    paths.work.mkdir(parents=True, exist_ok=True)
    stages = json.loads(paths.stages.read_text()) if paths.stages.exists() else {}
    stages[name] = round(stages.get(name, 0.0) + seconds, 2)
    paths.stages.write_text(json.dumps(stages, indent=2) + "\n")


def reset_stages(paths: Paths, names: tuple[str, ...]) -> None:
    """Forget the recorded times of ``names`` (a forced stage is timed afresh)."""
    if paths.stages.exists():
        stages = json.loads(paths.stages.read_text())
        for name in names:
            stages.pop(name, None)
        paths.stages.write_text(json.dumps(stages, indent=2) + "\n")


def timed(paths: Paths, name: str, fn: Callable[[], object]) -> object:
    """Run ``fn`` and add its wall-clock time to stage ``name``."""
    t0 = time.perf_counter()
    out = fn()
    record_stage(paths, name, time.perf_counter() - t0)
    return out


def checkpoint_done(directory: Path, steps: int) -> bool:
    """Whether the checkpoint in ``directory`` has trained for ``steps`` steps."""
    try:
        return int(read_checkpoint_meta(directory / "latest").get("step") or 0) >= steps
    except ValueError:
        return False


def clear_if_forced(directory: Path, force: bool) -> None:
    """Remove ``directory`` when the stage is forced (it then starts afresh)."""
    if force and directory.exists():
        shutil.rmtree(directory)
