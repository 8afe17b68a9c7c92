"""Experiments that reproduce the paper's results: BlockTouch (the paper's 2-D experiment, end to end) and the CALVIN
experiments (pipeline, batched harness, diagnostics).

A layer of their own: above the method core (``dynaguide``) and the simulator (``calvin_bridge``), below the ROS 2
nodes and the command line (their commands: :mod:`dynaguide_cli.blocktouch`, :mod:`dynaguide_cli.calvin`).
"""
