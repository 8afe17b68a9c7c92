"""Shared pytest fixtures.

ROS tests talk over real DDS between real processes.  The network rule holds for every process a test
starts: localhost-only discovery, the shipped loopback Fast DDS profile, and one ``ROS_DOMAIN_ID`` per
test run (derived from the pid, so concurrent runs on one machine do not see each other).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynaguide.torchvision_compat import ensure_torchvision_importable

# Test modules import transformers directly; with the LeRobot extra's torchvision installed that import needs
# torchvision's op schemas declared first (dynaguide/torchvision_compat.py).
ensure_torchvision_importable()

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Before anything imports rclpy: this process and every child get the localhost defaults.
try:
    from dynaguide_ros.ros_env import apply_localhost_defaults

    apply_localhost_defaults(os.environ)
    os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
except Exception:  # pragma: no cover - dynaguide_ros not importable: ROS tests will skip
    pass


def _ros_available() -> str | None:
    try:
        import rclpy  # noqa: F401

        import dynaguide_msgs.msg  # noqa: F401
    except Exception as exc:  # ImportError, or a broken library path
        return f"rclpy / dynaguide_msgs not importable ({exc}); run 'make install'"
    return None


def pytest_collection_modifyitems(config, items):
    reason = None
    for item in items:
        if "ros" in item.keywords:
            reason = reason or _ros_available()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


class ManagedProcess:
    """A child process with its output in a log file; stopped with SIGINT, then SIGKILL."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=REPO, start_new_session=True)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited ({self.proc.returncode}) before logging {text!r}:\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {text!r} in the log of {self.args}:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_process(tmp_path):
    """``start_process(name, *args)`` runs ``python -m dynaguide_cli *args`` (or a raw argv list)."""
    started: list[ManagedProcess] = []

    def _start(name: str, *args: str, argv: list[str] | None = None,
               env: dict[str, str] | None = None) -> ManagedProcess:
        full = argv if argv is not None else [sys.executable, "-m", "dynaguide_cli", *args]
        proc = ManagedProcess(full, tmp_path / f"{name}.log", env=dict(os.environ if env is None else env))
        started.append(proc)
        return proc

    yield _start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def calvin_assets_dir() -> Path:
    path = SHARED / "calvin_assets"
    if not path.is_dir():
        pytest.skip(f"real CALVIN assets not present at {path}")
    return path


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """Tiny tensors on a 2-core machine that also runs the nodes under test: one intra-op thread is
    ~10x faster than two when the cores are contended."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
