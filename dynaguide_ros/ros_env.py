"""Localhost-only DDS by default (the project's network rule).

Every process that uses rclpy — nodes, the launcher, tests, CI, demos — calls
:func:`apply_localhost_defaults` (or builds its children's environment with :func:`localhost_env`)
*before* ``rclpy.init``.  The defaults:

* ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` — discovery never leaves this machine;
* ``FASTDDS_DEFAULT_PROFILES_FILE`` = the shipped loopback profile (16 MiB shared memory, UDP on
  127.0.0.1 only, loopback discovery peers);
* ``RMW_IMPLEMENTATION=rmw_fastrtps_cpp``.

A real robot network is an explicit opt-in: set ``DYNAGUIDE_ROBOT_NETWORK=1`` and configure
``ROS_AUTOMATIC_DISCOVERY_RANGE`` / your own ``FASTDDS_DEFAULT_PROFILES_FILE`` yourself; only then are
the user's values kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from dynaguide_ros.paths import config_path

ROBOT_NETWORK_OPT_IN = "DYNAGUIDE_ROBOT_NETWORK"


def _opted_in(env: Mapping[str, str]) -> bool:
    return env.get(ROBOT_NETWORK_OPT_IN, "").strip().lower() in ("1", "true", "yes")


def localhost_env(base: Mapping[str, str] | None = None, domain_id: int | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) with the localhost DDS defaults applied."""
    env = dict(os.environ if base is None else base)
    apply_localhost_defaults(env)
    if domain_id is not None:
        if not 0 <= int(domain_id) <= 101:
            raise ValueError(f"ROS_DOMAIN_ID must be in 0..101, got {domain_id}")
        env["ROS_DOMAIN_ID"] = str(int(domain_id))
    return env


def apply_localhost_defaults(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Apply the defaults in place (to ``os.environ`` when ``env`` is None) and return the mapping."""
    env = os.environ if env is None else env
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if _opted_in(env):
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
        return env
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(config_path("fastdds_localhost.xml"))
    env.pop("ROS_STATIC_PEERS", None)
    return env
