"""The shipped ``config/arx5.yaml`` builds a valid :class:`DriverConfig` (strict keys), and bad values fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from arx5_driver.config import DriverConfig, SafetyConfig
from dynaguide.config import ConfigError, from_dict, load_yaml

CONFIG = Path(__file__).resolve().parents[1] / "config" / "arx5.yaml"


def test_shipped_yaml_is_a_valid_driver_config():
    params = load_yaml(CONFIG)["arx5_driver"]["ros__parameters"]
    cfg = from_dict(DriverConfig, params)  # unknown keys would raise
    assert cfg.model == "X5" and cfg.backend == "sim" and cfg.can_interface == "can0"
    assert isinstance(cfg.safety, SafetyConfig) and cfg.safety.watchdog_hold_s == 0.5
    assert cfg.joint_state_rate_hz >= 100


@pytest.mark.parametrize("change, match", [
    ({"model": ""}, "model is required"),
    ({"model": "X9"}, "unsupported model"),
    ({"backend": "gazebo"}, "backend"),
    ({"joint_state_rate_hz": 50.0}, ">= 100"),
    ({"safety": {"table_z_m": 0.7}}, "workspace_z_max_m"),
    ({"safety": {"typo_key": 1.0}}, "unknown key"),
])
def test_bad_config_values_fail_clearly(change, match):
    params = dict(load_yaml(CONFIG)["arx5_driver"]["ros__parameters"])
    params.update(change)
    with pytest.raises(ConfigError, match=match):
        from_dict(DriverConfig, params)
