"""``results.json`` assembled from the finished evaluation cells, the stage times and the calibration."""

from __future__ import annotations

import json

import numpy as np

from dynaguide.config import to_dict

from ..config import BlockTouchConfig
from ..evaluation import wilson_interval
from .workdir import Paths


def write_results(cfg: BlockTouchConfig, command: str = "") -> dict:
    """Assemble ``results.json`` from the finished cells (``rate``, ``ci95``, ``n`` plus diagnostics)."""
    paths = Paths(cfg)
    layouts: dict[str, dict] = {}
    for layout in cfg.eval.layouts:
        for method in cfg.eval.methods:
            cell = paths.cell(layout, method)
            if cell.exists():
                summary = json.loads(cell.read_text())
                summary["ci95"] = list(wilson_interval(int(round(summary["rate"] * summary["n"])), summary["n"]))
                layouts.setdefault(layout, {})[method] = summary
    mean = {}
    for method in cfg.eval.methods:
        rates = [layouts[lay][method]["rate"] for lay in cfg.eval.layouts if method in layouts.get(lay, {})]
        if len(rates) == len(cfg.eval.layouts):
            mean[method] = float(np.mean(rates))
    stages = json.loads(paths.stages.read_text()) if paths.stages.exists() else {}
    calib_path = paths.eval / "calibration.json"
    results = {"layouts": layouts, "mean_over_layouts": mean, "stages_s": stages,
               "total_s": round(sum(stages.values()), 1), "command": command,
               "latent_scale_calibration": json.loads(calib_path.read_text()) if calib_path.exists() else None,
               "config": to_dict(cfg)}
    paths.results.mkdir(parents=True, exist_ok=True)
    (paths.results / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
