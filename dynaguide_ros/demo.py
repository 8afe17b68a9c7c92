"""``dynaguide demo`` — the README's main job: the CALVIN sim graph, headless, guided and unguided side by side.

For one seed it runs the ``calvin_sim`` graph twice (``dynaguide launch calvin_sim``'s processes, the shipped
trained models), once steered towards ``--behaviour`` by goal images and once unguided, and both start the same
way: the bridge holds the world (``calvin_bridge.start_held``) until the guidance (or its absence) is in force in
the policy node, then ``calvin/start`` starts the world, so the first executed action is already steered;
behaviours and time are counted from that step.  Each run stops after ``--sim-seconds`` of simulated time.

Writes ``<out>/demo.png`` (the goal images, then both runs' camera frames at native size with their simulated
time, the frames where a behaviour fired outlined and named), ``<out>/summary.json`` (both runs) and
``<out>/{guided,unguided}/summary.json`` — fields in ``docs/demo.md``.

Goal images: final frames of the scripted expert's episodes of the behaviour in the same simulator (seeds
disjoint from training and evaluation), cached under ``<out>/goals``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from dynaguide_ros.ros_env import apply_localhost_defaults

#: expert episode seeds of the demo's goal images, inside the goal range of the CALVIN experiments
#: (dynaguide_experiments/calvin/config.py SEED_RANGES["goals"]), disjoint from training and evaluation
DEMO_GOAL_SEED = 2_500_000
PROGRESS_EVERY_S = 10.0
RETRY_S = 30.0  # no chunk under the new guidance after this long: send the request again
DETERMINISM = ("lockstep: the scene (calvin_bridge.seed), the policy's sampling noise (runner.seed) and the goal "
               "images are seeded, the world starts once guidance is in force, and the policy acts only on the "
               "frame, state and embedding of one step, so a seed repeats its run; torch CPU kernels and DDS "
               "message loss (best-effort camera topic) are the remaining sources of difference. --wall-clock runs "
               "depend on compute time and are not repeatable.")


def graph_models() -> str:
    """The sim graph's model directory (``policy_node.models`` in ``config/calvin_sim.yaml``): the one place that
    names the shipped models."""
    from dynaguide_ros.launcher import read_params
    from dynaguide_ros.paths import config_path

    return str(read_params([config_path("calvin_sim.yaml")]).get("policy_node", {}).get("models", ""))


def graph_image_size() -> int:
    from dynaguide_ros.launcher import read_params
    from dynaguide_ros.paths import config_path

    return int(read_params([config_path("calvin_sim.yaml")])["calvin_bridge"]["static_size"])


def expert_goal_images(behaviour: str, n: int, out: Path, size: int = 96) -> list[np.ndarray]:
    """Final static-camera frames of ``n`` scripted-expert episodes of ``behaviour`` (cached as PNG)."""
    from PIL import Image

    from calvin_bridge.config import CalvinEnvConfig
    from calvin_bridge.env import CalvinEnv
    from calvin_bridge.experts import run_episode

    out.mkdir(parents=True, exist_ok=True)
    files = sorted(out.glob(f"{behaviour}_*.png"))
    if len(files) >= n:
        images = [np.asarray(Image.open(f).convert("RGB")) for f in files[:n]]
        if images[0].shape[0] == size:
            return images
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


def _stamp(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def view_outputs(args):
    """``--view`` / ``--view-web`` / ``--view-save``: where the runs are streamed (None: not viewed)."""
    if not (args.view or args.view_web or args.view_save):
        return None
    from dynaguide_ros.viewer import ViewOutputs

    return ViewOutputs(native=args.view, web=args.view_web, save=args.view_save or "",
                       grpc_port=args.view_grpc_port, web_port=args.view_web_port)


def _run_save_path(save: str, mode: str) -> str:
    """``run.rrd`` → ``run.guided.rrd``: one rerun file per run of the demo."""
    if not save:
        return ""
    path = Path(save)
    return str(path.with_name(f"{path.stem}.{mode}{path.suffix}"))


def _open_view(args, node, mode: str):
    """Stream this run to rerun (``dynaguide view``'s entities, one recording per run) when asked."""
    outputs = view_outputs(args)
    if outputs is None:
        return None
    from dynaguide_ros.rerun_sink import RerunSink
    from dynaguide_ros.viewer import ViewerProcesses, attach, open_stream

    if getattr(args, "view_processes", None) is None:
        args.view_processes = ViewerProcesses()
    save = _run_save_path(outputs.save, mode)
    rec = open_stream(outputs, args.view_processes, f"demo {mode}, seed {args.seed}", save=save)
    if args.view_processes.web_url:
        print(f"[demo] web viewer: {args.view_processes.web_url}", flush=True)
    sink = RerunSink(rec)
    attach(node, sink)
    return rec, sink, save


def _close_view(view) -> None:
    rec, sink, save = view
    rec.flush()
    if save:
        rec.disconnect()   # finalises the file
        print(f"[demo] rerun file {save}: {sum(sink.counts.values())} messages", flush=True)


def run_once(args, goals: list[np.ndarray], guided: bool, out: Path, models: str) -> dict:
    """One run of the graph (guided or not) from a held world; returns its summary (also written to ``out``)."""
    apply_localhost_defaults()
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from std_srvs.srv import Trigger

    from dynaguide_msgs.msg import BehaviourEvent, GuidanceState, PolicyDiagnostics
    from dynaguide_ros.conversions import rgb_from_image_msg
    from dynaguide_ros.guide_cli import call_clear_guidance, call_service, call_set_guidance
    from dynaguide_ros.launcher import GraphLauncher
    from dynaguide_ros.qos import LATCHED, RELIABLE, SENSOR

    mode = "guided" if guided else "unguided"
    out.mkdir(parents=True, exist_ok=True)
    overrides = {
        "guidance_manager": {"state_dir": str(out / "guidance_state")},
        "calvin_bridge": {"seed": args.seed, "static_size": args.image_size, "lockstep": not args.wall_clock,
                          "start_held": True,
                          # guided and unguided runs of a seed start in the same scene
                          "scene_for": "" if args.random_scene else args.behaviour},
        "policy_node": {"use_sim_time": not args.wall_clock, "lockstep": not args.wall_clock,
                        "runner.seed": args.seed, "models": models}}
    if args.wall_clock:
        overrides["embedding_node"] = {"use_sim_time": False}
    launcher = GraphLauncher("calvin_sim", overrides=overrides, out=open(out / "graph.log", "w"))
    rclpy.init()
    node = rclpy.create_node(f"dynaguide_demo_{mode}")
    frames: dict[float, object] = {}   # stamp -> image: one per simulated step (republished paused frames fold)
    events, diags = [], []
    node.create_subscription(Image, "camera/rgb_static", lambda m: frames.__setitem__(_stamp(m), m), SENSOR)
    node.create_subscription(BehaviourEvent, "calvin/behaviour", events.append, RELIABLE)
    node.create_subscription(PolicyDiagnostics, "policy/diagnostics", diags.append, RELIABLE)
    states: list = []
    node.create_subscription(GuidanceState, "guidance/state", states.append, LATCHED)
    execution: dict = {}  # the bridge's latest executor counts (/diagnostics "calvin_bridge: execution")

    def on_status(msg) -> None:
        for status in msg.status:
            if status.name.endswith(": execution"):
                execution.update({kv.key: int(kv.value) for kv in status.values if kv.value.lstrip("-").isdigit()})
    node.create_subscription(DiagnosticArray, "/diagnostics", on_status, RELIABLE)
    view = _open_view(args, node, mode)   # the goal images come from the manager (guidance/goal_images)
    launcher.start()
    summary: dict = {"run": mode, "guided": guided, "behaviour_target": args.behaviour, "seed": args.seed,
                     "scene": _scene_label(args), "models": models or None, "trained_models": bool(models)}
    t_wall = time.monotonic()
    try:
        print(f"[demo] {mode}: waiting for the graph (four processes import torch; minutes on a busy machine)...",
              flush=True)
        def put_in_force():
            """Set (or clear) the guidance; returns the manager's answer and the revision it put in force."""
            if guided:
                res = call_set_guidance(goals, [], scale=args.scale, sigma=args.sigma,
                                        stochastic_steps=args.stochastic_steps, node=node,
                                        timeout=args.ready_timeout)
                return res, int(res.revision)
            seen = len(states)
            res = call_clear_guidance(node=node, timeout=args.ready_timeout)
            until = time.monotonic() + 30.0  # the clear's revision, from the manager's latched state
            while not any(st.source == "cleared" for st in states[seen:]) and time.monotonic() < until:
                rclpy.spin_once(node, timeout_sec=0.1)
            return res, max((int(st.revision) for st in states[seen:] if st.source == "cleared"), default=0)

        res, revision = put_in_force()
        if not res.success:
            print(f"[demo] /set_guidance {res.message}")
            summary["error"] = res.message
            return summary
        if guided:
            summary["guidance"] = res.message  # the s, sigma and M in force
        print(f"[demo] {mode}: {res.message}", flush=True)
        # the world is held: wait until the policy has planned under this guidance (or its absence). It plans once
        # on the held world; should that chunk's diagnostics be lost (published before this node's subscription
        # was matched), the same request again makes it plan again under a new revision.
        deadline = time.monotonic() + args.ready_timeout
        retry_at = time.monotonic() + RETRY_S
        while not any(d.guided == guided and d.guidance_revision >= revision for d in diags):
            if time.monotonic() > deadline or launcher.failure:
                raise TimeoutError(f"the policy produced no {mode} chunk within {args.ready_timeout:g} s "
                                   f"(see {out / 'graph.log'})")
            if time.monotonic() > retry_at:
                res, revision = put_in_force()
                retry_at = time.monotonic() + RETRY_S
            rclpy.spin_once(node, timeout_sec=0.1)
            launcher.poll()
        for _ in range(5):  # let the bridge receive that chunk (it arrives with the diagnostics)
            rclpy.spin_once(node, timeout_sec=0.1)
        # ... then start the world: its first action is the policy's first action under it
        start = call_service(Trigger, "calvin/start", Trigger.Request(), 30.0, node)
        print(f"[demo] {mode}: {start.message}", flush=True)
        t0 = max(frames) if frames else 0.0   # the held world's frame: simulated time of the start
        first_seq = len(diags)
        events.clear()
        started, last_progress = time.monotonic(), time.monotonic()

        def sim_elapsed() -> float:
            return (max(frames) - t0) if frames else 0.0

        while sim_elapsed() < args.sim_seconds - 1e-6 and time.monotonic() - started < args.duration:
            rclpy.spin_once(node, timeout_sec=0.1)
            launcher.poll()
            if launcher.failure:
                raise RuntimeError(launcher.failure)
            if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                last_progress = time.monotonic()
                print(f"[demo] {mode} seed {args.seed}: sim {sim_elapsed():.1f} / {args.sim_seconds:g} s, "
                      f"{len(diags) - first_seq} chunks, behaviours: "
                      f"{', '.join(e.behaviour for e in events) or 'none'} (wall {time.monotonic() - started:.0f} s)",
                      flush=True)
        for _ in range(3):
            rclpy.spin_once(node, timeout_sec=0.1)
        summary["sim_seconds"] = round(sim_elapsed(), 3)
        summary["wall_seconds"] = round(time.monotonic() - started, 1)
        summary["startup_wall_seconds"] = round(started - t_wall, 1)
        summary["stopped_by"] = "sim_seconds" if sim_elapsed() >= args.sim_seconds - 1e-6 else "duration"
    finally:
        launcher.stop()
        if view is not None:
            for _ in range(5):   # what the graph published last
                rclpy.spin_once(node, timeout_sec=0.05)
            _close_view(view)
        node.destroy_node()
        rclpy.shutdown()
    run_diags = diags[first_seq:]
    after = {t: m for t, m in frames.items() if t0 <= t <= t0 + args.sim_seconds + 1e-6}  # the start frame on
    if after:  # simulated time covered by the recorded frames (the loop may have seen a frame or two more)
        summary["sim_seconds"] = round(max(after) - t0, 3)
    detected = [{"behaviour": e.behaviour, "sim_time": round(_stamp(e) - t0, 3)} for e in events
                if _stamp(e) > t0]
    names = [d["behaviour"] for d in detected]
    computes = [d.compute_ms for d in run_diags]
    summary.update({
        "behaviours_detected": detected,
        "first_behaviour": names[0] if names else "no_behaviour",
        "target_reached": args.behaviour in names,
        "target_first": bool(names) and names[0] == args.behaviour,
        "chunks": len(run_diags), "guided_chunks": sum(d.guided for d in run_diags),
        "clock": "wall (late actions dropped)" if args.wall_clock else "simulated (lockstep)",
        "frames_recorded": len(after),
        "median_compute_ms": round(float(np.median(computes)), 1) if computes else None,
        "compute_p95_ms": round(float(np.percentile(computes, 95)), 1) if computes else None,
        "budget_ms": round(float(run_diags[-1].budget_ms), 1) if run_diags else None,
        "determinism": DETERMINISM,
    })
    if execution:
        summary["execution"] = dict(execution)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    # frames at native size with their simulated time, for the figure
    np.savez_compressed(out / "frames.npz", times=np.array([t - t0 for t in sorted(after)]),
                        frames=np.stack([rgb_from_image_msg(after[t]) for t in sorted(after)]) if after
                        else np.zeros((0, args.image_size, args.image_size, 3), np.uint8))
    return summary


def demo_figure(goals: list[np.ndarray], runs: dict[str, tuple[np.ndarray, np.ndarray, list[dict]]], path: Path,
                columns: int = 8, title: str = "") -> None:
    """One picture: a row of goal images, then one row per run (``{label: (times, frames, behaviours)}``) of
    frames at native size at the same simulated times, each with its time; the frame at which a behaviour fired
    is outlined in red and named."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    size = goals[0].shape[0] if goals else 96
    label_w, pad, text_h = 130, 6, 14
    cell = size + pad
    end = max((float(t[-1]) for t, _, _ in runs.values() if len(t)), default=1.0)
    grid = list(np.linspace(0, end, columns))
    width = label_w + columns * cell + pad
    height = pad + text_h + (size + 2 * text_h + pad) * (1 + len(runs)) + pad
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, fill="black", font=font)
    y = pad + text_h
    draw.text((pad, y + size // 2), f"goal images\n({len(goals)}, first {min(len(goals), columns)})",
              fill="black", font=font)
    for i, g in enumerate(goals[:columns]):
        img.paste(Image.fromarray(g), (label_w + i * cell, y))
    y += size + 2 * text_h + pad
    for label, (times, frames, behaviours) in runs.items():
        fired = [(b["behaviour"], b["sim_time"]) for b in behaviours]
        draw.text((pad, y + size // 2 - text_h),
                  f"{label}\n{', '.join(f'{n} @ {t:.2f} s' for n, t in fired) or 'no behaviour'}",
                  fill="black", font=font)
        if len(times) == 0:
            draw.text((label_w, y + size // 2), "no frames recorded", fill="red", font=font)
            y += size + 2 * text_h + pad
            continue
        picks = [int(np.argmin(np.abs(times - t))) for t in grid]
        marks: dict[int, str] = {}
        for name, t in fired:  # the frame of each behaviour replaces the nearest column
            k = int(np.searchsorted(times, t - 1e-6))
            k = min(k, len(times) - 1)
            col = int(np.argmin([abs(times[p] - t) for p in picks]))
            picks[col], marks[col] = k, name
        for col, k in enumerate(picks):
            x = label_w + col * cell
            img.paste(Image.fromarray(frames[k]), (x, y))
            if col in marks:
                draw.rectangle([x - 2, y - 2, x + size + 1, y + size + 1], outline="red", width=3)
                draw.text((x, y + size + text_h), marks[col], fill="red", font=font)
            draw.text((x, y + size + 2), f"t={times[k]:.2f} s", fill="black", font=font)
        y += size + 2 * text_h + pad
    img.save(path)


def _load_frames(out: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(out / "frames.npz")
    return data["times"], data["frames"]


def _prepare(args) -> tuple[list[np.ndarray], str]:
    args.image_size = args.image_size or graph_image_size()
    models = graph_models() if args.checkpoints is None else args.checkpoints
    if args.untrained:
        models = ""
    if models:
        from dynaguide_ros.paths import resolve_model_path

        models = resolve_model_path(models)
        print(f"[demo] models: {models}")
    else:
        print("[demo] WARNING: --untrained: random models (the graph is real, the behaviour is not meaningful)")
    print(f"[demo] goal images: final frames of scripted '{args.behaviour}' episodes")
    goals = expert_goal_images(args.behaviour, args.goals, Path(getattr(args, "goal_dir", None)
                                                                or Path(args.out) / "goals"), size=args.image_size)
    return goals, models


def _run(args) -> int:
    """Default: guided and unguided run of one seed, the figure and a joint summary."""
    out = Path(args.out)
    goals, models = _prepare(args)
    modes = [False] if args.unguided else [True] if args.guided_only else [True, False]
    summaries = {}
    for guided in modes:
        mode = "guided" if guided else "unguided"
        summaries[mode] = run_once(args, goals, guided, out / mode, models)
        if "error" in summaries[mode]:
            return 1
        s = summaries[mode]
        print(f"[demo] {mode}: behaviours {[b['behaviour'] for b in s['behaviours_detected']] or ['none']} in "
              f"{s['sim_seconds']:.1f} s of simulated time; target {args.behaviour} reached: {s['target_reached']}; "
              f"{s['chunks']} chunks, compute median {s['median_compute_ms']} ms, p95 {s['compute_p95_ms']} ms",
              flush=True)
    runs = {}
    for mode, s in summaries.items():
        times, frames = _load_frames(out / mode)
        label = f"{mode}, seed {args.seed}"
        if mode == "guided":  # "guidance revision 1: 20 positive, 0 negative, scale 4, sigma 30, M 4"
            settings = s["guidance"].split(", ")[-3:]
            label += "\n" + ", ".join(settings).replace("scale ", "s=").replace("sigma ", "sigma=").replace("M ", "M=")
        runs[label] = (times, frames, s["behaviours_detected"])
    figure = out / "demo.png"
    demo_figure(goals, runs, figure, title=f"DynaGuide demo: target {args.behaviour}, "
                f"{summaries[next(iter(summaries))]['scene']} scene, simulated time from the first action")
    joint = {"behaviour_target": args.behaviour, "seed": args.seed, "figure": str(figure), "runs": summaries}
    (out / "summary.json").write_text(json.dumps(joint, indent=2) + "\n")
    print(f"[demo] wrote {figure} and {out / 'summary.json'}")
    return 0


def _measure(args) -> int:
    """``--measure N``: N seeds guided and N unguided (resumable per run) → ``--json`` steering summary."""
    import copy
    import shlex
    import sys

    goals, models = _prepare(args)
    runs = {"guided": [], "unguided": []}
    for seed in range(args.seed, args.seed + args.measure):
        for mode in ("guided", "unguided"):
            out = Path(args.out) / f"{mode}_{seed}"
            if not (out / "summary.json").is_file():
                run_args = copy.copy(args)
                run_args.seed = seed
                run_once(run_args, goals, mode == "guided", out, models)
            summary = json.loads((out / "summary.json").read_text())
            runs[mode].append({"seed": seed, "first_behaviour": summary["first_behaviour"],
                               "behaviours": [b["behaviour"] for b in summary["behaviours_detected"]]})
    result = {"target": args.behaviour, "sim_seconds": args.sim_seconds, "models": models, "goals": args.goals,
              "scene": _scene_label(args), "command": "dynaguide " + shlex.join(sys.argv[1:])}
    for mode, rows in runs.items():
        result[mode] = {"target_first": sum(r["first_behaviour"] == args.behaviour for r in rows), "n": len(rows),
                        "runs": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


def run_demo(args) -> int:
    """``dynaguide demo`` with its parsed arguments (:mod:`dynaguide_cli.ros`)."""
    args.view_processes = None
    if view_outputs(args) is not None:
        from dynaguide_ros.viewer import check_save_path, import_rerun

        import_rerun()                      # installed? (one line if not)
        check_save_path(args.view_save)     # a bad --view-save before minutes of graph start-up
    try:
        code = _measure(args) if args.measure else _run(args)
        processes = args.view_processes
        if processes is not None and processes.web is not None and code == 0:
            print(f"[demo] the web viewer stays up at {processes.web_url} until Ctrl-C", flush=True)
            try:
                while processes.web.poll() is None:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
        return code
    except (TimeoutError, RuntimeError) as exc:
        import sys

        print(f"dynaguide demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.view_processes is not None:
            args.view_processes.close()
