"""Where the stack's shipped configuration lives (``config/``, ``launch/``).

Lookup order: ``$DYNAGUIDE_SHARE_DIR`` (a directory holding ``config/`` and ``launch/``), the source
checkout this package was imported from (editable installs), then ``<prefix>/share/dynaguide_ros``
(wheel installs, where CMake installs both directories).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def share_dir() -> Path:
    env = os.environ.get("DYNAGUIDE_SHARE_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[1], Path(sys.prefix) / "share" / "dynaguide_ros"]
    for c in candidates:
        if (c / "config" / "fastdds_localhost.xml").is_file():
            return c
    raise FileNotFoundError(
        "cannot find the DynaGuide config directory; looked in "
        + ", ".join(str(c) for c in candidates) + " (set DYNAGUIDE_SHARE_DIR)")


def config_path(name: str) -> Path:
    """Path of a shipped config file, e.g. ``config_path("calvin_sim.yaml")``."""
    path = share_dir() / "config" / name
    if not path.exists():
        raise FileNotFoundError(f"no shipped config {name!r} at {path}")
    return path


def launch_path(name: str) -> Path:
    return share_dir() / "launch" / name
