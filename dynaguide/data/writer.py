"""The one writer of the HDF5 demonstration layout (:mod:`dynaguide.data.schema`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py

from dynaguide.data.schema import Demo


def write_demo(data: h5py.Group, demo: Demo, name: str, attrs: Mapping[str, Any] | None = None,
               compression: str | None = None, compression_opts: int | None = None) -> h5py.Group:
    """Write ``demo`` as group ``data/<name>`` in the layout of :mod:`dynaguide.data.schema`; returns the group.

    The one writer of that layout (:func:`write_hdf5_dataset` and ``calvin_bridge.datasets`` use it):
    ``actions`` and ``obs/proprio``/``obs/states`` as float32, cameras as uint8 (compressed with
    ``compression``/``compression_opts`` in one-frame chunks when given), attrs ``behavior`` (when the
    demo has one), ``num_samples`` and any extra ``attrs``.
    """
    g = data.create_group(name)
    g.create_dataset("actions", data=demo.actions)
    obs = g.create_group("obs")
    for cam, img in demo.images.items():
        obs.create_dataset(cam, data=img, compression=compression,
                           compression_opts=compression_opts if compression else None,
                           chunks=(1, *img.shape[1:]) if compression else None)
    obs.create_dataset("proprio", data=demo.proprio)
    if demo.states is not None:
        obs.create_dataset("states", data=demo.states)
    if demo.behaviour is not None:
        g.attrs["behavior"] = demo.behaviour
    for key, value in (attrs or {}).items():
        g.attrs[key] = value
    g.attrs["num_samples"] = len(demo)
    return g


def write_hdf5_dataset(path: str | Path, demos: Sequence[Demo], attrs: Mapping[str, Any] | None = None,
                       compression: str | None = None) -> Path:
    """Write ``demos`` to ``path`` in the layout of :mod:`dynaguide.data.schema` (``demo_<i>`` in order);
    returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for key, value in (attrs or {}).items():
            data.attrs[key] = value
        for i, demo in enumerate(demos):
            write_demo(data, demo, demo.name or f"demo_{i}", compression=compression)
    return path
