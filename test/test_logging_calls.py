"""No deprecated ``Logger.warn`` anywhere in the packages, tests or launch files."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dynaguide", "calvin_bridge", "dynaguide_experiments", "dynaguide_ros", "dynaguide_cli", "arx5_driver")


def test_no_deprecated_logger_warn_anywhere():
    """rclpy Kilted's ``Logger.warn`` is a deprecated wrapper: every ``.warn(`` of a process shares one
    call site for throttling, and two different throttle arguments kill the node (ValueError)."""
    pattern = re.compile(r"(get_logger\(\)|logger|_log)\.warn" + r"\(")  # split: this file does not match
    offenders = [f"{path.relative_to(REPO)}:{i}" for pkg in PACKAGES + ("test", "launch")
                 for path in sorted((REPO / pkg).rglob("*.py"))
                 for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, f"use .warning(...), not .warn(...): {offenders}"
