"""The collect stage: scripted demonstrations (and, for the outcome models, the failure episodes)."""

from __future__ import annotations

from ..config import BlockTouchConfig
from ..scripted import collect_demos
from .workdir import Paths, log, reset_stages, timed


def stage_collect(cfg: BlockTouchConfig, force: bool = False) -> None:
    paths = Paths(cfg)
    if paths.demos.exists() and (paths.failures.exists() or not cfg.outcome_failures) and not force:
        log(f"collect: {paths.demos} exists, skipping (use --force to redo)")
        return
    reset_stages(paths, ("collect",))
    failures = paths.failures if cfg.outcome_failures else None
    log(f"collect: {cfg.collect.num_demos} demos -> {paths.demos}" + (f", failures -> {failures}" if failures else ""))
    stats = timed(paths, "collect", lambda: collect_demos(paths.demos, cfg.collect, cfg.env, failures_path=failures))
    log(f"collect: {stats}")
