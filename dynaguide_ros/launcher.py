"""``dynaguide launch GRAPH`` — the pip user's ``ros2 launch``.

Starts the nodes of :data:`dynaguide_ros.graphs.GRAPHS` as separate processes with the parameters of
the same YAML file the ROS launch files use, prefixes their output with the node name, restarts a
node that crashes (at most ``max_restarts`` times within any ``restart_window_s``; past that budget it
stops the whole graph and exits non-zero with the reason), and shuts everything down cleanly on
Ctrl-C / SIGTERM (SIGINT to each node, then SIGKILL after a grace period); a node also ends when the launcher
is killed (:func:`dynaguide_ros.run_node.end_with_launcher`).  Localhost-only DDS discovery is
set for every child unless the user opted into a robot network (see :mod:`dynaguide_ros.ros_env`).

Before anything starts, every parameter of the files and of ``--set`` is checked against the node's typed
config (a misspelt key is an error naming the closest valid one), and the real-arm rule of
:func:`dynaguide_ros.graphs.real_arm_refusal` is applied.  A node that exits with
:data:`dynaguide_ros.node_main.EXIT_CONFIG` (its configuration cannot work) is not restarted: the graph stops
with that exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from dynaguide.config import ConfigError
from dynaguide_ros.graphs import (GRAPHS, GraphSpec, NodeSpec, config_class,
                                  real_arm_refusal)
from dynaguide_ros.node_main import EXIT_CONFIG
from dynaguide_ros.paths import config_path
from dynaguide_ros.run_node import LAUNCHER_PID_ENV
from dynaguide_ros.ros_env import localhost_env


def _flatten(section: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_params(files: list[Path]) -> dict[str, dict[str, Any]]:
    """``{node: {dotted.param: value}}`` from ROS 2 parameter files, later files overriding earlier ones."""
    merged: dict[str, dict[str, Any]] = {}
    for f in files:
        try:
            data = yaml.safe_load(Path(f).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read parameters file {f}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{f}: expected a mapping of node names")
        for node, section in data.items():
            params = (section or {}).get("ros__parameters") if isinstance(section, dict) else None
            if not isinstance(params, dict):
                raise ConfigError(f"{f}: section {node!r} needs a 'ros__parameters:' mapping")
            merged.setdefault(str(node).lstrip("/"), {}).update(_flatten(params))
    return merged


def check_graph_params(spec: GraphSpec, params: dict[str, dict[str, Any]], where: str) -> None:
    """Raise :class:`ConfigError` for a node section or a parameter that the graph does not have."""
    from dynaguide_ros.params import check_parameters

    by_name = {n.name: n for n in spec.nodes}
    known = set(by_name) | {n.name for g in GRAPHS.values() for n in g.nodes} | {"**"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown node(s) {unknown}; nodes of this graph: {sorted(by_name)}")
    for name, node in by_name.items():
        if name in params:
            check_parameters(name, config_class(node.executable), params[name])


def node_command(spec: NodeSpec, params_files: list[Path]) -> list[str]:
    cmd = [sys.executable, "-m", "dynaguide_ros.run_node", spec.executable, "--ros-args", "-r", f"__node:={spec.name}"]
    for f in params_files:
        cmd += ["--params-file", str(f)]
    for src, dst in spec.remappings:
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


@dataclass
class _Managed:
    spec: NodeSpec
    proc: subprocess.Popen | None = None
    restarts: int = 0                                          # in total
    recent: deque = field(default_factory=deque)               # monotonic times of restarts in the window
    gave_up: bool = False


class GraphLauncher:
    """Run a graph; ``overrides`` = ``{node_name: {param: value}}`` layered over the YAML file."""

    def __init__(self, graph: str | GraphSpec, params_file: str | Path | None = None,
                 overrides: dict[str, dict[str, Any]] | None = None, max_restarts: int = 3,
                 env: dict[str, str] | None = None, out: TextIO | None = None, only: list[str] | None = None,
                 restart_window_s: float = 60.0) -> None:
        self.spec = GRAPHS[graph] if isinstance(graph, str) else graph
        self.params_files = ([Path(params_file)] if params_file else
                             [config_path(name) for name in self.spec.params_files])
        overrides = overrides or {}
        unknown_nodes = sorted(set(overrides) - {n.name for n in self.spec.nodes})
        if unknown_nodes:
            raise ConfigError(f"--set: unknown node(s) {unknown_nodes}; nodes of this graph: "
                              f"{sorted(n.name for n in self.spec.nodes)}")
        self.params = read_params(self.params_files)
        check_graph_params(self.spec, self.params, ", ".join(map(str, self.params_files)))
        check_graph_params(self.spec, overrides, "--set")
        for node, values in overrides.items():
            self.params.setdefault(node, {}).update(values)
        refusal = real_arm_refusal({n.name: self.params.get(n.name, {}) for n in self.spec.nodes})
        if refusal:
            raise ConfigError(refusal)
        self._tmp = None
        if overrides:
            self._tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="dynaguide-overrides-", delete=False)
            yaml.safe_dump({n: {"ros__parameters": p} for n, p in overrides.items()}, self._tmp)
            self._tmp.close()
            self.params_files.append(Path(self._tmp.name))
        self.env = env if env is not None else localhost_env()
        self.max_restarts = max_restarts
        self.restart_window_s = float(restart_window_s)
        self.failure: str | None = None  # why the graph was given up, once a node ran out of restarts
        self.failure_code = 1
        self.out = out or sys.stdout
        self._print_lock = threading.Lock()
        nodes = [n for n in self.spec.nodes if only is None or n.name in only]
        self.nodes = {n.name: _Managed(n) for n in nodes}
        self._stopping = threading.Event()

    # ----------------------------------------------------------------------------- processes
    def _pump(self, name: str, stream) -> None:
        for raw in iter(stream.readline, b""):
            with self._print_lock:
                self.out.write(f"[{name}] {raw.decode(errors='replace')}")
                self.out.flush()

    def _spawn(self, m: _Managed) -> None:
        env = {**self.env, LAUNCHER_PID_ENV: str(os.getpid())}   # the node ends with this process (run_node)
        m.proc = subprocess.Popen(node_command(m.spec, self.params_files), env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._pump, args=(m.spec.name, m.proc.stdout), daemon=True).start()

    def log(self, text: str) -> None:
        with self._print_lock:
            self.out.write(f"[launch] {text}\n")
            self.out.flush()

    def start(self) -> GraphLauncher:
        for m in self.nodes.values():
            self._spawn(m)
            self.log(f"started {m.spec.name} (pid {m.proc.pid})")
        return self

    def poll(self) -> None:
        """Restart crashed nodes: at most ``max_restarts`` each within any ``restart_window_s``; a node past
        that budget is given up (``failure`` says why; :meth:`run` then stops the graph)."""
        for m in self.nodes.values():
            if self._stopping.is_set() or m.gave_up or m.proc is None or m.proc.poll() is None:
                continue
            code = m.proc.returncode
            if code == EXIT_CONFIG:  # its configuration cannot work: a restart would fail the same way
                m.gave_up = True
                self.failure = (f"{m.spec.name} cannot start with its configuration (exit code {code}; its reason "
                                "is the line above): not restarted")
                self.failure_code = EXIT_CONFIG
                self.log(self.failure)
                continue
            now = time.monotonic()
            while m.recent and now - m.recent[0] > self.restart_window_s:
                m.recent.popleft()
            if len(m.recent) >= self.max_restarts:
                m.gave_up = True
                self.failure = (f"{m.spec.name} exited with {code} after {len(m.recent)} restarts within "
                                f"{self.restart_window_s:g} s (budget {self.max_restarts}): giving up")
                self.log(self.failure)
                continue
            m.recent.append(now)
            m.restarts += 1
            self.log(f"{m.spec.name} exited with {code}; restarting ({len(m.recent)}/{self.max_restarts}) "
                     f"[budget per {self.restart_window_s:g} s; {m.restarts} restarts in total]")
            time.sleep(min(0.5 * len(m.recent), 2.0))
            self._spawn(m)

    def restart(self, name: str) -> None:
        """Stop one node cleanly and start it again (not counted as a crash)."""
        m = self.nodes[name]
        self._stop_one(m)
        self._spawn(m)
        self.log(f"restarted {name} (pid {m.proc.pid})")

    def _stop_one(self, m: _Managed, grace: float = 10.0) -> None:
        if m.proc is None or m.proc.poll() is not None:
            return
        try:
            os.killpg(m.proc.pid, signal.SIGINT)
            m.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.log(f"{m.spec.name} did not stop in {grace} s: killing")
            os.killpg(m.proc.pid, signal.SIGKILL)
            m.proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self._stopping.set()
        threads = [threading.Thread(target=self._stop_one, args=(m,)) for m in self.nodes.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self._tmp is not None:
            Path(self._tmp.name).unlink(missing_ok=True)
        self.log("all nodes stopped")

    def running(self) -> dict[str, bool]:
        return {n: (m.proc is not None and m.proc.poll() is None) for n, m in self.nodes.items()}

    def run(self, duration: float | None = None) -> int:
        """Start, supervise until Ctrl-C/SIGTERM (or ``duration`` seconds), stop.  Returns 0 on a clean run,
        1 when a node ran out of restarts — then the whole graph is stopped at once (no dead graph left)."""
        previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        # Ctrl-C even where SIGINT came ignored: a shell starts background jobs (`dynaguide launch ... &` in a
        # script, CI) with SIGINT ignored, and Python then never raises KeyboardInterrupt for it
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        self.start()
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while deadline is None or time.monotonic() < deadline:
                self.poll()
                if self.failure is not None:
                    self.log(f"FATAL: {self.failure}; stopping the graph (exit code {self.failure_code})")
                    sys.stderr.write(f"dynaguide launch: {self.failure}; graph stopped\n")
                    return self.failure_code
                time.sleep(0.2)
        except KeyboardInterrupt:
            self.log("shutting down")
        finally:
            self.stop()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
        return 0 if not any(m.gave_up for m in self.nodes.values()) else 1


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--set NODE.PARAM=VALUE`` items → ``{node: {param: value}}`` (YAML values)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        node, dot, param = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set expects NODE.PARAM=VALUE, got {item!r}")
        out.setdefault(node, {})[param] = yaml.safe_load(value)
    return out
