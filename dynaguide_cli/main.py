"""dynaguide: steer a diffusion policy towards goal images (DynaGuide) on ROS 2 — sim graph, real arm, tools.

Each command group is a module of this package (:data:`COMMANDS`) whose register function adds its parsers;
their ``func`` default runs the command.  The command modules import their libraries (torch, rclpy, the simulator)
inside the command functions, so ``dynaguide --help`` stays fast and a command whose optional dependencies are
missing does not break the others.

Errors a user can fix (:class:`dynaguide.inputs.InputError` and the ``ValueError`` / ``OSError`` a bad file or
value raises) are one line on stderr, ``dynaguide: error: <what>``, and exit status 2 — no traceback
(``dynaguide --debug ...`` or ``DYNAGUIDE_DEBUG=1`` re-raise them).  Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from dynaguide.inputs import DEBUG_ENV, InputError, one_line

from dynaguide_cli import bench, blocktouch, calvin, dataset, ros, train

#: command -> the function of its command-group module that adds its parser (``register(subparsers)``), in the order
#: ``dynaguide --help`` lists them; the command modules import their libraries (torch, rclpy, the simulator) when a
#: command runs, so building the parser imports neither rclpy nor torch
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "demo": ros.register_demo,
    "bench": bench.register,
    "blocktouch": blocktouch.register,
    "calvin": calvin.register,
    "launch": ros.register_launch,
    "guide": ros.register_guide,
    "reset": ros.register_reset,
    "topic": ros.register_topic,
    "node": ros.register_node,
    "interfaces": ros.register_interfaces,
    "record": ros.register_record,
    "view": ros.register_view,
    "dataset": dataset.register,
    "train": train.register,
}

#: commands whose errors keep their traceback (``node``: a ROS node process, its log is read by developers)
TRACEBACK_COMMANDS = ("node",)

#: (command, argument dest) -> "file" or "directory": paths the user names on the command line that must exist
#: before anything starts (the argument's default is not checked: a command may create or fall back from it)
EXISTING_PATH_ARGUMENTS: dict[tuple[str, str], str] = {
    ("demo", "checkpoints"): "directory",
    ("launch", "params_file"): "file",
}


def version() -> str:
    """The installed distribution's version (``pyproject.toml``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("dynaguide-stack")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``dynaguide`` parser with every command (``argv``, the command line, is not needed: kept for callers)."""
    parser = argparse.ArgumentParser(prog="dynaguide", description=__doc__.splitlines()[0] if __doc__ else None,
                                     epilog="Start here: `dynaguide demo` (README quickstart); "
                                            "`dynaguide COMMAND --help` for each command.")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of errors otherwise printed as one line (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    for register in COMMANDS.values():
        register(sub)
    return parser


def check_named_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (:class:`InputError`) a path in :data:`EXISTING_PATH_ARGUMENTS` that the user gave and that does
    not exist, before the command starts anything."""
    subparsers = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    for (command, dest), kind in EXISTING_PATH_ARGUMENTS.items():
        if args.command != command or subparsers is None or command not in subparsers.choices:
            continue
        value = getattr(args, dest, None)
        if value is None or value == subparsers.choices[command].get_default(dest):
            continue
        path = Path(value).expanduser()
        ok = path.is_dir() if kind == "directory" else path.is_file()
        if not ok:
            option = "--" + dest.replace("_", "-")
            raise InputError(f"{command} {option} {value}: no such {kind}"
                             + ("" if not path.exists() else f" ({path} is not a {kind})"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given, for result files that record their command
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # ROS node processes keep their tracebacks in the graph's log (a node's failure is for its developer too)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0") or args.command in TRACEBACK_COMMANDS
    try:
        check_named_paths(parser, args)
        result = args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("dynaguide: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # InputError, ConfigError, ... and what bad files make libraries raise
        if debug:
            raise
        hint = "" if isinstance(exc, InputError) else f" ({type(exc).__name__}; --debug shows the traceback)"
        print(f"dynaguide: error: {one_line(exc)}{hint}", file=sys.stderr)
        return 2
    finally:
        from dynaguide.distributed import end_process_group

        end_process_group()   # a launched training run: its process group, before the interpreter exits
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
