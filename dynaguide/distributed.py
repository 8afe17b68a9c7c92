"""Training across processes, GPUs and nodes with Hugging Face Accelerate (the glue :func:`train_model` uses).

The same training command runs single-process (default) or under ``accelerate launch`` / ``torchrun``::

    dynaguide train dynamics --data data.h5 --out runs/dyn
    accelerate launch --num_processes 2 -m dynaguide_cli train dynamics --data data.h5 --out runs/dyn
    accelerate launch --multi_gpu --num_processes 8 -m dynaguide_cli train dynamics ... --device cuda \\
        --mixed-precision bf16

Equality by construction: ``batch_size`` is the *global* batch of one optimizer step.  Its indices are drawn
from ``(seed, step)`` alone (:class:`dynaguide.training.StepBatchSampler`); with ``P`` processes and ``K``
gradient-accumulation steps the batch is cut into ``P · K`` equal row ranges (:func:`micro_batches`; process
``p`` takes ranges ``p·K … p·K + K − 1``), and each loss draws its noise for the whole global batch and keeps
its own rows (:class:`Rows`), so every sample sees the same noise as in one process.  Gradients are averaged
over processes (DDP) and summed over micro-batches of ``1 / K`` of the loss: the step's gradient is the
global batch's mean gradient, as in one process (up to float summation order).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class Rows:
    """The rows ``start … stop − 1`` of a global batch of ``total`` samples that one micro-batch holds.

    A loss given ``rows`` draws its random numbers (noise, timesteps, shifts) for all ``total`` samples in
    the order one process would, and keeps rows ``start:stop`` (:meth:`take`).
    """

    start: int
    stop: int
    total: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop <= self.total:
            raise ValueError(f"rows {self.start}:{self.stop} do not lie in a batch of {self.total}")

    def take(self, drawn: torch.Tensor) -> torch.Tensor:
        """``drawn`` (first dimension ``total``) → its rows ``start:stop``."""
        return drawn[self.start:self.stop]


def batch_size_drawn(rows: Rows | None, local: int) -> int:
    """How many samples to draw random numbers for: the global batch with ``rows``, else the local batch."""
    if rows is None:
        return local
    if rows.stop - rows.start != local:
        raise ValueError(f"a micro-batch of {local} samples given rows {rows.start}:{rows.stop}")
    return rows.total


def take_rows(drawn: torch.Tensor, rows: Rows | None) -> torch.Tensor:
    """``drawn`` unchanged without ``rows``, else its rows of this micro-batch."""
    return drawn if rows is None else rows.take(drawn)


def micro_batches(global_size: int, processes: int, accumulation: int, rank: int) -> list[Rows]:
    """The ``accumulation`` row ranges of a ``global_size`` batch that process ``rank`` of ``processes`` trains on
    (equal sizes; a global batch that does not split evenly is refused with the numbers to change)."""
    parts = processes * accumulation
    if global_size % parts:
        raise ValueError(f"the global batch of {global_size} samples does not split evenly over {processes} "
                         f"process(es) x {accumulation} gradient-accumulation step(s); choose a --batch-size "
                         f"that is a multiple of {parts}")
    size = global_size // parts
    return [Rows((rank * accumulation + k) * size, (rank * accumulation + k + 1) * size, global_size)
            for k in range(accumulation)]


def launched_processes() -> int:
    """The number of processes this one was launched among (``WORLD_SIZE`` of accelerate launch / torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def end_process_group() -> None:
    """Tear down the process group of a launched run (gloo / NCCL) before the interpreter exits.  Left to the
    exit-time destructors, a communication thread still running aborted a process now and then ("terminate called
    without an active exception", exit code -6, after a finished run).  No-op without a process group, and it
    imports nothing a command has not imported already."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def make_accelerator(device: str = "cpu", mixed_precision: str = "no"):
    """An :class:`accelerate.Accelerator` for a training run.

    ``device``: ``"cpu"`` keeps every process on the CPU (gloo between processes); anything else lets
    Accelerate place each process on its local accelerator (``cuda`` / ``auto``).  ``mixed_precision``:
    ``no`` / ``bf16`` / ``fp16``.  In a single process (not launched), Accelerate's process-wide state is reset
    first, so successive runs in one Python process may use different settings.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed precision must be one of {MIXED_PRECISION}, got {mixed_precision!r}")
    if device not in ("cpu", "auto") and not device.startswith("cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    if mixed_precision == "fp16" and device == "cpu":
        raise ValueError("--mixed-precision fp16 needs a GPU (--device cuda); on the CPU use bf16 or no")
    if launched_processes() == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision)
