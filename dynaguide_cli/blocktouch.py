"""``dynaguide blocktouch collect | train-policy | train-dynamics | eval | report | run [--quick] | sweep |
diagnose``."""

from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imports torch: loaded when a stage runs, not when the command line is built
    from dynaguide_experiments.blocktouch.config import BlockTouchConfig

STAGES = ("collect", "train-policy", "train-dynamics", "eval", "report", "run", "sweep", "diagnose")


def load_blocktouch_config(args: argparse.Namespace) -> BlockTouchConfig:
    from dynaguide.config import load_config
    from dynaguide_experiments.blocktouch.config import BlockTouchConfig, quick_config

    cfg = load_config(BlockTouchConfig, args.config) if args.config else BlockTouchConfig()
    if args.quick:
        cfg = quick_config(cfg)
    if args.work_dir:
        cfg = replace(cfg, work_dir=args.work_dir)
    if args.results_dir:
        cfg = replace(cfg, results_dir=args.results_dir)
    ev = cfg.eval
    if args.rollouts is not None:
        ev = replace(ev, rollouts=args.rollouts)
    if args.layouts:
        ev = replace(ev, layouts=tuple(args.layouts.split(",")))
    if args.methods:
        ev = replace(ev, methods=tuple(args.methods.split(",")))
    if args.stochastic_mode:
        ev = replace(ev, stochastic_mode=args.stochastic_mode,
                     latent_guidance=replace(ev.latent_guidance, stochastic_mode=args.stochastic_mode))
    return replace(cfg, eval=ev)


def command_line(args: argparse.Namespace) -> str:
    """The ``dynaguide blocktouch ...`` command equivalent to ``args`` (recorded in results.json)."""
    parts = ["dynaguide", "blocktouch", args.stage]
    for flag in ("quick", "force"):
        if getattr(args, flag):
            parts.append(f"--{flag}")
    names = ("config", "work_dir", "results_dir", "rollouts", "layouts", "methods", "stochastic_mode")
    for name in names + (("scales",) if args.stage == "sweep" else ()):
        value = getattr(args, name)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def run_stage(stage: str, cfg: BlockTouchConfig, force: bool = False, command: str = "") -> None:
    import torch

    from dynaguide_experiments.blocktouch import report
    from dynaguide_experiments.blocktouch.stages.collect import stage_collect
    from dynaguide_experiments.blocktouch.stages.evaluate import stage_eval
    from dynaguide_experiments.blocktouch.stages.training import stage_train_dynamics, stage_train_policy

    torch.set_num_threads(max(1, cfg.threads))
    if stage in ("collect", "run"):
        stage_collect(cfg, force)
    if stage in ("train-policy", "run"):
        stage_train_policy(cfg, force)
    if stage in ("train-dynamics", "run"):
        stage_train_dynamics(cfg, force)
    if stage in ("eval", "run"):
        stage_eval(cfg, force, command)
    if stage in ("report", "run"):
        for path in report.write_report(cfg):
            print(f"wrote {path}")


def _main(args: argparse.Namespace) -> int:
    cfg = load_blocktouch_config(args)
    t0 = time.perf_counter()
    if args.stage in ("sweep", "diagnose"):  # validation-scene studies on trained checkpoints
        import torch

        from dynaguide_experiments.blocktouch.stages.diagnose import stage_diagnose
        from dynaguide_experiments.blocktouch.stages.sweep import stage_sweep

        torch.set_num_threads(max(1, cfg.threads))
        given = tuple(args.methods.split(",")) if args.methods else None
        if args.stage == "sweep":
            scales = [float(x) for x in args.scales.split(",")]
            stage_sweep(cfg, scales, given or ("dynaguide_classifier",), cfg.eval.layouts,
                        cfg.eval.rollouts, command=command_line(args))
        else:
            stage_diagnose(cfg, given or ("base", "dynaguide_classifier", "sampling"), cfg.eval.layouts,
                           cfg.eval.rollouts, command=command_line(args))
        return 0
    run_stage(args.stage, cfg, args.force, command_line(args))
    print(f"blocktouch {args.stage}: done in {time.perf_counter() - t0:.0f} s "
          f"(results in {cfg.results_dir}, data/checkpoints in {cfg.work_dir})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("blocktouch", help="the paper's 2-D BlockTouch steering experiment, end to end",
                              description=__doc__)
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--config", help="YAML file (BlockTouchConfig), e.g. config/blocktouch.yaml")
    p.add_argument("--quick", action="store_true", help="tiny sizes for CI (< 3 min, not scored)")
    p.add_argument("--force", action="store_true", help="redo stages whose outputs exist")
    p.add_argument("--work-dir", help="data + checkpoints directory (overrides the config)")
    p.add_argument("--results-dir", help="results directory (overrides the config)")
    p.add_argument("--rollouts", type=int, help="rollouts per (layout, method)")
    p.add_argument("--layouts", help="comma-separated subset of layouts")
    p.add_argument("--methods", help="comma-separated subset of methods")
    p.add_argument("--stochastic-mode", choices=("repeat", "renoise"),
                   help="override the M-step mode of both DynaGuide variants")
    p.add_argument("--scales", default="0.05,0.1,0.2,0.5",
                   help="sweep: guidance scales (dynaguide_latent: multipliers of the calibrated scale)")
    p.set_defaults(func=_main)
