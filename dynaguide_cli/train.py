"""``dynaguide train dynamics | lerobot``: a latent dynamics model from a user's dataset
(:mod:`dynaguide.training_runs`), a LeRobot DiffusionPolicy on a LeRobotDataset (:mod:`dynaguide.lerobot_training`).
"""

from __future__ import annotations

import json
import logging

from dynaguide.inputs import InputError


def _parse_overrides(items: list[str] | None) -> dict:
    import yaml

    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _run_dynamics(args) -> int:
    from dynaguide.embedders.factory import EmbedderConfig
    from dynaguide.training import TrainConfig
    from dynaguide.training_runs import DynamicsDataConfig, TrainDynamicsJob, train_dynamics_job

    try:
        data = DynamicsDataConfig(path=args.data, format=args.format, camera=args.camera,
                                  proprio_key=args.proprio_key, action_key=args.action_key, segment=args.segment,
                                  window=args.window, stride=args.stride, val_fraction=args.val_fraction)
        emb = {"kind": args.embedder, "model": args.embedder_model, "image_size": args.embedder_image_size}
        if args.embedder == "random":
            emb.update(patch_size=args.embedder_patch_size, dim=args.embedder_dim)
        job = TrainDynamicsJob(
            data=data, out=args.out, embedder=EmbedderConfig(**emb), preset=args.preset, horizon=args.horizon,
            model_overrides=_parse_overrides(args.set), policy=args.policy, policy_kind=args.policy_kind,
            train=TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                              ema_decay=args.ema_decay, val_every=max(1, min(500, args.steps)),
                              checkpoint_every=max(1, min(500, args.steps)), log_every=max(1, min(25, args.steps)),
                              num_threads=args.threads, progress=not args.no_progress, plot=not args.no_plot,
                              device=args.device, mixed_precision=args.mixed_precision, grad_accum=args.grad_accum))
        summary = train_dynamics_job(job)
    except TypeError as exc:  # a --set value of the wrong type reaching the model (ValueError/OSError: cli.main)
        raise InputError(f"--set: {exc}") from exc
    if summary.get("processes", 1) == 1 or _is_main_process():
        print(json.dumps(summary))
    return 0


def _is_main_process() -> bool:
    from accelerate.state import PartialState

    return PartialState().is_main_process


def add_distributed_options(p) -> None:
    """``--device``, ``--mixed-precision``, ``--grad-accum`` (:class:`dynaguide.training.TrainConfig`)."""
    from dynaguide.distributed import MIXED_PRECISION

    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda or auto; under accelerate launch each process takes its local GPU")
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no",
                   help="bf16 / fp16 autocast (fp16 needs a GPU)")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches per optimizer step and process (--batch-size stays the global batch)")


def _run_lerobot(args) -> int:
    from dynaguide.lerobot_training import LeRobotTrainSettings, train_lerobot_diffusion

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = LeRobotTrainSettings(
            dataset=args.dataset, out=args.out, camera=args.camera, steps=args.steps, batch_size=args.batch_size,
            save_freq=args.save_freq, log_freq=args.log_freq, seed=args.seed, n_obs_steps=args.n_obs_steps,
            horizon=args.horizon, n_action_steps=args.n_action_steps, crop=args.crop,
            down_dims=tuple(int(d) for d in args.down_dims.split(",")), lr=args.lr, warmup_steps=args.warmup_steps,
            num_inference_steps=args.num_inference_steps, threads=args.threads)
        summary = train_lerobot_diffusion(settings, progress=not args.no_progress)
    except ImportError as exc:  # ValueError/OSError: printed as one line by dynaguide_cli.main
        raise InputError(f"LeRobot is needed to train ({exc}); `make install` installs it") from exc
    print(json.dumps(summary))
    return 0


def register(subparsers) -> None:
    from dynaguide.training_runs import FORMATS, SEGMENTS

    p = subparsers.add_parser("train", help="train models on your own data")
    sub = p.add_subparsers(dest="train_command", metavar="MODEL", required=True)
    d = sub.add_parser("dynamics", help="a latent dynamics model from our HDF5 or a LeRobotDataset directory")
    d.add_argument("--data", required=True, help="HDF5 file (our layout) or LeRobotDataset directory")
    d.add_argument("--out", required=True, help="output directory (dynamics checkpoint in <out>/dynamics)")
    d.add_argument("--format", choices=FORMATS, default="auto")
    d.add_argument("--camera", default="", help="image key (HDF5 obs/<key>; LeRobot e.g. observation.images.top)")
    d.add_argument("--proprio-key", default="",
                   help="HDF5 obs/ key (proprio) or LeRobot feature (observation.state); none = no proprio")
    d.add_argument("--action-key", default="", help="HDF5 key (actions) or LeRobot feature (action)")
    d.add_argument("--segment", choices=SEGMENTS, default="episode",
                   help="episode: final frame of each demo/episode is its outcome; window: fixed windows")
    d.add_argument("--window", type=int, default=0)
    d.add_argument("--stride", type=int, default=0)
    d.add_argument("--val-fraction", type=float, default=0.1)
    d.add_argument("--embedder", choices=("efficientnet_lite0", "dinov2", "random"), default="efficientnet_lite0")
    d.add_argument("--embedder-model", default=None, help="dinov2: local directory or hub id")
    d.add_argument("--embedder-image-size", type=int, default=None, help="px (default: the embedder's)")
    d.add_argument("--embedder-patch-size", type=int, default=14, help="random embedder only")
    d.add_argument("--embedder-dim", type=int, default=384, help="random embedder only")
    d.add_argument("--preset", choices=("cpu", "paper"), default="cpu")
    d.add_argument("--horizon", type=int, default=0, help="chunk length T (0 = the --policy's, else 16)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="LatentDynamicsConfig override (repeatable)")
    d.add_argument("--policy", default="", help="take action min/max and horizon from this policy checkpoint")
    d.add_argument("--policy-kind", choices=("dynaguide", "lerobot"), default="dynaguide")
    d.add_argument("--steps", type=int, default=2000)
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--lr", type=float, default=1e-4)
    d.add_argument("--ema-decay", type=float, default=0.995)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--no-plot", action="store_true")
    add_distributed_options(d)
    d.set_defaults(func=_run_dynamics)
    r = sub.add_parser("lerobot", help="a LeRobot DiffusionPolicy on a LeRobotDataset, with LeRobot's training "
                                       "components (resumable; see dynaguide/lerobot_training.py)")
    r.add_argument("--dataset", required=True, help="LeRobotDataset v3 directory")
    r.add_argument("--out", required=True, help="run directory (checkpoints/, log.jsonl, pretrained_model/)")
    r.add_argument("--camera", default="observation.images.rgb_static")
    r.add_argument("--steps", type=int, default=2000)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--save-freq", type=int, default=200)
    r.add_argument("--log-freq", type=int, default=20)
    r.add_argument("--seed", type=int, default=1000)
    r.add_argument("--n-obs-steps", type=int, default=2)
    r.add_argument("--horizon", type=int, default=16)
    r.add_argument("--n-action-steps", type=int, default=8)
    r.add_argument("--crop", type=int, default=56, help="square crop px (random in training; 0 = none)")
    r.add_argument("--down-dims", default="64,128,256", help="U-Net widths")
    r.add_argument("--lr", type=float, default=1e-4, help="DiffusionConfig.optimizer_lr (LeRobot preset)")
    r.add_argument("--warmup-steps", type=int, default=500, help="DiffusionConfig.scheduler_warmup_steps")
    r.add_argument("--num-inference-steps", type=int, default=10)
    r.add_argument("--threads", type=int, default=1, help="torch threads")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_run_lerobot)
