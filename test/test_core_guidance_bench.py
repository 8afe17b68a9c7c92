"""The benchmark's naive official-loop reference agrees with the batched guided sampler, and the CLI
parses/writes what it promises (the full benchmark itself is `dynaguide bench guidance`)."""

from __future__ import annotations

import json

import pytest
import torch

from dynaguide.bench import BenchSetup, bench_config, naive_official_guided_sample
from dynaguide_cli.main import build_parser, main
from dynaguide.diffusion import DDIMConfig
from dynaguide.guidance import DynaGuideObjective, GuidanceConfig, GoalLatents, guided_ddim_sample

T, A = 8, 3
FAST = DDIMConfig(num_inference_steps=2)


@pytest.fixture(scope="module")
def tiny_setup():
    from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
    from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig

    torch.manual_seed(0)
    policy = DiffusionPolicy(DiffusionPolicyConfig.cpu(image_size=32, proprio_dim=2, action_dim=A, horizon=T,
                                                       down_dims=(16, 32), num_keypoints=4, cnn_width=8,
                                                       step_embed_dim=16)).eval()
    dynamics = LatentDynamicsModel(LatentDynamicsConfig(embed_tokens=16, embed_dim=24, pool=2, model_dim=16,
                                                        n_layers=1, n_heads=2, ff_mult=2, proprio_dim=2,
                                                        action_dim=A, horizon=T)).eval()
    for m in (policy, dynamics):
        m.set_normalizer_stats(-torch.ones(A), torch.ones(A), -torch.ones(2), torch.ones(2))
    g = torch.Generator().manual_seed(1)
    batch = 2
    cond = torch.randn(batch, policy.cond_dim, generator=g)
    gset = GoalLatents.from_latents(torch.randn(10, 4, 24, generator=g), None,
                                    GuidanceConfig(sigma=2.0, scale=1.5, stochastic_steps=1))
    return BenchSetup("tiny", policy, dynamics, cond, torch.randn(batch, 16, 24, generator=g),
                      torch.randn(batch, 2, generator=g), gset, torch.randn(batch, T, A, generator=g))


def test_naive_reference_matches_batched_guided_sampler(tiny_setup):
    s = tiny_setup
    objective = DynaGuideObjective(s.dynamics, s.obs_tokens, s.proprio, s.guidance_set)
    batched = guided_ddim_sample(s.policy, s.cond, objective, scale=1.5, ddim=FAST, stochastic_steps=2,
                                 initial_noise=s.noise).actions
    unguided = guided_ddim_sample(s.policy, s.cond, None, scale=0.0, ddim=FAST, initial_noise=s.noise).actions
    for b in range(2):
        naive = naive_official_guided_sample(s.policy, s.cond[b : b + 1], s.dynamics, s.obs_tokens[b : b + 1],
                                             s.proprio[b : b + 1], s.guidance_set, scale=1.5, stochastic_steps=2,
                                             initial_noise=s.noise[b : b + 1], ddim=FAST)
        assert not naive.requires_grad
        torch.testing.assert_close(batched[b : b + 1], naive, rtol=1e-5, atol=1e-5)
    assert (batched - unguided).abs().max() > 1e-3  # guidance is not a no-op here


class LinearNoisePolicy(torch.nn.Module):
    """A cheap real epsilon network (linear in chunk and cond) for timing-plumbing tests."""

    def __init__(self, cond_dim: int):
        super().__init__()
        self.horizon, self.action_dim = T, A
        self.mix = torch.nn.Linear(A + cond_dim, A)

    def predict_noise(self, noisy_actions, timesteps, cond):
        return self.mix(torch.cat([noisy_actions, cond[:, None, :].expand(-1, T, -1)], dim=-1))


def test_bench_config_reports_the_promised_fields(tiny_setup):
    torch.manual_seed(0)
    setup = BenchSetup(**{**tiny_setup.__dict__, "policy": LinearNoisePolicy(tiny_setup.cond.shape[1])})
    row = bench_config(setup, repeats=1, ddim=FAST)
    assert {"guided_ms", "unguided_ms", "naive_guided_ms", "speedup_vs_naive", "max_abs_diff_vs_naive"} <= set(row)
    assert row["batch"] == 2 and row["max_abs_diff_vs_naive"] < 1e-4
    assert row["speedup_vs_naive"] == pytest.approx(row["naive_guided_ms"] / row["guided_ms"])
    assert all(row[k] > 0 for k in ("guided_ms", "unguided_ms", "naive_guided_ms"))
    # the naive loop keeps every step's activations; the guided sampler only one objective graph
    assert row["naive_peak_saved_mb_per_chunk"] > row["guided_peak_saved_mb"] / row["batch"] > 0


def test_cli_parses_bench_options():
    args = build_parser(["bench", "guidance"]).parse_args(
        ["bench", "guidance", "--configs", "cpu", "--batch", "1,8", "--repeats", "2", "--json", "x.json"])
    assert args.configs == ["cpu"] and args.batch == [1, 8] and args.repeats == 2 and args.json == "x.json"
    with pytest.raises(SystemExit):
        build_parser(["bench", "guidance"]).parse_args(["bench", "guidance", "--configs", "gpu"])


@pytest.mark.slow
def test_cli_end_to_end_cpu_config(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "guidance", "--configs", "cpu", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"cpu"} and data["cpu"]["max_abs_diff_vs_naive"] < 1e-4
