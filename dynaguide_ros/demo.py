"""``dynaguide demo`` — the README's main job: the CALVIN sim graph, headless, steered by goal images.

1. starts the ``calvin_sim`` graph (bridge, embedding node, guidance manager, policy node) as separate
   processes over localhost DDS, exactly as ``dynaguide launch calvin_sim`` does;
2. calls ``/set_guidance`` with the goal images (default: final frames of the target behaviour rendered
   by the scripted expert in the same simulator, cached under ``--out``);
3. runs for ``--duration`` seconds, records the static camera and the behaviour events;
4. writes ``<out>/strip.png`` (static camera over time) and ``<out>/summary.json``, prints the result.

Models: ``--checkpoints DIR`` with ``policy/`` and ``dynamics/`` (from ``dynaguide calvin train``; default
``checkpoints/calvin_effnet``);
without trained checkpoints the graph runs UNTRAINED random-initialised CPU models and says so — the
plumbing is real, the behaviour is then meaningless.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from dynaguide_ros.ros_env import apply_localhost_defaults

#: expert episode seeds of the demo's goal images, inside the goal range of the CALVIN experiments
#: (dynaguide/experiments/calvin/config.py SEED_RANGES["goals"]), disjoint from training and evaluation
DEMO_GOAL_SEED = 2_500_000

DEFAULT_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints" / "calvin_effnet"


def expert_goal_images(behaviour: str, n: int, out: Path, size: int = 200) -> list[np.ndarray]:
    """Final static-camera frames of ``n`` scripted-expert episodes of ``behaviour`` (cached as PNG)."""
    from PIL import Image

    from calvin_bridge.config import CalvinEnvConfig
    from calvin_bridge.env import CalvinEnv
    from calvin_bridge.experts import run_episode

    out.mkdir(parents=True, exist_ok=True)
    files = sorted(out.glob(f"{behaviour}_*.png"))
    if len(files) >= n:
        return [np.asarray(Image.open(f).convert("RGB")) for f in files[:n]]
    cfg = CalvinEnvConfig(render_every_step=False)
    cfg.static_camera.width = cfg.static_camera.height = size
    images = []
    with CalvinEnv(cfg) as env:
        for seed in range(DEMO_GOAL_SEED, DEMO_GOAL_SEED + 4 * n):   # goal seeds: disjoint from training data
            result = run_episode(env, behaviour, seed)
            if result.get("success"):
                img = env.render_cameras()["rgb_static"]
                Image.fromarray(img).save(out / f"{behaviour}_{len(images)}.png")
                images.append(img)
            if len(images) == n:
                break
    if not images:
        raise RuntimeError(f"the scripted expert produced no successful {behaviour} episode")
    return images


def _scene_label(args) -> str:
    """How the demo's scenes are drawn, as recorded in its summaries."""
    return "random" if args.random_scene else f"{args.behaviour} possible"


def _run(args) -> int:
    apply_localhost_defaults()
    import rclpy
    from PIL import Image as PILImage
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from dynaguide_msgs.msg import BehaviourEvent, PolicyDiagnostics
    from dynaguide_ros.conversions import rgb_from_image_msg
    from dynaguide_ros.guide_cli import call_set_guidance
    from dynaguide_ros.launcher import GraphLauncher
    from dynaguide_ros.qos import RELIABLE, SENSOR

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[demo] goal images: final frames of scripted '{args.behaviour}' episodes")
    goals = expert_goal_images(args.behaviour, args.goals, Path(getattr(args, "goal_dir", None) or out / "goals"),
                               size=args.image_size)
    ckpt = Path(args.checkpoints)
    trained = (ckpt / "policy" / "config.json").is_file() and (ckpt / "dynamics" / "config.json").is_file()
    overrides = {"guidance_manager": {"state_dir": str(out / "guidance_state")},
                 "calvin_bridge": {"seed": args.seed, "static_size": args.image_size, "lockstep": not args.wall_clock,
                                   # guided and unguided runs of a seed start in the same scene
                                   "scene_for": "" if args.random_scene else args.behaviour}}
    if args.wall_clock:
        overrides["embedding_node"] = {"use_sim_time": False}
    overrides["policy_node"] = {"use_sim_time": not args.wall_clock}
    if trained:
        overrides["policy_node"].update({"runner.policy_checkpoint": str(ckpt / "policy"),
                                         "runner.dynamics_checkpoint": str(ckpt / "dynamics")})
        print(f"[demo] models: {ckpt}")
    else:
        print(f"[demo] WARNING: no trained checkpoints in {ckpt}: running UNTRAINED random models "
              "(the graph is real, the behaviour is not meaningful)")
    launcher = GraphLauncher("calvin_sim", overrides=overrides, out=open(out / "graph.log", "w"))
    rclpy.init()
    node = rclpy.create_node("dynaguide_demo")
    frames, events, diags = [], [], []
    node.create_subscription(Image, "camera/rgb_static", lambda m: frames.append((time.monotonic(), m)), SENSOR)
    node.create_subscription(BehaviourEvent, "calvin/behaviour", events.append, RELIABLE)
    node.create_subscription(PolicyDiagnostics, "policy/diagnostics", diags.append, RELIABLE)
    execution: dict = {}  # the bridge's latest executor counts (/diagnostics "calvin_bridge: execution")

    def on_status(msg) -> None:
        for status in msg.status:
            if status.name.endswith(": execution"):
                execution.update({kv.key: int(kv.value) for kv in status.values if kv.value.lstrip("-").isdigit()})
    node.create_subscription(DiagnosticArray, "/diagnostics", on_status, RELIABLE)
    launcher.start()
    summary: dict = {"behaviour_target": None if args.unguided else args.behaviour, "seed": args.seed,
                     "scene": _scene_label(args),
                     "trained_models": trained, "duration_s": args.duration}
    try:
        print("[demo] waiting for the graph (first start imports torch in four processes)...")
        if args.unguided:
            from dynaguide_ros.guide_cli import call_clear_guidance

            res = call_clear_guidance(node=node, timeout=args.ready_timeout)
            print(f"[demo] unguided base policy: {res.message}")
        else:
            res = call_set_guidance(goals, [], scale=args.scale, sigma=args.sigma,
                                    stochastic_steps=args.stochastic_steps, node=node,
                                    timeout=args.ready_timeout)
            print(f"[demo] /set_guidance: {'ok' if res.success else 'rejected'}: {res.message}")
            summary["guidance"] = res.message  # the s, sigma and M in force
            if not res.success:
                return 1
        start = time.monotonic()
        first_stamp = None   # simulated (or wall) time of the first frame after guidance was set

        def sim_elapsed() -> float:
            nonlocal first_stamp
            if not frames:
                return 0.0
            stamp = frames[-1][1].header.stamp
            now = stamp.sec + stamp.nanosec * 1e-9
            first_stamp = now if first_stamp is None else first_stamp
            return now - first_stamp

        frames.clear()
        execution_at_start = dict(execution)
        while time.monotonic() - start < args.duration:
            rclpy.spin_once(node, timeout_sec=0.1)
            if args.sim_seconds and sim_elapsed() >= args.sim_seconds:
                break
        summary["sim_seconds"] = round(sim_elapsed(), 2)
        summary["wall_seconds"] = round(time.monotonic() - start, 1)
    finally:
        launcher.stop()
        node.destroy_node()
        rclpy.shutdown()
    behaviours = [e.behaviour for e in events]
    guided = [d for d in diags if d.guided]
    summary.update({
        "behaviours_detected": behaviours,
        "first_behaviour": behaviours[0] if behaviours else "no_behaviour",
        "target_reached": (args.behaviour in behaviours) if not args.unguided else None,
        "chunks": len(diags), "guided_chunks": len(guided),
        "clock": "wall (late actions dropped)" if args.wall_clock else "simulated (lockstep)",
        "median_compute_ms": float(np.median([d.compute_ms for d in guided])) if guided else None,
        # observation stamp -> chunk published, in the graph's clock (≈ 0 in lockstep: the world waits)
        "median_latency_ms": float(np.median([d.latency_ms for d in guided])) if guided else None,
        "frames_recorded": len(frames),
        "compute_p95_ms": float(np.percentile([d.compute_ms for d in guided], 95)) if guided else None,
        "budget_ms": float(diags[-1].budget_ms) if diags else None,
    })
    if execution and execution_at_start:  # executor counts over the guided run (lockstep: held = world paused)
        run = {k: execution[k] - execution_at_start.get(k, 0) for k in execution}
        run["held_fraction"] = round(run["held"] / run["ticks"], 4) if run.get("ticks") else None
        summary["execution"] = run
    if frames:
        pick = np.linspace(0, len(frames) - 1, num=min(8, len(frames))).astype(int)
        strip = np.concatenate([rgb_from_image_msg(frames[i][1]) for i in pick], axis=1)
        if strip.shape[0] < 150:  # small frames: enlarge for viewing (nearest neighbour)
            k = int(np.ceil(150 / strip.shape[0]))
            strip = strip.repeat(k, axis=0).repeat(k, axis=1)
        PILImage.fromarray(strip).save(out / "strip.png")
        summary["strip"] = str(out / "strip.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    timing = (f"{summary['guided_chunks']} guided chunks; median compute {summary['median_compute_ms']:.0f} ms, "
              f"observation-to-chunk latency {summary['median_latency_ms']:.0f} ms ({summary['clock']} clock)"
              if guided else f"{summary['chunks']} chunks, none guided")
    print(f"[demo] behaviours detected: {behaviours or ['none']} (target: {summary['behaviour_target']}); {timing}")
    if summary.get("execution", {}).get("ticks"):
        ex = summary["execution"]
        print(f"[demo] executor: {ex['ticks']} control ticks, {ex['held']} without an action due "
              f"({100 * ex['held_fraction']:.1f} %; {'world paused' if not args.wall_clock else 'robot held'}), "
              f"{ex.get('stale_on_arrival', 0)} chunk steps stale on arrival; compute p95 "
              f"{summary['compute_p95_ms'] or float('nan'):.0f} ms vs budget "
              f"{summary['budget_ms'] or float('nan'):.0f} ms")
    print(f"[demo] wrote {out / 'summary.json'} and {summary.get('strip', 'no strip')}")
    return 0


def _measure(args) -> int:
    """``--measure N``: N seeds guided and N unguided (resumable per run) → ``--json`` steering summary."""
    import copy
    import shlex
    import sys

    runs = {"guided": [], "unguided": []}
    for seed in range(args.seed, args.seed + args.measure):
        for mode in ("guided", "unguided"):
            out = Path(args.out) / f"{mode}_{seed}"
            if not (out / "summary.json").is_file():
                run_args = copy.copy(args)
                run_args.seed, run_args.unguided, run_args.out = seed, mode == "unguided", str(out)
                run_args.goal_dir = str(Path(args.out) / "goals")
                _run(run_args)
            summary = json.loads((out / "summary.json").read_text())
            runs[mode].append({"seed": seed, "first_behaviour": summary["first_behaviour"],
                               "behaviours": summary["behaviours_detected"]})
    result = {"target": args.behaviour, "duration_s": args.duration, "sim_seconds": args.sim_seconds,
              "checkpoints": str(args.checkpoints), "goals": args.goals,
              "scene": _scene_label(args),
              "command": "dynaguide " + shlex.join(sys.argv[1:])}
    for mode, rows in runs.items():
        result[mode] = {"target_first": sum(r["first_behaviour"] == args.behaviour for r in rows), "n": len(rows),
                        "runs": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


def _main(args) -> int:
    return _measure(args) if args.measure else _run(args)


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the CALVIN sim graph headless, steered towards a behaviour")
    p.add_argument("--behaviour", default="drawer_open")
    p.add_argument("--goals", type=int, default=20, help="number of goal images (the CALVIN experiments: 20)")
    p.add_argument("--duration", type=float, default=45.0, help="wall-clock seconds of guided execution (a cap with "
                   "--sim-seconds)")
    p.add_argument("--sim-seconds", type=float, default=0.0,
                   help="stop after this much camera time (simulated in lockstep): the same world time for guided "
                        "and unguided runs, whatever the compute (0: run --duration wall seconds)")
    # unset/0 = the guidance manager's default, i.e. GuidanceConfig's (dynaguide/guidance/goals.py): one source
    p.add_argument("--scale", type=float, default=None,
                   help="guidance scale s (default: GuidanceConfig's; 0: no guidance, unguided chunks)")
    p.add_argument("--sigma", type=float, default=0.0,
                   help="distance temperature (0: GuidanceConfig's default); the demo steering runs used 5, "
                        "~half the typical goal distance of the CPU config's pooled latents")
    p.add_argument("--stochastic-steps", type=int, default=0,
                   help="M (0: GuidanceConfig's default); latency grows with M on a CPU (steering runs: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-scene", action="store_true",
                   help="start in a fully random scene; by default the scene makes --behaviour possible (e.g. the "
                        "drawer closed enough to open), as in the CALVIN experiments")
    p.add_argument("--image-size", type=int, default=96,
                   help="static camera size; the shipped models were trained on 96 px frames")
    p.add_argument("--checkpoints", default=str(DEFAULT_CHECKPOINTS))
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--ready-timeout", type=float, default=600.0,
                   help="seconds to wait for the graph to answer /set_guidance (four processes import torch at start; "
                        "on a loaded 2-core machine this took over 180 s)")
    p.add_argument("--unguided", action="store_true", help="run the base policy (clear guidance) for comparison")
    p.add_argument("--wall-clock", action="store_true",
                   help="real-time 30 Hz sim (late actions dropped) instead of lockstep simulated time")
    p.add_argument("--measure", type=int, default=0, metavar="N",
                   help="run N seeds guided and unguided and write the steering summary to --json")
    p.add_argument("--json", default=None, help="with --measure: output file (e.g. results/calvin/demo_steering.json)")
    p.set_defaults(func=_main)
