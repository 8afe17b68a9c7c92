"""``dynaguide bench embedder | guidance | realtime``: the performance benchmarks (:mod:`dynaguide.bench`,
:mod:`dynaguide.realtime_bench`).

The libraries import torch; they are imported when a benchmark runs, not when the command line is built.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from dynaguide_cli.parsers import LazyDefaultsParser

GUIDANCE_DESCRIPTION = "``dynaguide bench guidance``: how fast is a guided chunk, and does it match the official loop?"
EMBEDDER_DESCRIPTION = ("Embedding cost: ms per image of :func:`dynaguide.embedders.factory.make_embedder` for "
                        "``kind`` at ``image_size``.")
REALTIME_DESCRIPTION = ("Does a guided policy keep up with the robot?  Latency budget and wall-clock schedule (no "
                        "ROS).")


def guidance_defaults() -> dict:
    """``--scale``, ``--sigma``, ``--stochastic-steps`` and ``--configs`` defaults: :class:`GuidanceConfig`'s."""
    from dynaguide.bench import CONFIG_NAMES
    from dynaguide.guidance import GuidanceConfig

    return {"scale": GuidanceConfig.scale, "sigma": GuidanceConfig.sigma,
            "stochastic_steps": GuidanceConfig.stochastic_steps, "configs": list(CONFIG_NAMES)}


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _int_list_one(text: str) -> int:
    values = _int_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
    return values[0]


def _config_list(text: str) -> list[str]:
    from dynaguide.bench import CONFIG_NAMES

    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in CONFIG_NAMES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"configs must be a comma-separated subset of {CONFIG_NAMES}, got {text!r}")
    return names


def run_guidance_bench(args: argparse.Namespace) -> int:
    import torch

    from dynaguide.bench import bench_config, build_setup
    from dynaguide.diffusion import DDIMConfig
    from dynaguide.guidance import GuidanceConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    guidance = GuidanceConfig(scale=args.scale, stochastic_steps=args.stochastic_steps, sigma=args.sigma)
    ddim = DDIMConfig(num_inference_steps=args.steps)
    print(f"dynaguide bench guidance: K={args.goals} positive goals, M={guidance.stochastic_steps} (repeat), "
          f"{ddim.num_inference_steps} DDIM steps, s={guidance.scale}, sigma={guidance.sigma}, "
          f"torch threads={torch.get_num_threads()}, repeats={args.repeats}")
    print("NOTE: policy and dynamics weights are randomly initialised (timing does not depend on training); "
          "ms are per action chunk, conditioning/embedding of the current frame excluded.")
    results: dict[str, dict[str, float]] = {}
    for name in args.configs:
        for i, batch in enumerate(args.batch):
            key = name if i == 0 else f"{name}_b{batch}"
            setup = build_setup(name, batch, args.goals, guidance, seed=args.seed)
            row = bench_config(setup, args.repeats, ddim)
            results[key] = row
            if args.json:  # written after every configuration, so a long run keeps what it measured
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
            print(f"[{key}] B={batch}: guided {row['guided_ms']:.1f} ms/chunk, "
                  f"unguided {row['unguided_ms']:.1f} ms/chunk, "
                  f"naive official loop {row['naive_guided_ms']:.1f} ms/chunk "
                  f"-> speedup x{row['speedup_vs_naive']:.2f}; "
                  f"max |guided - naive| = {row['max_abs_diff_vs_naive']:.2e} "
                  f"(guided vs unguided differ by up to {row['guided_vs_unguided_max_abs_diff']:.3f}); "
                  f"1-min load average {row['load_avg_1min_after']:.1f}; autograd-saved memory peak: guided "
                  f"{row['guided_peak_saved_mb']:.1f} MB for B={batch}, "
                  f"naive {row['naive_peak_saved_mb_per_chunk']:.1f} MB "
                  "for one chunk", flush=True)
    if args.json:
        print(f"wrote {args.json}")
    return 0


def run_embedder_bench(args: argparse.Namespace) -> int:
    from dynaguide.bench import bench_embedder

    row = bench_embedder(args.kind, args.image_size, args.stride, tuple(args.batch), args.repeats, args.threads,
                         args.source_size or None)
    per = ", ".join(f"B={b}: {ms:.2f} ms/image" for b, ms in row["ms_per_image"].items())
    print(f"dynaguide bench embedder: {row['embedder_id']} ({row['num_tokens']} tokens x {row['dim']}), "
          f"{row['source_size']} px input → {row['image_size']} px, torch threads={row['threads']}, "
          f"median of {row['repeats']}: {per}; weights load {row['load_s']:.2f} s; 1-min load average "
          f"{row['load_avg_1min_before']:.2f} before, {row['load_avg_1min_after']:.2f} after", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(row, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}")
    return 0


def run_realtime_bench(args: argparse.Namespace) -> int:
    """``dynaguide bench realtime``: compute p50/p95 per guided chunk against the execution budget."""
    from dynaguide.realtime_bench import bench_graph, load_graph_policy

    report = {}
    checkpoints = args.checkpoints or ["none"] * len(args.config)
    if len(checkpoints) != len(args.config):
        raise SystemExit(f"give --checkpoints once per --config ({len(args.config)}), 'none' for the file's own")
    for path, ckpt in zip(args.config, checkpoints):
        settings = load_graph_policy(path, None if ckpt == "none" else ckpt)
        if args.threads:
            settings.runner = replace(settings.runner, torch_threads=args.threads)
        entry = bench_graph(settings, chunks=args.chunks, goals=args.goals, seed=args.seed)
        entry["settings"]["command"] = "dynaguide " + shlex.join(getattr(args, "argv", sys.argv[1:]))
        report[settings.name] = entry
        verdict = "KEEPS UP" if entry["keeps_up"] else "DOES NOT KEEP UP"
        print(f"{settings.name}: compute p50 {entry['p50_ms']} ms, p95 {entry['p95_ms']} ms vs budget "
              f"{entry['budget_ms']} ms; {100 * entry['dropped_fraction']:.1f} % of control ticks without an action "
              f"-> {verdict} (K={args.goals}, M={entry['settings']['stochastic_steps_M']}, trained="
              f"{entry['settings']['trained']}, load {entry['settings']['load_avg_before']} -> "
              f"{entry['settings']['load_avg_after']} on {entry['settings']['cpu_count']} CPUs)")
        for name, row in entry["variants"].items():
            extra = ""
            if "time_ratio_vs_configured" in row:
                extra = (f", {row['time_ratio_vs_configured']}x the configured time, max diff "
                         f"{row['max_abs_diff_vs_configured']:.1e}")
            print(f"  {name:26s} p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  dropped "
                  f"{100 * row['dropped_fraction']:5.1f} %  keeps up: {row['keeps_up']}{extra}")
        replays = entry["execution_horizon"]["replays"]
        print("  execution horizon P (steps): budget / RTC budget / dropped with the configured times: " + "; ".join(
            f"{p}: {r['budget_ms']:.0f}/{r['rtc_budget_ms']:.0f} ms {100 * r['dropped_fraction']:.1f} %"
            for p, r in replays.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(e["keeps_up"] for e in report.values()) or not args.strict else 1


def add_realtime_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("realtime", help="does the configured guided policy keep up with the robot?",
                            description=REALTIME_DESCRIPTION)
    parser.add_argument("--config", action="append", required=True,
                        help="graph parameter file (config/calvin_sim.yaml, config/real_arx5.yaml); repeatable")
    parser.add_argument("--checkpoints", action="append", default=None,
                        help="per --config, in order: a directory with policy/ and dynamics/ replacing the file's "
                             "runner checkpoints, or 'none' for the file's own (policy_node.models: the shipped "
                             "trained models in config/calvin_sim.yaml; none in config/real_arx5.yaml: untrained "
                             "models, same cost)")
    parser.add_argument("--chunks", type=int, default=30, help="timed chunks per variant")
    parser.add_argument("--goals", type=int, default=20, help="K positive goal images (paper: 20)")
    parser.add_argument("--threads", type=int, default=0, help="override runner.torch_threads (0 = the file's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a configuration does not keep up")
    parser.add_argument("--json", metavar="OUT", default=None, help="write {config: {p50_ms, p95_ms, ...}}")
    parser.set_defaults(func=run_realtime_bench)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` (with its ``embedder``, ``guidance`` and ``realtime`` subcommands) to the ``dynaguide`` command."""
    bench = subparsers.add_parser("bench", help="performance benchmarks")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH", parser_class=LazyDefaultsParser)
    emb = sub.add_parser("embedder", help="embedding cost per image (ms) of the default or another embedder",
                         description=EMBEDDER_DESCRIPTION)
    emb.add_argument("--kind", default="efficientnet_lite0", choices=("efficientnet_lite0", "random"))
    emb.add_argument("--image-size", type=int, default=128, help="embedder input side (px)")
    emb.add_argument("--stride", type=int, default=16, help="EfficientNet feature stride: 8, 16 or 32")
    emb.add_argument("--source-size", type=int, default=0, help="side of the random input images (0 = image size)")
    emb.add_argument("--batch", type=_int_list, default=[1, 32], help="batch size(s), comma list")
    emb.add_argument("--repeats", type=_int_list_one, default=5, help="timed calls per batch size (median)")
    emb.add_argument("--threads", type=int, default=1, help="torch threads")
    emb.add_argument("--json", metavar="OUT", default=None, help="write results as JSON")
    emb.set_defaults(func=run_embedder_bench)
    parser = sub.add_parser("guidance", help="guided vs unguided vs naive official sampling loop",
                            description=GUIDANCE_DESCRIPTION, lazy_defaults=guidance_defaults)
    parser.add_argument("--configs", type=_config_list, help="comma list of cpu,paper")
    parser.add_argument("--batch", type=_int_list, default=[1],
                        help="batch size(s), comma list, e.g. 1,8 (B chunks at once vs B sequential naive runs)")
    parser.add_argument("--repeats", type=_int_list_one, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--goals", type=int, default=10, help="K positive goals")
    parser.add_argument("--stochastic-steps", type=int, help="M (default: GuidanceConfig)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM inference steps")
    parser.add_argument("--scale", type=float, help="guidance scale s (default: GuidanceConfig)")
    parser.add_argument("--sigma", type=float, help="metric temperature sigma (default: GuidanceConfig)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", default=None, help="write results as JSON")
    parser.set_defaults(func=run_guidance_bench)
    add_realtime_parser(sub)
    bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])
