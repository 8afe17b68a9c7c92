"""QoS profiles used across the graph."""

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

SENSOR = qos_profile_sensor_data
"""Camera images: best effort, keep last 5."""

LATCHED = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""Guidance set/state: late joiners get the last message."""

RELIABLE = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)


def service_qos(depth: int = 100) -> QoSProfile:
    """Services that may see bursts: the default (depth 10) silently drops requests beyond ten waiting ones.

    Use the same profile on the client side when one client sends many requests at once."""
    return QoSProfile(depth=int(depth), history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
