"""Train a LeRobot ``DiffusionPolicy`` on a LeRobotDataset with LeRobot's own training components (CPU, resumable).

    dynaguide train lerobot --dataset runs/offtheshelf/calvin_lerobot --out runs/lerobot_policy --steps 2000

Why not ``lerobot-train`` itself: ``lerobot/scripts/lerobot_train.py`` cannot be imported next to this stack.  At
module level it imports ``termcolor`` (not installed) and ``lerobot.policies.factory``, which imports every
policy's config, and GR00T's config class cannot be defined with transformers 5 (``TypeError: non-default
argument 'backbone_cfg' follows default argument`` — see :mod:`dynaguide.policy.lerobot_adapter`).  So this
module runs the same training pipeline from LeRobot's importable pieces, step for step as ``train()`` does
it (0.4.4):

* ``TrainPipelineConfig`` / ``DatasetConfig`` (LeRobot's train config, saved as ``train_config.json`` in
  each checkpoint) with the policy's optimizer and scheduler presets (``use_policy_training_preset``:
  AdamW, cosine schedule with warm-up, the ``DiffusionConfig`` ``optimizer_*`` / ``scheduler_*`` fields);
* ``lerobot.datasets.factory.make_dataset`` (delta timestamps from the policy's ``n_obs_steps``/``horizon``,
  ImageNet image stats as LeRobot's default ``use_imagenet_stats``);
* ``make_diffusion_pre_post_processors(config, dataset_stats=dataset.meta.stats)`` (normalisation);
* ``EpisodeAwareSampler`` with ``drop_n_last_frames`` and ``lerobot.datasets.utils.cycle``;
* ``make_optimizer_and_scheduler``; the update of ``lerobot_train.update_policy`` without Accelerate (one CPU
  process, fp32: ``policy.forward`` → backward → ``clip_grad_norm_(grad_clip_norm)`` → optimizer step →
  zero_grad → scheduler step);
* ``save_checkpoint`` / ``update_last_checkpoint`` / ``load_training_state`` (``<out>/checkpoints/<step>/``,
  ``checkpoints/last`` → resume with the same command).

At the end the policy and its processors are written with ``save_pretrained`` to ``<out>/pretrained_model``
(what :func:`dynaguide.policy.lerobot_adapter.load_policy` ``("lerobot", dir)`` loads).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


@dataclass
class LeRobotTrainSettings:
    """A small CPU ``DiffusionConfig`` and the training run.

    Attributes:
        dataset: LeRobotDataset v3 directory (``dynaguide dataset export-lerobot``).
        out: run directory (``checkpoints/``, ``log.jsonl``, ``pretrained_model/``).
        camera: the image feature to train on (``observation.images.<name>``); others are dropped.
        steps / batch_size / save_freq / log_freq / seed: as in LeRobot's ``TrainPipelineConfig``.
        n_obs_steps, horizon, n_action_steps: LeRobot's chunk semantics (To, T, executed steps).
        crop: square crop (px) of the images (random in training, centre at inference; 0 = none).
        down_dims, kernel_size, n_groups, diffusion_step_embed_dim, keypoints: the U-Net and encoder size.
        lr, warmup_steps: ``optimizer_lr`` and ``scheduler_warmup_steps`` of the LeRobot presets.
        num_inference_steps: recorded in the config (sampling steps; the adapter samples with DDIM).
        threads: torch intra-op threads.
    """

    dataset: str
    out: str
    camera: str = "observation.images.rgb_static"
    steps: int = 2000
    batch_size: int = 32
    save_freq: int = 200
    log_freq: int = 20
    seed: int = 1000
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    crop: int = 56
    down_dims: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 64
    keypoints: int = 32
    lr: float = 1e-4
    warmup_steps: int = 500
    num_inference_steps: int = 10
    threads: int = 1
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.save_freq < 1:
            raise ValueError("steps, batch_size and save_freq must be >= 1")
        if self.n_action_steps + self.n_obs_steps - 1 > self.horizon:
            raise ValueError(f"n_action_steps {self.n_action_steps} + n_obs_steps {self.n_obs_steps} - 1 exceeds "
                             f"horizon {self.horizon} (LeRobot's rule)")


def _diffusion_config(s: LeRobotTrainSettings, meta):
    """LeRobot ``DiffusionConfig`` for the dataset's features (``meta``: ``LeRobotDatasetMetadata``)."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    feats = meta.features
    for key in (s.camera, "observation.state", "action"):
        if key not in feats:
            raise ValueError(f"{s.dataset}: no feature {key!r} (have {sorted(feats)})")
    h, w, c = feats[s.camera]["shape"]
    if c != 3:
        raise ValueError(f"{s.camera}: expected (H, W, 3) images, got {feats[s.camera]['shape']}")
    if s.crop and (s.crop > h or s.crop > w):
        raise ValueError(f"crop {s.crop} px does not fit the {h}x{w} images")
    inputs = {s.camera: PolicyFeature(FeatureType.VISUAL, (3, int(h), int(w))),
              "observation.state": PolicyFeature(FeatureType.STATE, tuple(feats["observation.state"]["shape"]))}
    outputs = {"action": PolicyFeature(FeatureType.ACTION, tuple(feats["action"]["shape"]))}
    return DiffusionConfig(
        input_features=inputs, output_features=outputs, n_obs_steps=s.n_obs_steps, horizon=s.horizon,
        n_action_steps=s.n_action_steps, drop_n_last_frames=s.horizon - s.n_action_steps - s.n_obs_steps + 1,
        vision_backbone="resnet18", pretrained_backbone_weights=None, use_group_norm=True,
        crop_shape=(s.crop, s.crop) if s.crop else None, crop_is_random=True,
        spatial_softmax_num_keypoints=s.keypoints, down_dims=tuple(s.down_dims), kernel_size=s.kernel_size,
        n_groups=s.n_groups, diffusion_step_embed_dim=s.diffusion_step_embed_dim,
        num_inference_steps=s.num_inference_steps, optimizer_lr=s.lr, scheduler_warmup_steps=s.warmup_steps,
        device="cpu", push_to_hub=False, **s.extra)


def train_lerobot_diffusion(s: LeRobotTrainSettings, progress: bool = True) -> dict:
    """Train (or resume, from ``<out>/checkpoints/last``) and export ``<out>/pretrained_model``.

    Returns ``{"out", "pretrained_model", "steps", "resumed_from", "final_loss", "seconds", "lerobot_version"}``.
    """
    from dynaguide.policy.lerobot_adapter import import_lerobot

    version = import_lerobot()
    from lerobot.configs.default import DatasetConfig
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.datasets.factory import make_dataset
    from lerobot.datasets.sampler import EpisodeAwareSampler
    from lerobot.datasets.utils import cycle
    from lerobot.optim.factory import make_optimizer_and_scheduler
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
    from lerobot.utils.constants import CHECKPOINTS_DIR, LAST_CHECKPOINT_LINK, PRETRAINED_MODEL_DIR
    from lerobot.utils.random_utils import set_seed
    from lerobot.utils.train_utils import (get_step_checkpoint_dir, load_training_state, save_checkpoint,
                                           update_last_checkpoint)
    from tqdm import tqdm

    from dynaguide.datasets_external import is_lerobot_dataset

    torch.set_num_threads(s.threads)
    t0 = time.perf_counter()
    out, root = Path(s.out), Path(s.dataset)
    if not is_lerobot_dataset(root):
        raise ValueError(f"{root} is not a LeRobotDataset directory (no meta/info.json)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(asdict(s), indent=2) + "\n")
    last = out / CHECKPOINTS_DIR / LAST_CHECKPOINT_LINK

    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    repo_id = f"local/{root.name}"
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    resumed_from = None
    if last.exists():
        pretrained = last / PRETRAINED_MODEL_DIR
        policy = DiffusionPolicy.from_pretrained(pretrained)
        config = policy.config
        resumed_from = str(last.resolve())
    else:
        config = _diffusion_config(s, meta)
        policy = None
    cfg = TrainPipelineConfig(dataset=DatasetConfig(repo_id=repo_id, root=str(root)), policy=config, output_dir=out,
                              job_name="dynaguide_lerobot_diffusion", seed=s.seed, num_workers=0,
                              batch_size=s.batch_size, steps=s.steps, save_freq=s.save_freq, log_freq=s.log_freq,
                              eval_freq=0, resume=resumed_from is not None)
    cfg.optimizer, cfg.scheduler = config.get_optimizer_preset(), config.get_scheduler_preset()
    set_seed(s.seed)
    dataset = make_dataset(cfg)   # LeRobot's factory: delta timestamps of the policy, ImageNet image stats
    if policy is None:
        policy = DiffusionPolicy(config)
        preprocessor, postprocessor = make_diffusion_pre_post_processors(config, dataset_stats=dataset.meta.stats)
        step = 0
    else:
        pretrained = last / PRETRAINED_MODEL_DIR
        preprocessor = PolicyProcessorPipeline.from_pretrained(pretrained, config_filename="policy_preprocessor.json")
        postprocessor = PolicyProcessorPipeline.from_pretrained(
            pretrained, config_filename="policy_postprocessor.json", to_transition=policy_action_to_transition,
            to_output=transition_to_policy_action)
    optimizer, scheduler = make_optimizer_and_scheduler(cfg, policy)
    if resumed_from is not None:
        step, optimizer, scheduler = load_training_state(last, optimizer, scheduler)
        logger.info("resumed from %s at step %d", resumed_from, step)
    sampler = EpisodeAwareSampler(dataset.meta.episodes["dataset_from_index"],
                                  dataset.meta.episodes["dataset_to_index"], episode_indices_to_use=dataset.episodes,
                                  drop_n_last_frames=config.drop_n_last_frames, shuffle=True)
    loader = torch.utils.data.DataLoader(dataset, num_workers=0, batch_size=s.batch_size, shuffle=False,
                                         sampler=sampler, drop_last=False)
    batches = cycle(loader)
    log_path = out / "log.jsonl"
    if log_path.is_file():   # a run killed after its last checkpoint logged steps that are now redone
        kept = [line for line in log_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        log_path.write_text("".join(line + "\n" for line in kept))
    log = log_path.open("a")
    loss_avg, n_avg, final_loss = 0.0, 0, float("nan")
    bar = tqdm(total=s.steps, initial=step, desc="lerobot diffusion", disable=not progress, dynamic_ncols=True)
    policy.train()
    try:
        while step < s.steps:
            t_step = time.perf_counter()
            batch = preprocessor(next(batches))
            loss, _ = policy.forward(batch)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.optimizer.grad_clip_norm)
            optimizer.step()
            optimizer.zero_grad()
            if scheduler is not None:
                scheduler.step()
            step += 1
            bar.update(1)
            loss_avg += float(loss.detach())
            n_avg += 1
            if step % s.log_freq == 0 or step == s.steps:
                final_loss = loss_avg / n_avg
                log.write(json.dumps({"step": step, "loss": round(final_loss, 5),
                                      "grad_norm": round(float(grad_norm), 4),
                                      "lr": optimizer.param_groups[0]["lr"],
                                      "step_s": round(time.perf_counter() - t_step, 3),
                                      "elapsed_s": round(time.perf_counter() - t0, 1)}) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{final_loss:.4f}")
                loss_avg, n_avg = 0.0, 0
            if step % s.save_freq == 0 or step == s.steps:
                ckpt = get_step_checkpoint_dir(out, s.steps, step)
                save_checkpoint(ckpt, step, cfg, policy, optimizer, scheduler, preprocessor, postprocessor)
                update_last_checkpoint(ckpt)
    finally:
        bar.close()
        log.close()
    final = out / PRETRAINED_MODEL_DIR
    policy.eval()
    policy.save_pretrained(final)
    preprocessor.save_pretrained(final)
    postprocessor.save_pretrained(final)
    result = {"out": str(out), "pretrained_model": str(final), "steps": step, "resumed_from": resumed_from,
              "final_loss": final_loss, "seconds": round(time.perf_counter() - t0, 1), "lerobot_version": version}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
