"""Guidance defaults have one source (``GuidanceConfig``): the manager, ``dynaguide bench guidance``, the graphs'
YAML and ``dynaguide demo`` take them from it (a graph may set another value for its models, never a copy)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _yaml(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def _parse(register, *argv):
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(list(argv))


def test_guidance_defaults_have_one_source():
    from dynaguide_cli.bench import register as bench_register
    from dynaguide.guidance.goals import GuidanceConfig
    from dynaguide_ros.guidance_manager_node import GuidanceManagerConfig

    g = GuidanceConfig()
    assert g.stochastic_mode == "renoise"
    m = GuidanceManagerConfig()
    assert (m.default_scale, m.default_sigma, m.default_stochastic_steps) == (g.scale, g.sigma, g.stochastic_steps)
    bench = _parse(bench_register, "bench", "guidance")
    assert (bench.scale, bench.sigma, bench.stochastic_steps) == (g.scale, g.sigma, g.stochastic_steps)
    defaults = {"default_scale": g.scale, "default_sigma": g.sigma, "default_stochastic_steps": g.stochastic_steps,
                "runner.guidance.scale": g.scale, "runner.guidance.sigma": g.sigma,
                "runner.guidance.stochastic_steps": g.stochastic_steps}
    for name in ("calvin_sim.yaml", "real_arx5.yaml"):  # no second copy of the defaults in the graphs' YAML
        params = {k: v for node in _yaml(name).values() for k, v in node["ros__parameters"].items()}
        # a graph may configure another value for its models (calvin_sim: the protocol's s = 10), never repeat one
        copies = {k for k in set(defaults) & set(params) if params[k] == defaults[k]}
        assert not copies, f"{name} repeats guidance defaults: {copies}"
        assert params.get("runner.guidance.stochastic_mode", g.stochastic_mode) == "renoise", name


def test_demo_sends_the_managers_defaults_unless_told():
    from dynaguide_cli.ros import register_demo as register

    args = _parse(register, "demo")
    # no scale (None) and 0 for sigma/M keep the manager's values, i.e. GuidanceConfig's; --scale 0 means s = 0
    assert (args.scale, args.sigma, args.stochastic_steps) == (None, 0.0, 0)
    assert _parse(register, "demo", "--scale", "0").scale == 0.0
