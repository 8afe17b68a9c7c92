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


def resolve_model_path(path: str) -> str:
    """A model path as the graphs' parameters give it: ``""`` stays ``""``; ``~`` expands; an absolute path is
    kept; a relative one is looked up under the share directory (the repo, or the installed package: where
    ``checkpoints/`` ships) first, then the current directory — so the graphs find the shipped models from
    any directory.  A path found in neither raises ``FileNotFoundError`` naming both places."""
    if not path:
        return ""
    p = Path(path).expanduser()
    if p.is_absolute():
        if not p.exists():
            raise FileNotFoundError(f"model path {p} does not exist")
        return str(p)
    try:
        shipped = share_dir() / p
    except FileNotFoundError:
        shipped = None
    for candidate in (shipped, Path.cwd() / p):
        if candidate is not None and candidate.exists():
            return str(candidate.resolve())
    raise FileNotFoundError(f"model path {path!r} found neither under {shipped.parent if shipped else '?'}"
                            f"/{path} nor under the current directory {Path.cwd()}")
