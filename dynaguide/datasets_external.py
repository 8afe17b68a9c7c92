"""Users' datasets → our HDF5 layout: LeRobotDataset directories (v3.0, as LeRobot 0.4.x writes them); and back:
:func:`export_hdf5_to_lerobot` (``dynaguide dataset export-lerobot``) writes our HDF5 segments as a LeRobotDataset
with LeRobot's own writer, so LeRobot's training code can train on our sim data.

:func:`lerobot_episodes` yields one :class:`~dynaguide.data.schema.Demo` per episode; :func:`write_lerobot_as_hdf5`
streams them (optionally cut into fixed windows, :func:`window_segments`) into our layout with
:func:`dynaguide.data.writer.write_demo`, so the rest of training (embedding cache, ``DynamicsDataset``, noise
augmentation) is the same code as for our own data.

Reading.  The dataset is opened with LeRobot's own ``LeRobotDataset(repo_id, root=DIR)`` (metadata, episode
index, the parquet frames through its ``hf_dataset``), never from the hub.  LeRobot's frame access
(``dataset[i]``) cannot decode *videos* in this environment: its decoders are torchcodec (no wheel for this
torch) or ``torchvision.io.VideoReader`` (removed from torchvision 0.28).  So video frames are decoded with
PyAV (``av``, which LeRobot itself uses to encode them) at the timestamps LeRobot would query: the episode's
``videos/<key>/from_timestamp`` plus the frame's ``timestamp``, each matched to the nearest decoded frame within
half a frame period.  ``image``-dtype cameras come straight from the parquet files.

Time convention (LeRobot's and ours agree): row ``t`` of an episode holds the observation at ``t`` and the
action taken from it, so ``actions[t : t + T]`` is the chunk starting now and the episode's last frame is its
outcome (segment by episode), or a window's last frame is (segment by window).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynaguide.data.schema import Demo, read_hdf5_array
from dynaguide.data.source import DemoSource
from dynaguide.inputs import InputError, atomic_output


class ExternalDatasetError(InputError):
    """A user's dataset cannot be read as asked (missing keys, wrong shapes, undecodable video...)."""


def is_lerobot_dataset(path: str | Path) -> bool:
    """True for a directory with LeRobot's ``meta/info.json``."""
    return (Path(path) / "meta" / "info.json").is_file()


def window_segments(length: int, window: int, stride: int = 0) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of ``window`` steps every ``stride`` steps (0 = ``window``) inside ``length``
    steps; a sequence shorter than ``window`` gives none."""
    if window < 1 or stride < 0:
        raise ValueError(f"window must be >= 1 and stride >= 0, got {window}, {stride}")
    step = stride or window
    return [(s, s + window) for s in range(0, length - window + 1, step)]


@dataclass
class LeRobotKeys:
    """Which LeRobot features become our camera, proprio and actions.

    Attributes:
        camera: an image or video feature, e.g. ``observation.images.top`` ("" = the dataset's only camera).
        proprio: a float vector feature (``observation.state``; "" = none: proprio_dim 0).
        action: the action feature (``action``).
    """

    camera: str = ""
    proprio: str = "observation.state"
    action: str = "action"


def _open(root: Path):
    from dynaguide.policy.lerobot_adapter import _import_torchvision

    if not is_lerobot_dataset(root):
        raise ExternalDatasetError(f"{root} is not a LeRobotDataset directory (no meta/info.json)")
    _import_torchvision()  # LeRobot's dataset module imports torchvision (see lerobot_adapter)
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except ImportError as exc:
        raise ExternalDatasetError(f"reading LeRobot datasets needs lerobot ({exc}): "
                                   "pip install -e '.[lerobot]' && pip install --no-deps lerobot==0.4.4") from exc
    try:
        return LeRobotDataset(f"local/{root.name}", root=root)
    except Exception as exc:  # version checks, missing files: LeRobot's own message says what
        raise ExternalDatasetError(f"LeRobot cannot open {root}: {type(exc).__name__}: {exc}") from exc


def _resolve_keys(meta, keys: LeRobotKeys) -> LeRobotKeys:
    features = meta.features
    cameras = list(meta.camera_keys)
    camera = keys.camera
    if not camera:
        if len(cameras) != 1:
            raise ExternalDatasetError(f"the dataset has cameras {cameras}: choose one with --camera")
        camera = cameras[0]
    if camera not in cameras:
        raise ExternalDatasetError(f"camera {camera!r} is not an image/video feature; cameras: {cameras}")
    for name, key in (("action", keys.action), ("proprio", keys.proprio)):
        if not key:
            if name == "action":
                raise ExternalDatasetError("an action key is required")
            continue
        if key not in features:
            raise ExternalDatasetError(f"{name} key {key!r} is not a feature of the dataset; features: "
                                       f"{sorted(features)}")
        ft = features[key]
        if ft["dtype"] not in ("float32", "float64") or len(ft["shape"]) != 1:
            raise ExternalDatasetError(f"{name} key {key!r} must be a float vector, got {ft['dtype']} {ft['shape']}")
    return LeRobotKeys(camera=camera, proprio=keys.proprio, action=keys.action)


def decode_video_frames(path: Path, timestamps: np.ndarray, tolerance_s: float) -> np.ndarray:
    """Frames of the video at ``timestamps (N,)`` s (sorted) → ``(N, H, W, 3) uint8`` RGB, with PyAV.

    Each timestamp takes the decoded frame nearest to it; a gap larger than ``tolerance_s`` raises
    :class:`ExternalDatasetError` (the frame is missing, not a frame shifted in time).
    """
    import av

    if not path.is_file():
        raise ExternalDatasetError(f"video file {path} is missing")
    lo, hi = float(timestamps.min()), float(timestamps.max())
    times: list[float] = []
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if lo > 1.0 and stream.time_base is not None:
                container.seek(int(max(0.0, lo - 1.0) / stream.time_base), stream=stream, backward=True,
                               any_frame=False)
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else float(frame.pts * stream.time_base)
                if t < lo - tolerance_s:
                    continue
                if t > hi + tolerance_s:
                    break
                times.append(t)
                frames.append(frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as exc:
        raise ExternalDatasetError(f"cannot decode {path}: {exc}") from exc
    if not frames:
        raise ExternalDatasetError(f"{path} has no frames between {lo:.3f} and {hi:.3f} s")
    decoded = np.asarray(times)
    idx = np.clip(np.searchsorted(decoded, timestamps), 1, len(decoded) - 1) if len(decoded) > 1 \
        else np.zeros(len(timestamps), int)
    if len(decoded) > 1:
        left_closer = np.abs(timestamps - decoded[idx - 1]) <= np.abs(decoded[idx] - timestamps)
        idx = np.where(left_closer, idx - 1, idx)
    gap = np.abs(decoded[idx] - timestamps)
    if gap.max() > tolerance_s:
        worst = int(gap.argmax())
        raise ExternalDatasetError(f"{path}: no frame within {tolerance_s:.4f} s of t = {timestamps[worst]:.4f} s "
                                   f"(nearest {decoded[idx[worst]]:.4f} s)")
    return np.stack([frames[i] for i in idx])


def lerobot_episodes(root: str | Path, keys: LeRobotKeys | None = None) -> Iterator[Demo]:
    """One :class:`Demo` per episode of the LeRobotDataset at ``root``: ``images {"<camera key>": (L, H, W, 3)}``
    uint8, ``proprio (L, P)``, ``actions (L, A)`` float32 raw; ``behaviour`` = the episode's first task string."""
    root = Path(root)
    ds = _open(root)
    meta = ds.meta
    keys = _resolve_keys(meta, keys or LeRobotKeys())
    is_video = keys.camera in meta.video_keys
    columns = [keys.action, "timestamp", "episode_index"] + ([keys.proprio] if keys.proprio else []) + \
        ([] if is_video else [keys.camera])
    table = ds.hf_dataset.with_format("numpy", columns=columns)
    tolerance = 0.5 / float(meta.fps)
    for ep in meta.episodes:
        lo, hi = int(ep["dataset_from_index"]), int(ep["dataset_to_index"])
        if hi <= lo:
            continue
        rows = table[lo:hi]
        if not np.all(rows["episode_index"] == ep["episode_index"]):
            raise ExternalDatasetError(f"{root}: rows {lo}..{hi} are not all episode {ep['episode_index']}")
        actions = np.asarray(rows[keys.action], np.float32)
        proprio = (np.asarray(rows[keys.proprio], np.float32) if keys.proprio
                   else np.zeros((hi - lo, 0), np.float32))
        if not (np.isfinite(actions).all() and np.isfinite(proprio).all()):
            raise ExternalDatasetError(f"{root}: episode {int(ep['episode_index'])} has NaN or infinite "
                                       f"{keys.action} or {keys.proprio} values")
        if is_video:
            video = root / meta.get_video_file_path(int(ep["episode_index"]), keys.camera)
            start = float(ep[f"videos/{keys.camera}/from_timestamp"])
            images = decode_video_frames(video, start + np.asarray(rows["timestamp"], np.float64), tolerance)
        else:
            images = np.asarray(rows[keys.camera])
            if images.dtype != np.uint8:  # float images in [0, 1]
                if images.dtype.kind != "f" or not np.isfinite(images).all() or images.min() < -1e-3 \
                        or images.max() > 1 + 1e-3:
                    lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
                    raise ExternalDatasetError(f"{root}: episode {int(ep['episode_index'])} {keys.camera} holds "
                                               f"{images.dtype} images in [{lo:.3g}, {hi:.3g}]; expected uint8 or "
                                               "floats in [0, 1]")
                images = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
            if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
                images = images.transpose(0, 2, 3, 1)
        tasks = ep.get("tasks") or []
        yield Demo(actions=actions, images={keys.camera: np.ascontiguousarray(images)}, proprio=proprio,
                   behaviour=str(tasks[0]) if tasks else None, name=f"episode_{int(ep['episode_index'])}")


def write_lerobot_as_hdf5(root: str | Path, out: str | Path, keys: LeRobotKeys | None = None,
                          segment: str = "episode", window: int = 0, stride: int = 0,
                          compression: str | None = "gzip") -> dict:
    """Write the episodes (``segment="episode"``) or fixed windows of them (``segment="window"``) of a
    LeRobotDataset as ``data/demo_i`` of an HDF5 file; returns ``{"out", "segments", "episodes", "camera",
    "frames"}``.  The camera is stored under its LeRobot key (``obs/observation.images.top``)."""
    import h5py

    from dynaguide.data.writer import write_demo

    if segment not in ("episode", "window"):
        raise ValueError(f"segment must be 'episode' or 'window', got {segment!r}")
    if segment == "window" and window < 1:
        raise ValueError("segment='window' needs window >= 1")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n_seg = n_ep = frames = 0
    camera = ""
    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        data.attrs.update({"source": str(Path(root).resolve()), "source_format": "LeRobotDataset",
                           "keys": json.dumps(keys.__dict__ if keys else LeRobotKeys().__dict__),
                           "segment": segment, "window": int(window), "stride": int(stride)})
        for demo in lerobot_episodes(root, keys):
            n_ep += 1
            frames += len(demo)
            camera = next(iter(demo.images))
            ranges = [(0, len(demo))] if segment == "episode" else window_segments(len(demo), window, stride)
            for s, e in ranges:
                part = Demo(actions=demo.actions[s:e], images={camera: demo.images[camera][s:e]},
                            proprio=demo.proprio[s:e], behaviour=demo.behaviour)
                write_demo(data, part, f"demo_{n_seg}", attrs={"episode": demo.name, "start": s, "end": e},
                           compression=compression, compression_opts=1 if compression else None)
                n_seg += 1
        data.attrs["camera"] = camera
    if n_seg == 0:
        tmp.unlink()
        raise ExternalDatasetError(f"{root}: no segments ({n_ep} episodes, {frames} frames; window {window} longer "
                                   "than every episode?)")
    tmp.replace(out)
    return {"out": str(out), "segments": n_seg, "episodes": n_ep, "camera": camera, "frames": frames}


# ------------------------------------------------------------------------------------------------ export
#: LeRobot feature names of the exported CALVIN data
LEROBOT_CAMERA_PREFIX = "observation.images."


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """``(N, H, W, 3) uint8`` → ``(N, size, size, 3) uint8`` with bilinear, antialiased interpolation — the same
    resize :class:`~dynaguide.policy.lerobot_adapter.LeRobotDiffusionAdapter` applies (``resize_images``) to
    frames of another size at run time, so a policy trained on the export sees the same pixels live."""
    import torch
    import torch.nn.functional as F

    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3), got {frames.shape}")
    if frames.shape[1:3] == (size, size):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (y.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def export_hdf5_to_lerobot(sources: list[str | Path], out: str | Path, *, camera: str = "third_person",
                           lerobot_camera: str = "rgb_static", image_size: int = 0, fps: int = 30,
                           repo_id: str = "", max_episodes: int = 0, only_success: bool = True,
                           overwrite: bool = False, progress: bool = True) -> dict:
    """Our HDF5 segments (``data/demo_i``: ``obs/<camera> (L, H, W, 3) uint8``, ``obs/proprio (L, P)``,
    ``actions (L, A)``) → a LeRobotDataset v3.0 directory written with LeRobot's own
    ``LeRobotDataset.create`` / ``add_frame`` / ``save_episode`` / ``finalize`` (as ``lerobot`` 0.4.x writes it).

    One segment = one episode; its ``behavior`` attribute is the episode's task string.  Features:
    ``observation.images.<lerobot_camera>`` (dtype ``image``: PNG frames in the parquet files, so LeRobot's
    ``dataset[i]`` loads them without a video decoder — torchcodec is missing here), ``observation.state``
    (P float32, raw units: CALVIN's 15-d ``robot_obs``) and ``action`` (A float32, raw: the 7-d relative
    action).  Row t = observation at t and the action taken from it (LeRobot's convention and ours).

    Args:
        sources: HDF5 files in our layout, concatenated in order.
        out: the dataset directory to create (must not exist unless ``overwrite``, is never an input nor a folder
            holding one; written to a temp directory next to it and renamed at the end, so an error, Ctrl-C or
            SIGTERM leaves no half dataset behind and an overwritten dataset is only replaced once the new one is
            complete).
        camera: our camera key; ``image_size`` > 0 resizes frames to that square size (:func:`resize_frames`).
        fps: control rate (CALVIN: 30 Hz).  ``max_episodes`` > 0 stops after that many; ``only_success``
            skips segments whose ``success`` attribute is false.

    Returns:
        ``{"out", "episodes", "frames", "features", "lerobot_version", "seconds"}``.
    """
    import time


    from dynaguide.policy.lerobot_adapter import import_lerobot

    t0 = time.perf_counter()
    out = Path(out)
    files = [Path(s) for s in sources]
    if not 0 < fps <= 1000 or not 0 <= image_size <= 4096 or max_episodes < 0:
        raise ExternalDatasetError(f"--fps must be in 1..1000 ({fps}), --image-size in 0..4096 ({image_size}), "
                                   f"--max-episodes >= 0 ({max_episodes})")
    for f in files:
        if not f.is_file():
            raise ExternalDatasetError(f"{f} does not exist")
        if out.resolve() == f.resolve() or out.resolve() in f.resolve().parents:
            raise ExternalDatasetError(f"--out {out} is, or holds, the input {f}: choose another directory (an "
                                       "input is never overwritten)")
    if out.exists() and not overwrite:
        if is_lerobot_dataset(out):
            info = json.loads((out / "meta" / "info.json").read_text())
            return {"out": str(out), "episodes": int(info["total_episodes"]), "frames": int(info["total_frames"]),
                    "features": sorted(info["features"]), "skipped": "exists (use --overwrite to rewrite)"}
        raise ExternalDatasetError(f"{out} exists and is not a LeRobotDataset; remove it or pass overwrite")
    if out.exists() and not out.is_dir():
        raise ExternalDatasetError(f"--out {out} is a file, not a dataset directory")
    # every input's layout and sizes are checked before anything is written (dynaguide.data.source.DemoSource)
    sources_ok = [DemoSource(f) for f in files]
    first = sources_ok[0]
    if camera not in first.cameras(first.names[0]):
        raise ExternalDatasetError(f"{files[0]}: no camera obs/{camera} (have {first.cameras(first.names[0])})")
    h, w = first._camera_dataset(first.names[0], camera).shape[1:3]
    p, a = first.proprio[first.names[0]].shape[1], first.actions[first.names[0]].shape[1]
    version = import_lerobot()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    hw = (image_size, image_size) if image_size else (int(h), int(w))
    image_key = LEROBOT_CAMERA_PREFIX + lerobot_camera
    features = {
        image_key: {"dtype": "image", "shape": (hw[0], hw[1], 3), "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": (int(p),), "names": None},
        "action": {"dtype": "float32", "shape": (int(a),), "names": None},
    }
    episodes = frames = 0
    with atomic_output(out) as partial:
        ds = LeRobotDataset.create(repo_id or f"local/{out.name}", fps=fps, features=features, root=partial,
                                   use_videos=False)
        try:
            from tqdm import tqdm

            for path, src in zip(files, sources_ok):
                for name in tqdm(src.names, desc=f"export {path.name}", disable=not progress):
                    if max_episodes and episodes >= max_episodes:
                        break
                    g = src._h5()["data"][name]
                    if only_success and not bool(g.attrs.get("success", True)):
                        continue
                    images = read_hdf5_array(src._camera_dataset(name, camera), f"{path}: data/{name}/obs/{camera}")
                    if image_size:
                        images = resize_frames(images, image_size)
                    state, actions = src.proprio[name], src.actions[name]
                    if state.shape[1] != p or actions.shape[1] != a or images.shape[1:3] != tuple(hw):
                        raise ExternalDatasetError(f"{path}: data/{name} has proprio {state.shape[1]}, actions "
                                                   f"{actions.shape[1]}, frames {list(images.shape[1:3])}; the first "
                                                   f"segment has {p}, {a}, {list(hw)}: one layout per dataset")
                    task = str(g.attrs.get("behavior", "calvin"))
                    for t in range(len(actions)):
                        ds.add_frame({image_key: images[t], "observation.state": state[t], "action": actions[t],
                                      "task": task})
                    ds.save_episode()
                    episodes += 1
                    frames += len(actions)
        finally:
            ds.finalize()
            for src in sources_ok:
                src.close()
        if episodes == 0:
            raise ExternalDatasetError(f"no episodes exported from {[str(f) for f in files]}")
    return {"out": str(out), "episodes": episodes, "frames": frames, "features": sorted(features),
            "image_size": list(hw), "fps": fps, "lerobot_version": version,
            "seconds": round(time.perf_counter() - t0, 1)}
