"""argparse helpers shared by the command modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable


class LazyDefaultsParser(argparse.ArgumentParser):
    """An argument parser whose ``lazy_defaults()`` (a dict for :meth:`set_defaults`) is called when it first
    parses: defaults that live in a module importing torch (:class:`dynaguide.guidance.GuidanceConfig`) are read
    only when their command runs, not when ``dynaguide --help`` builds every parser."""

    def __init__(self, *args, lazy_defaults: Callable[[], dict] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lazy_defaults = lazy_defaults

    def parse_known_args(self, args=None, namespace=None):
        if self._lazy_defaults is not None:
            self.set_defaults(**self._lazy_defaults())
            self._lazy_defaults = None
        return super().parse_known_args(args, namespace)
