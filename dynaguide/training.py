"""Training loops for the diffusion policy, the latent dynamics model and the outcome classifier.

All three share one loop (:func:`train_model`): AdamW, optional linear warm-up + cosine decay,
gradient clipping, EMA weights, validation loss, tqdm progress, ``metrics.jsonl`` and a resumable
checkpoint ``<out_dir>/latest`` (safetensors + JSON: weights, EMA, optimizer state, step) written every
``checkpoint_every`` steps and at the end.

Determinism: the batch drawn at step ``k`` and the noise used by the loss at step ``k`` depend only on
``(seed, k)``, so a run interrupted and resumed from its checkpoint continues exactly as an
uninterrupted run would (same batches, same noise, same optimizer state).

Processes: the loop runs under an :class:`accelerate.Accelerator` (:mod:`dynaguide.distributed`) — one
process by default, several under ``accelerate launch`` / ``torchrun`` with the same result up to float
summation order: ``batch_size`` is the global batch, each process trains on its rows of it (``grad_accum``
micro-batches each), and every sample gets the noise it would get in one process.  The main process alone
writes checkpoints, ``metrics.jsonl`` and the plot, keeps the EMA weights, validates and shows progress.

Any ``torch.utils.data.Dataset`` returning dicts of tensors works (see :mod:`dynaguide.data.datasets` for the
item keys each model expects); normaliser min/max are fitted from the training data when the model
has none yet (``dataset.stats()`` when available, else one pass over the items).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from tqdm import tqdm

from dynaguide.checkpoint import load_training_state, save_checkpoint
from dynaguide.distributed import MIXED_PRECISION, Rows, micro_batches

#: ``loss_fn(model, batch, generator) -> scalar``; under several processes or gradient accumulation it is also
#: given ``rows=`` (:class:`dynaguide.distributed.Rows`): the micro-batch's rows of the step's global batch
LossFn = Callable[..., torch.Tensor]


@dataclass
class TrainConfig:
    """Optimisation settings shared by all training loops."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.95, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # or "cosine"
    grad_clip: float = 1.0  # 0 disables
    ema_decay: float = 0.999  # 0 disables EMA
    val_every: int = 200
    val_batches: int = 8
    checkpoint_every: int = 500
    log_every: int = 25
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    num_threads: int = 0  # > 0: torch.set_num_threads(n) for the run (process-wide); 0 leaves torch's default
    progress: bool = True
    plot: bool = True  # write <out_dir>/loss.png at the end
    mixed_precision: str = "no"  # "bf16" / "fp16": Accelerate's autocast (fp16 only on GPUs)
    grad_accum: int = 1  # micro-batches per optimizer step and process; batch_size stays the global batch

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ValueError("steps must be >= 0, batch_size and lr positive")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        for name in ("val_every", "checkpoint_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass
class TrainResult:
    """Outcome of a training call; losses are ``(step, value)`` pairs from this call only."""

    step: int
    checkpoint: Path
    resumed_from: int | None
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses_ema: list[tuple[int, float]] = field(default_factory=list)
    model: nn.Module | None = None
    ema_model: nn.Module | None = None


def _step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + salt) % (2**63 - 1))


class StepBatchSampler(Sampler[list[int]]):
    """Yields, for steps ``start … end-1``, the index batch of that step: a permutation slice that
    depends only on ``(seed, step)``, walking through epochs without repeats inside an epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, end: int) -> None:
        if n <= 0:
            raise ValueError("cannot train on an empty dataset")
        self.n, self.batch_size, self.seed, self.start, self.end = n, min(batch_size, n), seed, start, end

    def batch(self, step: int) -> list[int]:
        per_epoch = max(1, self.n // self.batch_size)
        epoch, slot = divmod(step, per_epoch)
        perm = torch.randperm(self.n, generator=_step_generator(self.seed, epoch, salt=17))
        return perm[slot * self.batch_size:(slot + 1) * self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.end):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.end - self.start)


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    Decay at update ``n`` is ``min(decay, (1 + n) / (10 + n))`` (fast warm-up); integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._param_names = {name for name, _ in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        ema_state = self.model.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if value.is_floating_point() and name in self._param_names:
                target.lerp_(value, 1.0 - decay)
            else:
                target.copy_(value)


def dataset_stats(dataset: Dataset) -> dict[str, np.ndarray]:
    """Min/max of ``actions`` and ``proprio`` over a dataset (``dataset.stats()`` when it has one)."""
    if hasattr(dataset, "stats"):
        return dataset.stats()
    actions, proprio = [], []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[i]
        actions.append(np.asarray(item["actions"]).reshape(-1, np.asarray(item["actions"]).shape[-1]))
        if "proprio" in item:
            p = np.asarray(item["proprio"])
            proprio.append(p.reshape(-1, p.shape[-1]))
    a = np.concatenate(actions)
    out = {"action_min": a.min(0), "action_max": a.max(0)}
    if proprio and proprio[0].shape[-1] > 0:
        p = np.concatenate(proprio)
        out.update(proprio_min=p.min(0), proprio_max=p.max(0))
    return out


def _fit_normalizers(model: nn.Module, dataset: Dataset) -> None:
    if getattr(model, "normalizers_fitted", True):
        return
    s = dataset_stats(dataset)
    model.set_normalizer_stats(
        torch.as_tensor(s["action_min"]), torch.as_tensor(s["action_max"]),
        torch.as_tensor(s["proprio_min"]) if "proprio_min" in s else None,
        torch.as_tensor(s["proprio_max"]) if "proprio_max" in s else None,
    )


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine" and cfg.steps > cfg.warmup_steps:
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, dataset: Dataset, cfg: TrainConfig,
             device: torch.device | None = None) -> float:
    """Mean loss over the first ``cfg.val_batches`` deterministic batches of ``dataset`` (fixed noise);
    ``device`` defaults to ``cfg.device``."""
    was_training = model.training
    model.eval()
    device = device if device is not None else torch.device(cfg.device)
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, cfg.seed + 1, 0, cfg.val_batches)  # type: ignore[arg-type]
    losses = []
    for k, indices in enumerate(sampler):
        batch = _to_device(default_collate([dataset[i] for i in indices]), device)
        losses.append(float(loss_fn(model, batch, _step_generator(cfg.seed, k, salt=99))))
    model.train(was_training)
    return float(np.mean(losses))


class ShardedStepSampler(Sampler[list[int]]):
    """This process's micro-batches of :class:`StepBatchSampler`'s global batches: for each step, the
    ``rows`` (:func:`dynaguide.distributed.micro_batches`) of that step's index batch, in order."""

    def __init__(self, base: StepBatchSampler, rows: list[Rows]) -> None:
        self.base, self.rows = base, rows

    def __iter__(self) -> Iterator[list[int]]:
        for indices in self.base:
            for r in self.rows:
                yield indices[r.start:r.stop]

    def __len__(self) -> int:
        return len(self.base) * len(self.rows)


class _LossModule(nn.Module):
    """``model`` and its loss as one module, so that Accelerate's wrapper (DDP: gradient synchronisation;
    mixed precision: autocast) sees the loss computation as its ``forward``."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, Any], generator: torch.Generator, rows: Rows | None = None) -> torch.Tensor:
        if rows is None:
            return self.loss_fn(self.model, batch, generator)
        return self.loss_fn(self.model, batch, generator, rows=rows)


def train_model(
    model: nn.Module,
    config: Any,
    loss_fn: LossFn,
    train_data: Dataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    val_data: Dataset | None = None,
    resume: bool = True,
    desc: str = "train",
    accelerator: Any = None,
) -> TrainResult:
    """Generic loop: ``loss_fn(model, batch, generator) -> scalar``; see module docstring.

    ``accelerator``: an :class:`accelerate.Accelerator` shared with the caller (e.g. one that built the
    embedding cache on the main process first); default :func:`dynaguide.distributed.make_accelerator`.
    """
    from dynaguide.distributed import make_accelerator

    out_dir = Path(out_dir)
    if accelerator is None:
        accelerator = make_accelerator(cfg.device, cfg.mixed_precision)
    main = accelerator.is_main_process
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "latest"
    device = accelerator.device
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    _fit_normalizers(model, train_data)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 and main else None
    start, resumed_from = 0, None
    if resume and ckpt.is_dir():
        meta = load_training_state(ckpt, model, ema.model if ema else None, optimizer)
        start = resumed_from = int(meta["step"] or 0)
    result = TrainResult(step=start, checkpoint=ckpt, resumed_from=resumed_from)
    sampler = StepBatchSampler(len(train_data), cfg.batch_size, cfg.seed, start, cfg.steps)  # type: ignore[arg-type]
    processes, accumulation = accelerator.num_processes, cfg.grad_accum
    sharded = processes > 1 or accumulation > 1
    rows = micro_batches(sampler.batch_size, processes, accumulation, accelerator.process_index) if sharded \
        else [None]
    loss_module, accel_optimizer = accelerator.prepare(_LossModule(model, loss_fn), optimizer)
    metrics = (out_dir / "metrics.jsonl").open("a") if main else None

    def log(record: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()

    def checkpoint(step: int) -> None:
        if main:
            save_checkpoint(ckpt, model, config, {"train_config": asdict(cfg)}, ema_model=ema.model if ema else None,
                            optimizer=optimizer, step=step)

    def validate(step: int) -> None:
        if val_data is None or not main:
            return
        with accelerator.autocast():
            v = evaluate(model, loss_fn, val_data, cfg, device)
        result.val_losses.append((step, v))
        record = {"step": step, "val_loss": v}
        if ema is not None:
            with accelerator.autocast():
                ve = evaluate(ema.model, loss_fn, val_data, cfg, device)
            result.val_losses_ema.append((step, ve))
            record["val_loss_ema"] = ve
        log(record)

    batches = iter(DataLoader(train_data, batch_sampler=ShardedStepSampler(sampler, rows) if sharded else sampler,
                              num_workers=cfg.num_workers, collate_fn=default_collate, persistent_workers=False))
    step = start
    running: list[float] = []
    try:
        with tqdm(total=cfg.steps, initial=start, desc=desc, disable=not (cfg.progress and main),
                  dynamic_ncols=True) as bar:
            while step < cfg.steps:
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(cfg, step)
                accel_optimizer.zero_grad(set_to_none=True)
                total = torch.zeros((), device=device)
                for k, r in enumerate(rows):
                    batch = _to_device(next(batches), device)
                    last = k == len(rows) - 1
                    with contextlib.nullcontext() if last else accelerator.no_sync(loss_module):
                        loss = loss_module(batch, _step_generator(cfg.seed, step), r)
                        if not sharded and not torch.isfinite(loss):
                            raise FloatingPointError(f"non-finite training loss at step {step}")
                        accelerator.backward(loss / len(rows))
                    total += loss.detach().float() / len(rows)
                if sharded:
                    total = accelerator.reduce(total, reduction="mean")  # the global batch's loss, on every process
                    if not torch.isfinite(total):
                        raise FloatingPointError(f"non-finite training loss at step {step}")
                if cfg.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                accel_optimizer.step()
                if ema is not None:
                    ema.update(model, step)
                step += 1
                value = float(total)
                running.append(value)
                result.train_losses.append((step, value))
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    mean = float(np.mean(running))
                    running.clear()
                    bar.set_postfix(loss=f"{mean:.4f}")
                    log({"step": step, "train_loss": mean, "lr": _lr_at(cfg, step - 1)})
                if step % cfg.val_every == 0 and step != cfg.steps:
                    validate(step)
                if step % cfg.checkpoint_every == 0 and step != cfg.steps:
                    checkpoint(step)
        if step > start or not ckpt.is_dir():
            validate(step)
            checkpoint(step)
    finally:
        if metrics is not None:
            metrics.close()
    accelerator.wait_for_everyone()  # the final checkpoint is written before any process goes on
    if cfg.plot and main:
        plot_metrics(out_dir / "metrics.jsonl", out_dir / "loss.png", title=desc)
    result.step = step
    result.model = model
    result.ema_model = ema.model if ema else None
    return result


def plot_metrics(metrics_file: str | Path, png: str | Path, title: str = "training") -> Path | None:
    """Plot train/val loss curves from a ``metrics.jsonl`` (log scale) to ``png``; None if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    series: dict[str, dict[int, float]] = {}
    for r in records:  # later records (after a resume) overwrite earlier ones at the same step
        for key in ("train_loss", "val_loss", "val_loss_ema"):
            if key in r:
                series.setdefault(key, {})[int(r["step"])] = float(r[key])
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, points in series.items():
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps], label=key, marker="o" if key != "train_loss" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(v > 0 for pts in series.values() for v in pts.values()):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)


# ---------------------------------------------------------------------------- per-model entry points
def _rows_kw(rows: Rows | None) -> dict[str, Rows]:
    """``rows=`` only when given: one process without accumulation calls ``compute_loss`` as it always did."""
    return {} if rows is None else {"rows": rows}


def _policy_loss(model, batch, generator, rows=None):
    return model.compute_loss(batch, generator, **_rows_kw(rows))


def train_policy(policy, train_data: Dataset, cfg: TrainConfig, out_dir: str | Path, val_data: Dataset | None = None,
                 resume: bool = True, accelerator: Any = None) -> TrainResult:
    """Train a :class:`~dynaguide.policy.DiffusionPolicy` on :class:`~dynaguide.data.datasets.PolicyDataset`-style items
    (a goal-conditioned one too: its items carry the goal image)."""
    return train_model(policy, policy.cfg, _policy_loss, train_data, cfg, out_dir, val_data, resume, "policy",
                       accelerator)


class _DynamicsLoss:
    """Embeds ``image``/``target_image`` on the fly when the batch carries no cached tokens."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder

    def __call__(self, model, batch, generator, rows=None):
        if "obs_tokens" not in batch:
            if self.embedder is None:
                raise ValueError("batch has no 'obs_tokens': pass an embedder or use an embedding cache")
            self.embedder.to(batch["image"].device)
            with torch.no_grad():
                batch = dict(batch, obs_tokens=self.embedder(batch["image"]),
                             target_tokens=self.embedder(batch["target_image"]))
        return model.compute_loss(batch, generator, augment=model.training, **_rows_kw(rows))


def train_dynamics(model, train_data: Dataset, cfg: TrainConfig, out_dir: str | Path, val_data: Dataset | None = None,
                   embedder=None, resume: bool = True, accelerator: Any = None) -> TrainResult:
    """Train a :class:`~dynaguide.dynamics.LatentDynamicsModel` (noise augmentation on; off for validation).

    Items need ``proprio``, ``actions`` and either ``obs_tokens``/``target_tokens`` (cache) or
    ``image``/``target_image`` plus ``embedder``.
    """
    return train_model(model, model.cfg, _DynamicsLoss(embedder), train_data, cfg, out_dir, val_data, resume,
                       "dynamics", accelerator)


def _classifier_loss(model, batch, generator, rows=None):
    return model.compute_loss(batch, generator, augment=model.training, **_rows_kw(rows))


def train_classifier(model, train_data: Dataset, cfg: TrainConfig, out_dir: str | Path,
                     val_data: Dataset | None = None, resume: bool = True, accelerator: Any = None) -> TrainResult:
    """Train an outcome classifier (a model with ``cfg`` and ``compute_loss(batch, generator, augment=...)``, e.g.
    BlockTouch's ``dynaguide_experiments.blocktouch.classifier.OutcomeClassifier``) on items with ``image``,
    ``proprio``, ``actions`` and ``label`` (noise augmentation on; off for validation)."""
    return train_model(model, model.cfg, _classifier_loss, train_data, cfg, out_dir, val_data, resume, "classifier",
                       accelerator)
