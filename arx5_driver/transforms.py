"""Small rotation helpers (numpy only): rotation vectors, roll-pitch-yaw, quaternions.

Conventions
-----------
* Rotation matrices ``R (3, 3)`` map vectors from the rotated frame into the reference frame.
* Roll-pitch-yaw ``(roll, pitch, yaw)`` in rad is the URDF/KDL convention: ``R = Rz(yaw) @ Ry(pitch) @ Rx(roll)``.
  The ARX5 SDK's ``pose_6d`` is ``[x, y, z, roll, pitch, yaw]`` in this convention (checked against
  PyBullet in ``test/test_arx5_kinematics.py``).
* Rotation vector ``w (3,)`` in rad: axis ``w / |w|``, angle ``|w|``.
* Quaternions are ``(x, y, z, w)`` as in ROS ``geometry_msgs/Quaternion``.
"""

from __future__ import annotations

import numpy as np


def _skew(w: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


def rotvec_to_matrix(w: np.ndarray) -> np.ndarray:
    """Rotation vector ``(3,)`` rad → rotation matrix ``(3, 3)`` (Rodrigues)."""
    w = np.asarray(w, dtype=float).reshape(3)
    angle = float(np.linalg.norm(w))
    if angle < 1e-12:
        return np.eye(3) + _skew(w)
    k = _skew(w / angle)
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def matrix_to_rotvec(r: np.ndarray) -> np.ndarray:
    """Rotation matrix ``(3, 3)`` → rotation vector ``(3,)`` rad with angle in [0, pi]."""
    r = np.asarray(r, dtype=float)
    q = matrix_to_quaternion(r)  # (x, y, z, w), w >= 0
    s = float(np.linalg.norm(q[:3]))
    if s < 1e-12:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(s, q[3])
    return q[:3] / s * angle


def rpy_to_matrix(rpy: np.ndarray) -> np.ndarray:
    """``(roll, pitch, yaw)`` rad → ``Rz(yaw) @ Ry(pitch) @ Rx(roll)``."""
    roll, pitch, yaw = (float(v) for v in np.asarray(rpy, dtype=float).reshape(3))
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def matrix_to_rpy(r: np.ndarray) -> np.ndarray:
    """Rotation matrix → ``(roll, pitch, yaw)`` rad (inverse of :func:`rpy_to_matrix`, pitch in [-pi/2, pi/2])."""
    r = np.asarray(r, dtype=float)
    pitch = np.arctan2(-r[2, 0], np.hypot(r[0, 0], r[1, 0]))
    if np.hypot(r[0, 0], r[1, 0]) < 1e-9:  # gimbal lock: put everything into yaw
        return np.array([0.0, pitch, np.arctan2(-r[0, 1], r[1, 1])])
    return np.array([np.arctan2(r[2, 1], r[2, 2]), pitch, np.arctan2(r[1, 0], r[0, 0])])


def matrix_to_quaternion(r: np.ndarray) -> np.ndarray:
    """Rotation matrix ``(3, 3)`` → unit quaternion ``(x, y, z, w)`` with ``w >= 0``."""
    r = np.asarray(r, dtype=float)
    tr = np.trace(r)
    if tr > 0.0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = np.array([(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s])
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + r[i, i] - r[j, j] - r[k, k], 1e-300))
        q = np.empty(4)
        q[i] = 0.25 * s
        q[j] = (r[j, i] + r[i, j]) / s
        q[k] = (r[k, i] + r[i, k]) / s
        q[3] = (r[k, j] - r[j, k]) / s
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Quaternion ``(x, y, z, w)`` → rotation matrix ``(3, 3)``."""
    x, y, z, w = np.asarray(q, dtype=float).reshape(4) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
