"""``dynaguide calvin eval --ray [ADDRESS]``: the cells of an evaluation sweep as tasks on a Ray cluster.

    dynaguide calvin eval --experiment articulated --methods base,dynaguide --ray            # local cluster
    dynaguide calvin eval --experiment articulated --methods base,dynaguide --ray auto       # `ray start` cluster
    dynaguide calvin eval ... --ray ray://head:10001 --ray-workers 32 --ray-trials-per-task 5

Ray is an optional extra (``pip install 'dynaguide-stack[distributed]'``).  Each worker is a Ray actor (one
CPU) that loads the models, goal images and environments once (:class:`~.evaluate.CellEvaluator`, the same
code as the sequential run) and then evaluates work units: a whole (target, method) cell by default, or with
``--ray-trials-per-task n`` batches of ``n`` of its trials.  Every trial keeps its seed
(``seed + 1000 · target index + trial``), so the trials are the sequential run's; with whole cells they are
also run in the same batches of ``batch_envs`` environments, so the records — and ``results.json`` — are
identical to the sequential run's (only wall-clock fields differ: ``seconds``, ``stages_s``, ``machine``).
Smaller trial batches spread a sweep over more workers but change which trials share a batched policy call;
that changes float rounding only (as a resumed run does; :mod:`~.harness` docstring), not seeds.

The driver (this process) alone writes: each finished unit's records are appended to its cell's
``trials/<target>__<method>.jsonl``, so a killed sweep resumes as today, rerunning the unfinished units.
Across machines every node needs this package and the data and checkpoint paths of the config (a shared
file system or the same layout).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from dynaguide_experiments.calvin.evaluate import CellEvaluator, Sweep, append_trials
from dynaguide.inputs import InputError

LOCAL = "local"


@dataclass(frozen=True)
class RayEvalConfig:
    """Where and how finely a sweep is spread.

    Attributes:
        address: ``local`` (a Ray cluster on this machine for this run), ``auto`` (the running cluster of
            ``ray start``), ``host:port`` or ``ray://host:10001`` (Ray client).
        workers: worker actors (0 = one per CPU of the cluster, at most one per work unit).
        trials_per_task: 0 = a whole cell per unit (results identical to the sequential run); n = units of
            n trials.
    """

    address: str = LOCAL
    workers: int = 0
    trials_per_task: int = 0

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("--ray needs an address (local, auto, host:port or ray://host:port) or none")
        if self.workers < 0 or self.trials_per_task < 0:
            raise ValueError("--ray-workers and --ray-trials-per-task must be >= 0")


def work_units(sweep: Sweep, trials_per_task: int = 0) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(target, method, trials)`` of every unfinished cell, in the sequential run's order; a cell's pending
    trials in batches of ``trials_per_task`` (0 = all of them)."""
    units = []
    for target, method, done in sweep.pending():
        pending = tuple(i for i in range(sweep.cfg.eval.trials) if i not in done)
        size = trials_per_task or len(pending)
        units += [(target, method, pending[i:i + size]) for i in range(0, len(pending), size)]
    return units


class CellWorker:
    """One Ray actor's evaluator (made a Ray actor class by :func:`run_on_ray`)."""

    def __init__(self, sweep: Sweep) -> None:
        self.evaluator = CellEvaluator(sweep)
        self.trials = sweep.cfg.eval.trials

    def load_seconds(self) -> float:
        return self.evaluator.load_s

    def run(self, target: str, method: str, trials: tuple[int, ...]) -> tuple[list[dict], float]:
        """The records of ``trials`` of a cell (in the order they finished) and the seconds it took."""
        start = time.perf_counter()
        records: list[dict] = []
        self.evaluator.run(target, method, set(range(self.trials)) - set(trials), records.append)
        return records, round(time.perf_counter() - start, 1)


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise InputError(f"--ray needs Ray ({exc}): pip install 'dynaguide-stack[distributed]'") from None
    return ray


def run_on_ray(sweep: Sweep, cfg: RayEvalConfig, progress: bool = True) -> dict[str, float]:
    """Evaluate the unfinished cells of ``sweep`` on Ray, appending records as units finish; returns the stage
    timings (``load_s``: the slowest worker's loading; ``<target>/<method>_s``: worker seconds summed)."""
    from tqdm import tqdm

    ray = import_ray()
    units = work_units(sweep, cfg.trials_per_task)
    if not units:
        return {}
    started_here = not ray.is_initialized()
    if started_here:
        if cfg.address == LOCAL:
            ray.init(num_cpus=cfg.workers or None, include_dashboard=False, log_to_driver=False,
                     object_store_memory=200 * 1024 ** 2, logging_level="WARNING")
        else:
            ray.init(address=cfg.address, log_to_driver=False, logging_level="WARNING")
    t0 = time.perf_counter()
    workers = []
    try:
        count = cfg.workers or int(ray.cluster_resources().get("CPU", 1))
        count = max(1, min(count, len(units)))
        actor = ray.remote(num_cpus=1)(CellWorker)
        workers = [actor.remote(sweep) for _ in range(count)]
        stages = {"load_s": max(_get(ray, [w.load_seconds.remote() for w in workers]))}
        queue, running = list(units), {}

        def submit(worker) -> None:
            unit = queue.pop(0)
            running[worker.run.remote(*unit)] = (worker, unit)

        for w in workers:
            if queue:
                submit(w)
        with tqdm(total=len(units), desc="ray units", disable=not progress, dynamic_ncols=True) as bar:
            while running:
                (ref,), _ = ray.wait(list(running), num_returns=1)
                worker, (target, method, _) = running.pop(ref)
                records, seconds = _get(ray, ref)
                with append_trials(sweep.trials_file(target, method)) as log:
                    for record in records:
                        log.write(json.dumps(record) + "\n")
                key = f"{target}/{method}_s"
                stages[key] = round(stages.get(key, 0.0) + seconds, 1)
                bar.update(1)
                if queue:
                    submit(worker)
        stages["ray_wall_s"] = round(time.perf_counter() - t0, 1)
        return stages
    finally:
        for w in workers:
            ray.kill(w)
        if started_here:
            ray.shutdown()


def _get(ray, refs):
    """``ray.get``, with a worker's ValueError / OSError (a bad setting or file) raised as itself."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, (ValueError, OSError)):
            raise cause from None
        raise
