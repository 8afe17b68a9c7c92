"""dynaguide: steer a diffusion policy towards goal images (DynaGuide) on ROS 2 — sim graph, real arm, tools.

Each subcommand lives in its own module exposing ``register(subparsers)``; that function adds a
parser whose ``func`` default runs it.  Modules are imported lazily so ``dynaguide --help`` stays fast
and a command whose optional dependencies are missing does not break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand name -> module providing ``register(subparsers)`` (or ``module:function``)
COMMANDS: dict[str, str] = {
    "demo": "dynaguide_ros.demo",
    "bench": "dynaguide.bench",
    "blocktouch": "dynaguide.experiments.blocktouch.cli",
    "calvin": "calvin_bridge.cli",
    "launch": "dynaguide_ros.launcher",
    "guide": "dynaguide_ros.guide_cli",
    "reset": "dynaguide_ros.ros_cli:register_reset",
    "topic": "dynaguide_ros.ros_cli:register_topic",
    "node": "dynaguide_ros.run_node",
    "interfaces": "dynaguide_ros.selfcheck",
    "record": "dynaguide_ros.recorder",
    "dataset": "dynaguide.recordings",
    "train": "dynaguide.train_cli",
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
    parser = argparse.ArgumentParser(prog="dynaguide", description=__doc__.splitlines()[0] if __doc__ else None,
                                     epilog="Start here: `dynaguide demo` (README quickstart); "
                                            "`dynaguide COMMAND --help` for each command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    for name, target in COMMANDS.items():
        if wanted is not None and wanted in COMMANDS and name != wanted:
            continue
        module_name, _, func = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue  # subcommand not part of this install (yet)
            raise
        getattr(module, func or "register")(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given, for result files that record their command
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from dynaguide.config import ConfigError

    try:
        result = args.func(args)
    except ConfigError as exc:  # a user's configuration mistake: one line, no traceback
        print(f"dynaguide {args.command}: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
