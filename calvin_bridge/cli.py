"""``dynaguide calvin …``: run the scripted experts, collect demonstrations and goals, benchmark the env.

    dynaguide calvin experts [--calvin-data-dir DIR --table NAME] --episodes N --json OUT
    dynaguide calvin collect --out FILE --demos N [--mixture switch_on=0.01,...] [--resume]
    dynaguide calvin play --out DIR --episodes N --workers W [--noise 0.3 --noise-share 0.5] [--resume]
    dynaguide calvin goals --out FILE --per-behaviour N
    dynaguide calvin bench [--sizes 200,96] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from dynaguide.config import from_dict, load_yaml

from calvin_bridge.config import CalvinEnvConfig


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


def register(subparsers) -> None:
    parser = subparsers.add_parser("calvin", help="CALVIN-like play table: experts, datasets, goals, speed")
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

    from dynaguide.experiments.calvin.cli import register_into

    register_into(sub)
