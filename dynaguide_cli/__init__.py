"""The ``dynaguide`` command line: the top layer, above the core (``dynaguide``), the simulator (``calvin_bridge``),
the experiments (``dynaguide_experiments``) and the ROS 2 nodes (``dynaguide_ros``).

:mod:`dynaguide_cli.main` is the entry point (``dynaguide``, ``python -m dynaguide_cli``); each command group is one
module here with a ``register(subparsers)`` that adds its subcommands.
"""
