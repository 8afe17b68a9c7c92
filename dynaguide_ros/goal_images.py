"""The goal images in force as one picture: a mosaic the guidance manager publishes on ``guidance/goal_images``.

The guidance messages carry only embeddings; a viewer (``dynaguide view``) needs the images themselves.  The
manager publishes, for every accepted ``/set_guidance`` with images, one ``sensor_msgs/Image`` (rgb8, transient
local: a late viewer still gets it) holding the goals as square tiles of ``tile`` px, ``columns`` per row,
positives first, then negatives; ``header.frame_id`` describes the layout (:func:`layout_text`) so
:func:`split_mosaic` can cut it back into the single goals.  A clear publishes a 0 x 0 image with frame id
``cleared``.  Guidance restored from the manager's store at start has no images (the store keeps embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOPIC = "guidance/goal_images"
TILE = 64          # px per goal in the mosaic
COLUMNS = 8
MAX_GOALS = 64     # the guidance manager's default max_images
PREFIX = "goal_mosaic"


@dataclass(frozen=True)
class MosaicLayout:
    """How the goals are placed: ``positive`` then ``negative`` goals, ``tile`` px squares, ``columns`` a row."""

    revision: int
    positive: int
    negative: int
    tile: int = TILE
    columns: int = COLUMNS


def layout_text(layout: MosaicLayout) -> str:
    """``"goal_mosaic revision=3 positive=20 negative=0 tile=64 columns=8"`` (the image's frame id)."""
    return (f"{PREFIX} revision={layout.revision} positive={layout.positive} negative={layout.negative} "
            f"tile={layout.tile} columns={layout.columns}")


def parse_layout(text: str) -> MosaicLayout | None:
    """The inverse of :func:`layout_text`; None for anything else (``cleared``, a foreign frame id)."""
    parts = text.split()
    if not parts or parts[0] != PREFIX:
        return None
    try:
        fields = dict(p.split("=", 1) for p in parts[1:])
        layout = MosaicLayout(**{k: int(fields[k]) for k in ("revision", "positive", "negative", "tile", "columns")})
    except (KeyError, ValueError, TypeError):
        return None
    if layout.tile < 1 or layout.columns < 1 or layout.positive < 0 or layout.negative < 0:
        return None
    return layout


def _tile(image: np.ndarray, tile: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).convert("RGB").resize((tile, tile),
                                                                                          Image.Resampling.BILINEAR))


def goal_mosaic(positive: list[np.ndarray], negative: list[np.ndarray], revision: int, tile: int = TILE,
                columns: int = COLUMNS) -> tuple[np.ndarray, MosaicLayout]:
    """``(H, W, 3) uint8`` mosaic of the goal images (each ``(h, w, 3) uint8``, resized to ``tile`` px) and its
    layout; at most :data:`MAX_GOALS` goals (the first ones) are drawn."""
    goals = (list(positive) + list(negative))[:MAX_GOALS]
    n_pos = min(len(positive), MAX_GOALS)
    layout = MosaicLayout(revision, n_pos, len(goals) - n_pos, tile, columns)
    if not goals:
        return np.zeros((0, 0, 3), np.uint8), layout
    rows = -(-len(goals) // columns)
    mosaic = np.zeros((rows * tile, min(columns, len(goals)) * tile, 3), np.uint8)
    for i, img in enumerate(goals):
        r, c = divmod(i, columns)
        mosaic[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = _tile(img, tile)
    return mosaic, layout


def split_mosaic(mosaic: np.ndarray, layout: MosaicLayout) -> list[tuple[str, int, np.ndarray]]:
    """``[(kind, index, (tile, tile, 3) image)]``, kind ``"positive"`` / ``"negative"``; tiles outside the
    picture are left out."""
    out = []
    for i in range(layout.positive + layout.negative):
        r, c = divmod(i, layout.columns)
        img = mosaic[r * layout.tile:(r + 1) * layout.tile, c * layout.tile:(c + 1) * layout.tile]
        if img.shape[:2] != (layout.tile, layout.tile):
            continue
        kind, index = ("positive", i) if i < layout.positive else ("negative", i - layout.positive)
        out.append((kind, index, img))
    return out
