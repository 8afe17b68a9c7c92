"""Experiments that reproduce the paper's results with the ``dynaguide`` method core.

Each experiment is a subpackage with its own ``cli.py`` registered in :mod:`dynaguide.cli`.
"""
