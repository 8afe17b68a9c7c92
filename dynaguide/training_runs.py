"""A DynaGuide latent dynamics model trained on a user's dataset: what ``dynaguide train dynamics``
(:mod:`dynaguide_cli.train`) runs.  ``dynaguide train lerobot`` — a LeRobot DiffusionPolicy on a LeRobotDataset with
LeRobot's training components — is :mod:`dynaguide.lerobot_training`.

Inputs: our HDF5 layout (``dynaguide dataset from-mcap`` output, ``dynaguide calvin collect`` files, any
robomimic-like file, :mod:`dynaguide.data.schema`) or a LeRobotDataset directory (v3.0, LeRobot 0.4.x;
:mod:`dynaguide.datasets_external`)::

    dynaguide train dynamics --data data.h5 --camera rgb_static --out runs/dyn
    dynaguide train dynamics --data ~/lerobot/my_dataset --camera observation.images.top \\
        --proprio-key observation.state --action-key action --segment episode --out runs/dyn \\
        --policy outputs/train/diffusion/checkpoints/last/pretrained_model --policy-kind lerobot

Steps: (1) the data become segments in our layout — used in place for an HDF5 file segmented as given, else
written to ``<out>/prepared.h5`` (LeRobot episodes, fixed windows, other keys); the final frame of a segment is
its outcome; (2) every frame of the camera is embedded once with the chosen embedder into an embedding cache
next to that file (:func:`dynaguide.data.embedding_cache.build_embedding_cache`; reused while the data and
embedder match);
(3) :func:`dynaguide.training.train_dynamics` trains :meth:`LatentDynamicsConfig.for_embedder` (the model
records the embedder's identity) with the same noise augmentation as every other dynamics model here
(``noised_fraction`` of the chunks noised to a geometric DDIM step,
:func:`dynaguide.dynamics.noise_actions_for_dynamics`);
(4) ``<out>/dynamics`` is the final safetensors + JSON checkpoint (EMA weights), ``<out>/run/latest`` the
resumable training state.  A summary JSON is printed and written to ``<out>/summary.json``.

Several processes, GPUs, nodes (:mod:`dynaguide.distributed`): the same command under ``accelerate launch``
(``accelerate launch --num_processes 2 -m dynaguide_cli train dynamics ...``); ``--batch-size`` is the global
batch, ``--grad-accum`` splits it further, ``--device cuda`` / ``--mixed-precision bf16`` on GPUs.  Steps (1)
and (2) run on the main process first (the others then reuse its prepared file and cache); only the main
process writes checkpoints and the summary.

Action normalisation: guidance needs the dynamics model and the policy to normalise actions identically
(the runner checks).  ``--policy DIR`` takes the action min/max from that policy (ours or a LeRobot
``pretrained_model`` with ``--policy-kind lerobot``) and its horizon; without it they are fitted on the data.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dynaguide.inputs import atomic_output, refuse_overwrite

FORMATS = ("auto", "hdf5", "lerobot")
SEGMENTS = ("episode", "window")


@dataclass
class DynamicsDataConfig:
    """Where the training data come from and how they are cut into segments.

    Attributes:
        path: an HDF5 file in our layout or a LeRobotDataset directory.
        format: ``auto`` (a directory with ``meta/info.json`` is LeRobot, a file is HDF5), ``hdf5``, ``lerobot``.
        camera: the image key (HDF5: ``obs/<camera>``; LeRobot: e.g. ``observation.images.top``; "" = the only one).
        proprio_key: HDF5: an ``obs/`` dataset (default ``proprio``); LeRobot: a vector feature (default
            ``observation.state``); ``none`` = no proprio (proprio_dim 0).
        action_key: HDF5: ``actions``; LeRobot: ``action``.
        segment: ``episode`` (an HDF5 demo / a LeRobot episode is one segment) or ``window``.
        window / stride: steps per window and between window starts (0 = ``window``).
        val_fraction: whole segments held out for validation.
    """

    path: str = ""
    format: str = "auto"
    camera: str = ""
    proprio_key: str = ""
    action_key: str = ""
    segment: str = "episode"
    window: int = 0
    stride: int = 0
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("give the dataset (--data)")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.segment not in SEGMENTS:
            raise ValueError(f"segment must be one of {SEGMENTS}, got {self.segment!r}")
        if self.segment == "window" and self.window < 1:
            raise ValueError("--segment window needs --window >= 1")
        if self.window < 0 or self.stride < 0:
            raise ValueError("window and stride must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def resolved_format(self) -> str:
        from dynaguide.datasets_external import is_lerobot_dataset

        p = Path(self.path).expanduser()
        if self.format != "auto":
            return self.format
        if p.is_dir():
            if is_lerobot_dataset(p):
                return "lerobot"
            raise ValueError(f"{p} is a directory without meta/info.json: not a LeRobotDataset")
        if p.is_file():
            return "hdf5"
        raise ValueError(f"dataset {p} does not exist")


@dataclass
class TrainDynamicsJob:
    """One ``dynaguide train dynamics`` run: data, embedder, model preset/overrides, optimisation.

    ``model_overrides``: :class:`~dynaguide.dynamics.LatentDynamicsConfig` fields (e.g. ``model_dim``,
    ``n_layers``, ``pool``), applied over the preset sized for the embedder.  ``horizon``: T of the chunks
    (0 = the ``--policy``'s horizon, else 16).  ``policy`` / ``policy_kind``: take action stats and horizon
    from that policy (module docstring).
    """

    data: DynamicsDataConfig
    out: str
    embedder: Any = None   # dynaguide.embedders.factory.EmbedderConfig
    preset: str = "cpu"
    horizon: int = 0
    model_overrides: dict = field(default_factory=dict)
    train: Any = None      # dynaguide.training.TrainConfig
    policy: str = ""
    policy_kind: str = "dynaguide"


def _prepare_hdf5(cfg: DynamicsDataConfig, out_dir: Path) -> tuple[Path, str, dict]:
    """Our HDF5 file as training segments: in place when already so, else a rewritten copy."""
    import h5py
    import numpy as np

    from dynaguide.data.schema import Demo, read_hdf5_array
    from dynaguide.data.source import DemoSource
    from dynaguide.data.writer import write_demo
    from dynaguide.datasets_external import window_segments

    path = Path(cfg.path).expanduser()
    src = DemoSource(path)
    try:
        cams = src.cameras(src.names[0])
        camera = cfg.camera or (cams[0] if len(cams) == 1 else "")
        if not camera:
            raise ValueError(f"{path} has cameras {cams}: choose one with --camera")
        if camera not in cams:
            raise ValueError(f"{path}: camera {camera!r} not in obs/ (cameras: {cams})")
        proprio_key = "" if cfg.proprio_key == "none" else (cfg.proprio_key or "proprio")
        action_key = cfg.action_key or "actions"
        in_place = cfg.segment == "episode" and proprio_key == "proprio" and action_key == "actions"
        if in_place:
            return path, camera, {"segments": len(src.names), "prepared": False}
        out = refuse_overwrite(out_dir / "prepared.h5", inputs=[path], overwrite=True,
                               option="the prepared copy of the data in --out:")
        n = 0
        f_in = src._h5()
        with atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            data.attrs.update({"source": str(path.resolve()), "segment": cfg.segment, "window": cfg.window,
                               "stride": cfg.stride})
            for name in src.names:
                g = f_in["data"][name]
                if action_key not in g:
                    raise ValueError(f"{path}: data/{name} has no {action_key!r} (keys: {sorted(g.keys())})")
                if proprio_key and proprio_key not in g["obs"]:
                    raise ValueError(f"{path}: data/{name}/obs has no {proprio_key!r} "
                                     f"(keys: {sorted(g['obs'].keys())})")
                where = f"{path}: data/{name}"
                actions = read_hdf5_array(g[action_key], f"{where}/{action_key}", ndim=2)
                proprio = read_hdf5_array(g["obs"][proprio_key], f"{where}/obs/{proprio_key}", ndim=2) \
                    if proprio_key else None
                images = read_hdf5_array(src._camera_dataset(name, camera), f"{where}/obs/{camera}")
                length = len(actions)
                ranges = [(0, length)] if cfg.segment == "episode" else window_segments(length, cfg.window, cfg.stride)
                behaviour = src.behaviour[name]
                for s, e in ranges:
                    write_demo(data, Demo(actions=actions[s:e], images={camera: images[s:e]},
                                          proprio=proprio[s:e] if proprio is not None else
                                          np.zeros((e - s, 0), np.float32), behaviour=behaviour),
                               f"demo_{n}", attrs={"source_demo": name, "start": s, "end": e})
                    n += 1
            if n == 0:  # inside: the temp file is removed, no empty prepared.h5 is left
                raise ValueError(f"{path}: no window of {cfg.window} steps fits any demo")
        return out, camera, {"segments": n, "prepared": True}
    finally:
        src.close()


def prepare_data(cfg: DynamicsDataConfig, out_dir: Path) -> tuple[Path, str, dict]:
    """Segments in our HDF5 layout for ``cfg`` → ``(hdf5 path, camera key, info)``."""
    fmt = cfg.resolved_format()
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "hdf5":
        return _prepare_hdf5(cfg, out_dir)
    from dynaguide.datasets_external import LeRobotKeys, write_lerobot_as_hdf5

    proprio = "" if cfg.proprio_key == "none" else (cfg.proprio_key or "observation.state")
    keys = LeRobotKeys(camera=cfg.camera, proprio=proprio,
                       action=cfg.action_key or "action")
    info = write_lerobot_as_hdf5(Path(cfg.path).expanduser(), out_dir / "prepared.h5", keys, cfg.segment,
                                 cfg.window, cfg.stride)
    return Path(info["out"]), info["camera"], {**info, "prepared": True}


def train_dynamics_job(job: TrainDynamicsJob) -> dict:
    """Run ``job`` (module docstring); returns the summary (also written to ``<out>/summary.json``)."""
    import torch

    from dynaguide.checkpoint import model_skeleton, save_checkpoint
    from dynaguide.data.datasets import DynamicsDataset
    from dynaguide.data.embedding_cache import build_embedding_cache
    from dynaguide.data.source import DemoSource, split_demos
    from dynaguide.distributed import make_accelerator
    from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
    from dynaguide.embedders.factory import EmbedderConfig, make_embedder
    from dynaguide.embedders.identity import embedder_id
    from dynaguide.training import TrainConfig, dataset_stats, train_dynamics

    t0 = time.monotonic()
    out_dir = Path(job.out)
    train_cfg = job.train or TrainConfig()
    accelerator = make_accelerator(train_cfg.device, train_cfg.mixed_precision)
    main = accelerator.is_main_process
    if train_cfg.num_threads > 0:
        torch.set_num_threads(train_cfg.num_threads)
    with accelerator.main_process_first():   # one process writes the prepared file, the others reuse it
        data_path, camera, info = prepare_data(job.data, out_dir)
    embedder = make_embedder(job.embedder or EmbedderConfig())
    src = DemoSource(data_path)
    proprio_dim = int(src.proprio[src.names[0]].shape[1])
    action_dim = int(src.actions[src.names[0]].shape[1])
    src.close()

    policy = None
    if job.policy:
        from dynaguide.policy.lerobot_adapter import load_policy

        policy = load_policy(job.policy_kind, job.policy)
        if policy.action_dim != action_dim:
            raise ValueError(f"the policy's actions have {policy.action_dim} dimensions, the data's {action_dim}")
    horizon = job.horizon or (int(policy.horizon) if policy is not None else 16)
    overrides = {"proprio_dim": proprio_dim, "action_dim": action_dim, "horizon": horizon, **job.model_overrides}
    cfg = LatentDynamicsConfig.for_embedder(embedder, job.preset, **overrides)
    model_skeleton(LatentDynamicsModel, cfg, "the dynamics model (--preset, --set)")  # size cap before allocating
    torch.manual_seed(train_cfg.seed)   # the initial weights follow --seed (the same in every process)
    model = LatentDynamicsModel(cfg)
    # the expensive step once the model config is known to be usable
    with accelerator.main_process_first():   # built once; the other processes open the finished cache
        cache = build_embedding_cache(data_path, embedder, camera, progress=train_cfg.progress and main)

    if job.data.val_fraction > 0:
        train_names, val_names = split_demos(data_path, job.data.val_fraction, seed=train_cfg.seed)
    else:
        all_names = DemoSource(data_path)
        train_names, val_names = list(all_names.names), []
        all_names.close()
    train_data = DynamicsDataset(data_path, camera, horizon, demos=train_names, tokens=cache)
    val_data = DynamicsDataset(data_path, camera, horizon, demos=val_names, tokens=cache) if val_names else None
    if policy is not None:  # the policy's action normalisation (the runner refuses any other); proprio from data
        stats = dataset_stats(train_data)
        model.set_normalizer_stats(policy.action_normalizer.min.detach().clone(),
                                   policy.action_normalizer.max.detach().clone(),
                                   torch.as_tensor(stats["proprio_min"]) if proprio_dim else None,
                                   torch.as_tensor(stats["proprio_max"]) if proprio_dim else None)
    result = train_dynamics(model, train_data, train_cfg, out_dir / "run", val_data=val_data, accelerator=accelerator)
    final = result.ema_model if result.ema_model is not None else result.model
    ckpt = out_dir / "dynamics"
    if main:
        save_checkpoint(ckpt, final, cfg, {
            "source": str(Path(job.data.path).expanduser().resolve()), "data": asdict(job.data), "camera": camera,
            "train_config": asdict(train_cfg), "embedder_id": embedder_id(embedder)}, step=result.step)
    train_data.close()
    summary = {"checkpoint": str(ckpt), "data": str(data_path), "camera": camera, "segments": info.get("segments"),
               "train_segments": len(train_names), "val_segments": len(val_names), "steps": result.step,
               "final_train_loss": result.train_losses[-1][1] if result.train_losses else None,
               "final_val_loss": result.val_losses[-1][1] if result.val_losses else None,
               "embedder_id": embedder_id(embedder), "embed_tokens": cfg.embed_tokens, "embed_dim": cfg.embed_dim,
               "proprio_dim": proprio_dim, "action_dim": action_dim, "horizon": horizon,
               "action_stats_from": job.policy or "data", "processes": accelerator.num_processes,
               "seconds": round(time.monotonic() - t0, 2)}
    if main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return summary
