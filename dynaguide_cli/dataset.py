"""``dynaguide dataset from-mcap | export-lerobot``: training datasets from a recording of the graph
(:mod:`dynaguide.recordings`) and our HDF5 as a LeRobotDataset (:mod:`dynaguide.datasets_external`).

Errors (ValueError, OSError) are printed as one line by :mod:`dynaguide_cli.main` (--debug: the traceback).
"""

from __future__ import annotations

import json

from dynaguide.inputs import InputError


def _from_mcap(args) -> int:
    from dynaguide.recordings import FromMcapConfig, convert_mcap

    cfg = FromMcapConfig(cameras=tuple(args.camera or ("camera/rgb_static",)), proprio=args.proprio,
                         state_topic=args.state_topic, segment=args.segment, window=args.window,
                         stride=args.stride, min_length=args.min_length, max_image_age_s=args.max_image_age,
                         compression=args.compression)
    summary = convert_mcap(args.recording, args.out, cfg, overwrite=args.overwrite)
    print(json.dumps(summary))
    return 0


def _export_lerobot(args) -> int:
    from dynaguide.datasets_external import export_hdf5_to_lerobot

    try:
        summary = export_hdf5_to_lerobot(args.data, args.out, camera=args.camera, lerobot_camera=args.lerobot_camera,
                                         image_size=args.image_size, fps=args.fps, max_episodes=args.max_episodes,
                                         only_success=not args.keep_failures, overwrite=args.overwrite,
                                         progress=not args.no_progress)
    except ImportError as exc:
        raise InputError(f"LeRobot is needed to export ({exc}); `make install` installs it") from exc
    print(json.dumps(summary))
    return 0


def register(subparsers) -> None:
    from dynaguide.recordings import PROPRIO_SOURCES, SEGMENT_MODES

    p = subparsers.add_parser("dataset", help="build training datasets (from an MCAP recording of the graph; "
                                              "our HDF5 → LeRobotDataset)")
    sub = p.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND", required=True)
    m = sub.add_parser("from-mcap", help="a `dynaguide record` MCAP file → HDF5 segments (data/demo_i/...)")
    m.add_argument("recording", help="the .mcap file")
    m.add_argument("--out", required=True, help="HDF5 file to write (never the recording; an existing file only "
                                                "with --overwrite)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    m.add_argument("--camera", action="append", help="camera topic (repeatable; default camera/rgb_static)")
    m.add_argument("--proprio", choices=sorted(PROPRIO_SOURCES), default="calvin_state")
    m.add_argument("--state-topic", default="", help="robot-state topic (default: that of --proprio)")
    m.add_argument("--segment", choices=SEGMENT_MODES, default="window")
    m.add_argument("--window", type=int, default=32, help="steps per window / most steps per behaviour segment")
    m.add_argument("--stride", type=int, default=0, help="steps between window starts (0 = --window)")
    m.add_argument("--min-length", type=int, default=2)
    m.add_argument("--max-image-age", type=float, default=0.5, help="s; steps with older frames are dropped")
    m.add_argument("--compression", choices=("gzip", "none"), default="gzip")
    m.set_defaults(func=_from_mcap)
    e = sub.add_parser("export-lerobot", help="our HDF5 segments → a LeRobotDataset v3.0 directory (LeRobot's writer)")
    e.add_argument("data", nargs="+", help="HDF5 files in our layout (data/demo_i/...), one episode per segment")
    e.add_argument("--out", required=True, help="dataset directory to create")
    e.add_argument("--camera", default="third_person", help="our camera key (obs/<key>)")
    e.add_argument("--lerobot-camera", default="rgb_static", help="name of the observation.images.<name> feature")
    e.add_argument("--image-size", type=int, default=0, help="resize frames to this square size (0 = as recorded)")
    e.add_argument("--fps", type=int, default=30)
    e.add_argument("--max-episodes", type=int, default=0, help="0 = all")
    e.add_argument("--keep-failures", action="store_true", help="also export segments with success = false")
    e.add_argument("--overwrite", action="store_true", help="rewrite an existing dataset directory")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_export_lerobot)
