"""``dynaguide calvin …``: the CALVIN-like play table (experts, datasets, goals, speed) and the CALVIN experiments
(training, checks, evaluation, ablations, real-time chunking).

    dynaguide calvin experts [--calvin-data-dir DIR --table NAME] --episodes N --json OUT
    dynaguide calvin collect --out FILE --demos N [--mixture switch_on=0.01,...] [--resume]
    dynaguide calvin play --out DIR --episodes N --workers W [--noise 0.3 --noise-share 0.5] [--resume]
    dynaguide calvin goals --out FILE --per-behaviour N
    dynaguide calvin bench [--sizes 200,96] [--json OUT]
    dynaguide calvin train --config config/calvin_experiment.yaml [--stage merge,embed,policy,dynamics,export]
    dynaguide calvin check-dynamics --config config/calvin_experiment.yaml --json results/calvin/dynamics_check.json
    dynaguide calvin eval --config config/calvin_experiment.yaml --experiment articulated --methods base,dynaguide
    dynaguide calvin base-check --config config/calvin_play.yaml --trials 10 --json results/calvin/base_check.json
    dynaguide calvin ablation --target switch_on
    dynaguide calvin underrepresented --target switch_on --shares 0.01,0.02
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from calvin_bridge.config import CalvinEnvConfig
from dynaguide.config import from_dict, load_yaml

if TYPE_CHECKING:  # imports torch: loaded when an experiment command runs, not when the command line is built
    from dynaguide_experiments.calvin.config import CalvinExperimentConfig


def _env_config(args: argparse.Namespace) -> CalvinEnvConfig:
    data = {}
    if args.config:
        data = load_yaml(args.config)
        data = data.get("env", data)
    cfg = from_dict(CalvinEnvConfig, data)
    if args.calvin_data_dir is not None:
        cfg = dataclasses.replace(cfg, calvin_data_dir=str(args.calvin_data_dir))
    if args.table is not None:
        cfg = dataclasses.replace(cfg, table=args.table)
    if getattr(args, "static_size", None):
        cfg = dataclasses.replace(cfg, static_camera=dataclasses.replace(cfg.static_camera, width=args.static_size,
                                                                         height=args.static_size))
    return cfg


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML with CalvinEnvConfig keys (or an 'env:' section)")
    parser.add_argument("--calvin-data-dir", type=Path, default=None,
                        help="real CALVIN assets (default: procedural table)")
    parser.add_argument("--table", default=None, help="table name inside --calvin-data-dir (default calvin_table_D)")


def _write_json(path: Path | None, data) -> None:
    text = json.dumps(data, indent=2, sort_keys=True)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def cmd_experts(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from calvin_bridge.env import CalvinEnv
    from calvin_bridge.experts import BEHAVIOURS, run_episode

    cfg = dataclasses.replace(_env_config(args), render_every_step=False)
    behaviours = args.behaviours.split(",") if args.behaviours else list(BEHAVIOURS)
    unknown = sorted(set(behaviours) - set(BEHAVIOURS))
    if unknown:
        raise ValueError(f"unknown behaviours {unknown}; known: {list(BEHAVIOURS)}")
    results: dict[str, dict] = {}
    start = time.perf_counter()
    with CalvinEnv(cfg) as env:
        for behaviour in behaviours:
            ok, labels = 0, {}
            for k in tqdm(range(args.episodes), desc=behaviour, leave=False):
                r = run_episode(env, behaviour, seed=args.seed + k)
                ok += int(r["success"])
                labels[r["label"]] = labels.get(r["label"], 0) + 1
            results[behaviour] = {"success": ok / args.episodes, "n": args.episodes, "labels": labels}
    print(f"scene={env.scene.source} seed={args.seed} episodes={args.episodes} "
          f"seconds={time.perf_counter() - start:.1f}")
    _write_json(args.json, results)
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from calvin_bridge.datasets import CollectConfig, collect, parse_mixture

    cfg = _env_config(args)
    start = time.perf_counter()
    stats = collect(cfg, CollectConfig(num_demos=args.demos, seed=args.seed, mixture=parse_mixture(args.mixture),
                                       keep_failures=args.keep_failures), args.out, resume=args.resume)
    stats["seconds"] = round(time.perf_counter() - start, 1)
    _write_json(args.json, stats)
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    from calvin_bridge.datasets import parse_mixture
    from calvin_bridge.play import PlayConfig, collect_play

    cfg = PlayConfig(episodes=args.episodes, seed=args.seed, segments_per_episode=args.segments,
                     mixture=parse_mixture(args.mixture), noise=args.noise, noise_share=args.noise_share,
                     workers=args.workers, balance=not args.no_balance)
    start = time.perf_counter()
    stats = collect_play(_env_config(args), cfg, args.out.expanduser(), resume=args.resume)
    stats["wall_seconds"] = round(time.perf_counter() - start, 1)
    stats["load_average_1min"] = round(os.getloadavg()[0], 2)
    _write_json(args.json, stats)
    return 0


def cmd_goals(args: argparse.Namespace) -> int:
    from calvin_bridge.datasets import make_goals
    from calvin_bridge.experts import BEHAVIOURS

    behaviours = tuple(args.behaviours.split(",")) if args.behaviours else BEHAVIOURS
    counts = make_goals(_env_config(args), args.out, per_behaviour=args.per_behaviour, seed=args.seed,
                        behaviours=behaviours)
    _write_json(None, counts)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from calvin_bridge.bench import bench

    sizes = tuple(int(s) for s in args.sizes.split(","))
    result = bench(_env_config(args), sizes=sizes, steps=args.steps)
    cfg = _env_config(args)
    result = {k: round(v, 2) for k, v in result.items()}
    _write_json(args.json, {"steps_per_second": result, "steps": args.steps,
                            "scene": cfg.calvin_data_dir or "procedural",
                            "gripper_camera": f"{cfg.gripper_camera.width}x{cfg.gripper_camera.height}",
                            "robot_visual": cfg.robot_visual, "renderer": "TINY (p.DIRECT)",
                            "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)})
    return 0


DEFAULT_CONFIG = Path("config/calvin_experiment.yaml")


def _config(args: argparse.Namespace) -> CalvinExperimentConfig:
    from dynaguide_experiments.calvin.config import CalvinExperimentConfig

    cfg = CalvinExperimentConfig.load(args.config if args.config.is_file() or args.config != DEFAULT_CONFIG else None)
    ev = cfg.eval
    overrides = {k: v for k, v in {"trials": getattr(args, "trials", None),
                                   "batch_envs": getattr(args, "batch_envs", None),
                                   "horizon": getattr(args, "horizon", None),
                                   "latency_steps": getattr(args, "latency_steps", None),
                                   "commit_steps": getattr(args, "commit_steps", None)}.items() if v is not None}
    if getattr(args, "quick", False):
        overrides = {"trials": 2, "horizon": 120, **overrides}
    guidance = {k: v for k, v in {"scale": getattr(args, "scale", None), "sigma": getattr(args, "sigma", None),
                                  "stochastic_steps": getattr(args, "stochastic_steps", None),
                                  "guided_steps": getattr(args, "guided_steps", None),
                                  "guidance_input": getattr(args, "guidance_input", None)}.items() if v is not None}
    if guidance:
        overrides["guidance"] = dataclasses.replace(ev.guidance, **guidance)
    rtc = {k: v for k, v in {"enabled": getattr(args, "rtc", None) or None, "mode": getattr(args, "rtc_mode", None),
                             "beta": getattr(args, "rtc_beta", None),
                             "jacobian": {"on": True, "off": False}.get(getattr(args, "rtc_jacobian", None))
                             }.items() if v is not None}
    if rtc:
        overrides["rtc"] = dataclasses.replace(ev.rtc, **rtc)
    if getattr(args, "split", None) == "validation":
        from dynaguide_experiments.calvin.config import VALIDATION_TRIAL_SEED

        overrides["seed"] = VALIDATION_TRIAL_SEED
        overrides["split"] = "validation"
    if getattr(args, "negatives", None):
        overrides["negatives"] = args.negatives
    if overrides:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(ev, **overrides))
    training = {k: v for k, v in {"out_dir": getattr(args, "out_dir", None),
                                  "export_dir": getattr(args, "export_dir", None),
                                  "device": getattr(args, "device", None),
                                  "mixed_precision": getattr(args, "mixed_precision", None),
                                  "grad_accum": getattr(args, "grad_accum", None),
                                  "seed": getattr(args, "train_seed", None)}.items() if v is not None}
    share = getattr(args, "underrepresent", None)
    if share:
        behaviour, _, value = share.partition("=")
        try:
            training.update(underrepresented_behaviour=behaviour, underrepresented_share=float(value))
        except ValueError:
            raise SystemExit(f"--underrepresent wants BEHAVIOUR=SHARE (e.g. switch_on=0.01), got {share!r}") from None
    if training:
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, **training))
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from dynaguide_experiments.calvin.pipeline import STAGES, run

    stages = tuple(s for s in args.stage.split(",") if s) if args.stage else STAGES
    times = run(_config(args), stages)
    from accelerate.state import PartialState

    if PartialState().is_main_process:
        print(json.dumps(times, indent=2))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from dynaguide_experiments.calvin.diagnostics import check_dynamics

    result = check_dynamics(_config(args), noise_steps=tuple(int(s) for s in args.noise_steps.split(",")),
                            max_segments=args.max_segments)
    return _report(result, args.json)


def _report(result: dict, path: Path | None) -> int:
    """Print ``result`` (with the command line that made it) as JSON and write it to ``path`` if given."""
    result["command"] = "dynaguide " + shlex.join(sys.argv[1:])
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return 0


def cmd_effect(args: argparse.Namespace) -> int:
    from dynaguide_experiments.calvin.diagnostics import guidance_effect

    result = guidance_effect(_config(args), args.target, tuple(float(s) for s in args.scales.split(",")))
    return _report(result, args.json)


def cmd_eval(args: argparse.Namespace) -> int:
    from dynaguide_experiments.calvin.evaluate import run_experiment

    cfg = _config(args)
    protocol = None
    if args.protocol:
        from dynaguide_experiments.calvin.protocol import apply_protocol

        if args.split != "evaluation" or args.policy or args.dynamics or any(
                getattr(args, k) is not None for k in ("trials", "horizon", "scale", "sigma", "stochastic_steps",
                                                        "guided_steps", "guidance_input", "latency_steps",
                                                        "commit_steps", "negatives", "rtc_mode", "rtc_beta",
                                                        "rtc_jacobian")) or args.rtc:
            raise SystemExit("--protocol takes every setting and model from the protocol file: drop --split, "
                             "--policy, --dynamics and the guidance/trial options")
        cfg, protocol = apply_protocol(cfg, args.protocol)
        unregistered = sorted(set(args.methods.split(",")) - set(protocol["methods"]))
        if args.experiment not in protocol["experiments"] or unregistered:
            raise SystemExit(f"the protocol registers experiments {protocol['experiments']} and methods "
                             f"{protocol['methods']}; asked for {args.experiment} with {args.methods}")
        if args.gc_policy:
            raise SystemExit("--protocol takes the goal-conditioned policy from the protocol file: drop --gc-policy")
        if "goal_conditioned" in args.methods.split(",") and "gc_policy" not in protocol["models"]:
            raise SystemExit("the protocol registers no gc_policy model for method goal_conditioned")
        args.policy, args.dynamics = protocol["models"]["policy"]["path"], protocol["models"]["dynamics"]["path"]
        args.gc_policy = protocol["models"].get("gc_policy", {}).get("path")
    out = args.out or Path("results/calvin") / (args.experiment + ("_validation" if args.split == "validation" else "")
                                                + ("_quick" if args.quick else ""))
    ray = None
    if args.ray is not None:
        from dynaguide_experiments.calvin.ray_eval import RayEvalConfig

        ray = RayEvalConfig(address=args.ray, workers=args.ray_workers, trials_per_task=args.ray_trials_per_task)
    elif args.ray_workers or args.ray_trials_per_task:
        raise SystemExit("--ray-workers and --ray-trials-per-task go with --ray")
    result = run_experiment(cfg, args.experiment, args.methods.split(","), out,
                            targets=args.targets.split(",") if args.targets else None,
                            command="dynaguide " + shlex.join(sys.argv[1:]), policy_dir=args.policy,
                            dynamics_dir=args.dynamics, gc_dir=args.gc_policy, policy_kind=args.policy_kind, ray=ray)
    if protocol is not None:   # stamp the registered protocol into the results
        result["protocol"] = {"path": str(args.protocol), "sha256": protocol["sha256"],
                              "chosen_at_commit": protocol["chosen_at_commit"]}
        (Path(out) / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"means": result["means"], "out": str(out)}, indent=2))
    return 0


def cmd_base_check(args: argparse.Namespace) -> int:
    from dynaguide_experiments.calvin.base_check import base_check

    args.split = "validation"
    cfg = _config(args)
    out = args.out or Path(cfg.training.out_dir) / "base_check"
    result = base_check(cfg, out, policy_dir=args.policy, command="dynaguide " + shlex.join(sys.argv[1:]))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


def cmd_protocol(args: argparse.Namespace) -> int:
    from dynaguide_experiments.calvin.protocol import write_protocol

    args.split = "evaluation"
    cfg = _config(args)
    export = Path(cfg.training.export_dir)
    extra = {}
    for item in args.model:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory or name in ("policy", "dynamics") or name in extra:
            raise SystemExit(f"--model wants a new NAME=DIR (not policy or dynamics, each name once), got {item!r}")
        extra[name] = directory
    if args.settings_from and any(getattr(args, k) is not None for k in (
            "trials", "scale", "sigma", "stochastic_steps", "commit_steps", "rtc_mode", "rtc_beta", "rtc_jacobian")):
        raise SystemExit("--settings-from carries the earlier protocol's settings over unchanged: drop the "
                         "guidance/trial options")
    protocol = write_protocol(cfg, args.out, args.policy or str(export / "policy"),
                              args.dynamics or str(export / "dynamics"), args.experiments.split(","),
                              args.methods.split(","), args.evidence or [], note=args.note, extra_models=extra,
                              settings_from=args.settings_from)
    print(json.dumps(protocol, indent=2))
    return 0


def cmd_ablation(args: argparse.Namespace) -> int:
    from dynaguide_experiments.calvin.ablation import run_ablation

    cfg = _config(args)
    policy_dir, dynamics_dir = args.policy, args.dynamics
    if args.protocol:
        from dynaguide_experiments.calvin.config import VALIDATION_TRIAL_SEED
        from dynaguide_experiments.calvin.protocol import apply_protocol

        if args.split != "validation" or args.policy or args.dynamics or args.trials or args.batch_envs or args.quick:
            raise SystemExit("--protocol takes the models, guidance, N and data from the protocol file, and the "
                             "ablation informs choices: run it with --split validation and drop --policy, "
                             "--dynamics, --trials, --batch-envs and --quick (its evaluation seeds are run once, by "
                             "`dynaguide calvin eval --protocol`)")
        cfg, protocol = apply_protocol(cfg, args.protocol)
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, split="validation",
                                                                    seed=VALIDATION_TRIAL_SEED))
        policy_dir, dynamics_dir = protocol["models"]["policy"]["path"], protocol["models"]["dynamics"]["path"]
    result = run_ablation(cfg, args.target, args.out, params=tuple(args.params.split(",")),
                          command="dynaguide " + shlex.join(sys.argv[1:]), policy_dir=policy_dir,
                          dynamics_dir=dynamics_dir)
    print(json.dumps({"grid": {p: [(q["value"], q["rate"]) for q in pts] for p, pts in result["grid"].items()},
                      "out": str(args.out)}, indent=2))
    return 0


def cmd_underrepresented(args: argparse.Namespace) -> int:
    from dynaguide_experiments.calvin.underrepresented import SharePolicy, policy_dir, run_underrepresented

    try:
        specs = [SharePolicy.parse(text) for text in args.shares.split(",")]
    except ValueError as exc:
        raise SystemExit(f"--shares: {exc}") from None
    cfg = _config(args)
    dynamics, natural = None, args.natural_policy
    if args.protocol:
        from dynaguide_experiments.calvin.protocol import apply_protocol

        if args.trials is not None or args.quick or args.reference or args.natural_policy:
            raise SystemExit("--protocol takes the models, guidance, N and data from the protocol file: drop "
                             "--trials, --quick, --reference and --natural-policy")
        cfg, protocol = apply_protocol(cfg, args.protocol)
        unregistered = sorted(set(args.methods.split(",")) - set(protocol["methods"]))
        if "underrepresented" not in protocol["experiments"] or unregistered:
            raise SystemExit(f"the protocol registers experiments {protocol['experiments']} and methods "
                             f"{protocol['methods']}; asked for underrepresented with {args.methods}")
        registered = {Path(m["path"]).resolve() for m in protocol["models"].values()}
        for spec in specs:
            if spec.share is not None and policy_dir(args.policies, args.target, spec.share,
                                                     spec.seed).resolve() not in registered:
                raise SystemExit(f"the protocol registers no policy for share {spec.key} at "
                                 f"{policy_dir(args.policies, args.target, spec.share, spec.seed)}")
        dynamics, natural = protocol["models"]["dynamics"]["path"], protocol["models"]["policy"]["path"]
    result = run_underrepresented(cfg, args.target, specs, args.out, policies=args.policies,
                                  reference=args.reference, methods=tuple(args.methods.split(",")),
                                  command="dynaguide " + shlex.join(sys.argv[1:]), dynamics_dir=dynamics,
                                  natural_policy=natural)
    if args.protocol:
        result["protocol"] = {"path": str(args.protocol), "sha256": protocol["sha256"],
                              "chosen_at_commit": protocol["chosen_at_commit"]}
        (Path(args.out) / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({s: {m: c["rate"] for m, c in cells.items()} for s, cells in result["shares"].items()}, indent=2))
    return 0


def cmd_breakdown(args: argparse.Namespace) -> int:
    from dynaguide_experiments.calvin.breakdown import parse_cell, plot, run_breakdown

    try:
        cells = [parse_cell(spec) for spec in args.cell]
        result = run_breakdown(cells)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"dynaguide calvin breakdown: {exc}") from None
    result["command"] = "dynaguide " + shlex.join(sys.argv[1:])
    if args.png:
        plot(result, args.png)
    return _report(result, args.json)


def cmd_same_trials(args: argparse.Namespace) -> int:
    from dynaguide_experiments.calvin.reproduce import compare_trial_logs

    result = compare_trial_logs(args.a, args.b)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text if result["differences"] or result["only_in_a"] or result["only_in_b"] else
          f"{result['identical']} of {result['trials']} trials identical ({', '.join(result['fields'])})")
    same = not (result["differences"] or result["only_in_a"] or result["only_in_b"]) and result["trials"] > 0
    return 0 if same else 1


def cmd_offtheshelf(args: argparse.Namespace) -> int:
    from dynaguide_experiments.calvin.offtheshelf import offtheshelf_results

    extra = {}
    for item in args.extra:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise SystemExit(f"--extra wants NAME=DIR, got {item!r}")
        extra[name] = Path(directory)
    result = offtheshelf_results(args.harness, args.out, args.training, args.note, args.policy, args.dynamics, extra)
    print(json.dumps(result["targets"], indent=2))
    return 0


def cmd_rtc(args: argparse.Namespace) -> int:
    from dynaguide_experiments.calvin.rtc import run_rtc

    args.split = "validation"
    cfg = _config(args)
    try:
        delays = [int(d) for d in args.delays.split(",")]
    except ValueError:
        raise SystemExit(f"--delays wants comma-separated integers (e.g. 4,8,12), got {args.delays!r}") from None
    result = run_rtc(cfg, args.targets.split(","), args.trials, args.latency_steps, delays, args.out,
                     parts=tuple(args.parts.split(",")), policy_dir=args.policy, dynamics_dir=args.dynamics)
    print(json.dumps({k: result.get(k) for k in ("splice_jump", "steering")}, indent=2))
    return 0


def rtc_options(p) -> None:
    """``--rtc``, ``--rtc-mode``, ``--rtc-beta`` (EvalConfig.rtc, dynaguide.guidance.rtc.RTCConfig)."""
    p.add_argument("--rtc", action="store_true",
                   help="real-time chunking with --latency-steps: each chunk is planned to agree with the previous "
                        "chunk's actions that run during its delay")
    p.add_argument("--rtc-mode", choices=("soft", "hard"), default=None,
                   help="soft: guidance on the denoised estimate; hard: inpainting (default: RTCConfig.mode)")
    p.add_argument("--rtc-beta", type=float, default=None, help="clip of the RTC guidance weight (RTCConfig.beta)")
    p.add_argument("--rtc-jacobian", nargs="?", const="on", choices=("on", "off"), default=None,
                   help="exact ΠGDM: the RTC guidance through the policy's Jacobian, one more pass per step "
                        "(default: RTCConfig.jacobian)")


def _register_experiments(sub) -> None:
    """The experiments' subcommands (``rtc``, ``train``, ``check-dynamics``, ``eval``, ...) of ``dynaguide calvin``."""
    def common(p):
        p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="CalvinExperimentConfig YAML")

    p = sub.add_parser("rtc", help="real-time chunking: splice smoothness (open loop) and steering under delay, "
                                   "naive vs RTC vs lockstep, on validation seeds")
    common(p)
    p.add_argument("--targets", default="switch_on,button_on,drawer_open")
    p.add_argument("--trials", type=int, default=8, help="trials (and open-loop start states) per target")
    p.add_argument("--latency-steps", type=int, default=8, help="delay d of the steering comparison")
    p.add_argument("--delays", default="4,8,12", help="delays of the open-loop splice measurement")
    p.add_argument("--parts", default="splice,steering", help="splice, steering or both")
    p.add_argument("--rtc-mode", choices=("soft", "hard"), default=None)
    p.add_argument("--rtc-beta", type=float, default=None)
    p.add_argument("--rtc-jacobian", nargs="?", const="on", choices=("on", "off"), default=None)
    p.add_argument("--policy", default=None)
    p.add_argument("--dynamics", default=None)
    p.add_argument("--out", type=Path, default=Path("results/rtc"),
                   help="writes OUT.json, OUT.png and trial logs under OUT/")
    p.set_defaults(func=cmd_rtc)

    p = sub.add_parser("train", help="resumable data merge, embedding, policy and dynamics training, export")
    common(p)
    p.add_argument("--stage", default=None, help="comma-separated subset of merge,embed,policy,dynamics,export")
    p.add_argument("--underrepresent", default=None, metavar="BEHAVIOUR=SHARE",
                   help="UnderrepresentedBehaviors: the base policy sees BEHAVIOUR as SHARE of its training segments")
    p.add_argument("--seed", dest="train_seed", type=int, default=None,
                   help="seed of the initial weights and batch order (training.seed; default 0)")
    p.add_argument("--out-dir", default=None, help="override training.out_dir (resumable runs)")
    p.add_argument("--export-dir", default=None, help="override training.export_dir")
    p.add_argument("--device", default=None, help="override training.device: cpu, cuda or auto (accelerate launch: "
                                                  "each process its local GPU)")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                   help="override training.mixed_precision")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="override training.grad_accum (training.batch_size stays the global batch)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("check-dynamics", help="does the predicted outcome tell behaviours apart? (validation)")
    common(p)
    p.add_argument("--noise-steps", default="0,5,10,20,50,90",
                   help="train-scale noise levels k of the chunk (0..num_train_timesteps-1)")
    p.add_argument("--max-segments", type=int, default=140)
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("guidance-effect", help="open-loop effect of the scale s on the metric and its gradient")
    common(p)
    p.add_argument("--target", default="drawer_open")
    p.add_argument("--scales", default="0,1.5,4,10")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(func=cmd_effect)

    p = sub.add_parser("eval", help="batched closed-loop evaluation of methods on CALVIN targets")
    common(p)
    p.add_argument("--experiment", default="articulated",
                   choices=("articulated", "movable", "underspecified", "multi_objective"),
                   help="underspecified = the articulated targets and trial seeds, goal images from the "
                        "underspecified goal set (only the target part in its goal state, the rest randomised); "
                        "multi_objective = the setups of MULTI_OBJECTIVE_SETUPS (several positives / negatives)")
    p.add_argument("--methods", default="base,dynaguide")
    p.add_argument("--targets", default=None, help="comma-separated subset of the experiment's targets")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--batch-envs", type=int, default=None)
    p.add_argument("--scale", type=float, default=None)
    p.add_argument("--sigma", type=float, default=None)
    p.add_argument("--stochastic-steps", type=int, default=None)
    p.add_argument("--guided-steps", type=int, default=None,
                   help="guide only the last k DDIM steps (GuidanceConfig.guided_steps; 0 = all)")
    p.add_argument("--guidance-input", choices=("noisy", "denoised"), default=None,
                   help="what the dynamics model scores: the noisy chunk (paper) or the denoised estimate")
    p.add_argument("--latency-steps", type=int, default=None,
                   help="wall-clock execution: chunks arrive this many control steps after their observation")
    p.add_argument("--commit-steps", type=int, default=None,
                   help="actions executed per chunk before replanning (default: the policy's n_action_steps)")
    rtc_options(p)
    p.add_argument("--negatives", choices=("none", "others"), default=None)
    p.add_argument("--split", choices=("evaluation", "validation"), default="evaluation",
                   help="validation: trial seeds from the validation range (for choosing s, sigma, M)")
    p.add_argument("--quick", action="store_true", help="2 trials of 120 steps per cell (CI smoke run)")
    p.add_argument("--protocol", type=Path, default=None,
                   help="a committed pre-registered protocol (dynaguide calvin protocol): its models, seeds, N and "
                        "guidance settings, checked against the registered SHA-256s")
    p.add_argument("--policy", default=None, help="policy checkpoint dir (default: training.export_dir/policy)")
    p.add_argument("--policy-kind", choices=("dynaguide", "lerobot"), default="dynaguide",
                   help="lerobot: --policy is a LeRobot DiffusionPolicy save_pretrained directory")
    p.add_argument("--dynamics", default=None)
    p.add_argument("--gc-policy", default=None, help="goal-conditioned policy checkpoint (method goal_conditioned)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the cells on a Ray cluster (optional extra `distributed`): a local one by default, "
                        "`auto` for the running cluster, or host:port / ray://host:10001 (ray_eval.py)")
    p.add_argument("--ray-workers", type=int, default=0, help="Ray worker actors (0 = one per cluster CPU)")
    p.add_argument("--ray-trials-per-task", type=int, default=0,
                   help="cut cells into units of this many trials (0 = whole cells: identical to a run without Ray)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("base-check", help="does the base policy finish? finish rate, chunk reversals, first "
                                          "behaviours on ArticulatedParts validation cells")
    common(p)
    p.add_argument("--trials", type=int, default=10, help="trials per articulated target (validation seeds)")
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--batch-envs", type=int, default=None)
    p.add_argument("--policy", default=None, help="policy checkpoint dir (default: training.export_dir/policy)")
    p.add_argument("--out", type=Path, default=None,
                   help="trial logs (resumable; default: training.out_dir/base_check)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    rtc_options(p)
    p.set_defaults(func=cmd_base_check)

    p = sub.add_parser("protocol", help="pre-register the evaluation: models (SHA-256), guidance, seeds, N, commit")
    common(p)
    p.add_argument("--out", type=Path, required=True, help="protocol JSON to write (refuses to overwrite)")
    p.add_argument("--policy", default=None)
    p.add_argument("--dynamics", default=None)
    p.add_argument("--experiments", default="articulated,movable")
    p.add_argument("--methods", default="base,dynaguide,gpc,itps,goal_conditioned")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--scale", type=float, default=None)
    p.add_argument("--sigma", type=float, default=None)
    p.add_argument("--stochastic-steps", type=int, default=None)
    p.add_argument("--commit-steps", type=int, default=None)
    rtc_options(p)
    p.add_argument("--evidence", nargs="*", default=None, help="the validation results the choice was made on")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                   help="register a further model by name (gc_policy=DIR for goal_conditioned; an underrepresented "
                        "policy <target>_<percent>pct[_seed<k>]=DIR); repeatable")
    p.add_argument("--settings-from", default=None, metavar="PROTOCOL",
                   help="carry an earlier protocol's guidance, seeds, N and data over unchanged")
    p.add_argument("--note", default="")
    p.set_defaults(func=cmd_protocol)

    p = sub.add_parser("ablation", help="s / sigma / M / squared-distance ablation on one ArticulatedParts target")
    common(p)
    p.add_argument("--target", default="switch_on")
    p.add_argument("--params", default="scale,sigma,stochastic_steps,squared")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--batch-envs", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="2 trials of 120 steps per cell (CI smoke run)")
    p.add_argument("--split", choices=("evaluation", "validation"), default="evaluation",
                   help="the seeds and start poses (validation: where an ablation informs a choice)")
    p.add_argument("--policy", default=None, help="policy checkpoint dir (default: training.export_dir/policy)")
    p.add_argument("--dynamics", default=None, help="dynamics checkpoint dir (default: training.export_dir/dynamics)")
    p.add_argument("--protocol", type=Path, default=None,
                   help="a committed pre-registered protocol (dynaguide calvin protocol): its models, guidance "
                        "settings around which the grid varies one parameter at a time, N and data, checked against "
                        "the registered SHA-256s; with --split validation only")
    p.add_argument("--out", type=Path, default=Path("results/calvin/ablation"))
    p.set_defaults(func=cmd_ablation)

    p = sub.add_parser("underrepresented", help="steer a base policy trained with the target underrepresented")
    common(p)
    p.add_argument("--target", default="switch_on")
    p.add_argument("--shares", default="0.01,0.02",
                   help="SHARE, SHARE@SEED (the policy trained with --seed SEED) or natural (trained on every "
                        "segment), comma-separated")
    p.add_argument("--methods", default="base,dynaguide,gpc")
    p.add_argument("--protocol", type=Path, default=None,
                   help="a committed pre-registered protocol that registers the experiment and every share's "
                        "policy (dynaguide calvin protocol --model ...): its dynamics, guidance, N and data; "
                        "natural is its policy")
    p.add_argument("--natural-policy", default=None,
                   help="the policy trained on every segment (default: training.export_dir/policy)")
    p.add_argument("--policies", default="checkpoints/calvin_underrepresented",
                   help="directory of <target>_<percent>pct/policy exports (dynaguide calvin train --underrepresent)")
    p.add_argument("--reference", default=None,
                   help="results dir of the shipped policy's ArticulatedParts cells, shown at its natural share")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="2 trials of 120 steps per cell (CI smoke run)")
    p.add_argument("--out", type=Path, default=Path("results/calvin/underrepresented"))
    p.set_defaults(func=cmd_underrepresented)

    p = sub.add_parser("offtheshelf", help="results/offtheshelf/: a LeRobot policy steered on CALVIN, summarised "
                                           "from `dynaguide calvin eval` runs (results.json, results.md)")
    p.add_argument("--harness", type=Path, required=True, help="the `dynaguide calvin eval --out` directory")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--training", type=Path, default=None, help="the `dynaguide train lerobot --out` directory")
    p.add_argument("--policy", type=Path, default=None, help="the LeRobot pretrained_model directory evaluated")
    p.add_argument("--dynamics", type=Path, default=None, help="the dynamics checkpoint used")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=DIR",
                   help="another harness directory whose dynaguide cells are reported as NAME (repeatable)")
    p.add_argument("--note", default="")
    p.set_defaults(func=cmd_offtheshelf)

    p = sub.add_parser("same-trials", help="do two `calvin eval` runs give the same trials? (a code change that "
                                           "must change no result); exit code 1 if not")
    p.add_argument("a", type=Path, help="a `dynaguide calvin eval --out` directory")
    p.add_argument("b", type=Path, help="another, from the same command (e.g. on another commit)")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(func=cmd_same_trials)

    p = sub.add_parser("breakdown", help="where evaluated trials go: target / its part the other way / other / none")
    p.add_argument("--cell", action="append", required=True, metavar="NAME=DIR:METHOD",
                   help="a results directory of `dynaguide calvin eval` and one of its methods (repeatable)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--png", type=Path, default=None)
    p.set_defaults(func=cmd_breakdown)


def register(subparsers) -> None:
    parser = subparsers.add_parser("calvin", help="CALVIN-like play table (experts, datasets, goals, speed) and the "
                                                  "CALVIN experiments (train, eval, ablations, rtc)")
    sub = parser.add_subparsers(dest="calvin_command", metavar="CALVIN_COMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p = sub.add_parser("experts", help="success rate of every scripted expert")
    _common(p)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--behaviours", default=None, help="comma-separated subset (default: all 14)")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(func=cmd_experts)

    p = sub.add_parser("collect", help="record expert demonstrations to HDF5")
    _common(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--demos", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixture", default=None, help="behaviour=weight,... (unlisted behaviours get 0; default uniform)")
    p.add_argument("--static-size", type=int, default=None, help="static camera size (default from config: 200)")
    p.add_argument("--keep-failures", action="store_true")
    p.add_argument("--resume", action="store_true", help="append to an existing file")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("play", help="chained play episodes with DART-perturbed recovery segments (parallel shards)")
    _common(p)
    p.add_argument("--out", type=Path, required=True, help="directory of the shard files (e.g. ~/.cache/dynaguide/...)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--segments", type=int, default=6, help="behaviours chained per episode")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (one shard file each)")
    p.add_argument("--seed", type=int, default=0, help="episode i uses seed SEED + i")
    p.add_argument("--mixture", default=None, help="behaviour=weight,... (default uniform over all 14)")
    p.add_argument("--noise", type=float, default=0.3, help="std of the executed-action noise (action units)")
    p.add_argument("--noise-share", type=float, default=0.5, help="share of segments executed with noise")
    p.add_argument("--no-balance", action="store_true",
                   help="pick among the possible behaviours by --mixture alone (default: also by 1 / (1 + attempts))")
    p.add_argument("--static-size", type=int, default=None, help="static camera size (default from config: 200)")
    p.add_argument("--resume", action="store_true", help="continue existing shards")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("goals", help="held-out and underspecified goal frames per behaviour")
    _common(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-behaviour", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--behaviours", default=None)
    p.add_argument("--static-size", type=int, default=None)
    p.set_defaults(func=cmd_goals)

    p = sub.add_parser("bench", help="env steps per second with and without rendering")
    _common(p)
    p.add_argument("--sizes", default="200,96")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(func=cmd_bench)

    _register_experiments(sub)
