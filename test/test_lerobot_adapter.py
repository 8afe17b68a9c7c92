"""The LeRobot DiffusionPolicy adapter, against real LeRobot 0.4.x classes (tiny config, random weights).

A small real ``lerobot.policies.diffusion`` policy is built, saved with LeRobot's ``save_pretrained`` (weights
and pre/post-processors with their normalisation stats) and loaded back through the adapter.  Reference
results come from LeRobot's own code paths (``select_action`` with its observation queues,
``diffusion.conditional_sample``) on separately loaded copies of the same directory.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from dynaguide.diffusion import make_ddim_scheduler
from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
from dynaguide.guidance.goals import GuidanceConfig, GoalLatents
from dynaguide.guidance.objectives import DynaGuideObjective
from dynaguide.guidance.sampler import guided_ddim_sample
from dynaguide.interfaces import NoisePredictionPolicy
from dynaguide.policy.lerobot_adapter import (LEROBOT_TESTED_VERSION, LeRobotAdapterConfig, LeRobotDiffusionAdapter,
                                              ddim_config_from_lerobot, import_lerobot, load_policy)

try:
    LEROBOT_VERSION = import_lerobot()
except ImportError as exc:  # CI installs the extra (make install): there a missing LeRobot is a failure
    if os.environ.get("CI"):
        raise
    pytest.skip(f"LeRobot is not installed ({exc}); `make install` installs it", allow_module_level=True)

from lerobot.configs.types import FeatureType, PolicyFeature  # noqa: E402
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig  # noqa: E402
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy  # noqa: E402
from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors  # noqa: E402
from lerobot.processor import PolicyProcessorPipeline  # noqa: E402
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action  # noqa: E402
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE  # noqa: E402

P, A, T, TO, NA, IMG = 5, 3, 8, 2, 4, 32
CAMS = ("observation.images.front", "observation.images.wrist")
OURS = ("rgb_static", "rgb_gripper")
ACTION_MIN, ACTION_MAX = torch.tensor([-1.0, 0.0, -5.0]), torch.tensor([1.0, 2.0, 5.0])
STATE_MIN, STATE_MAX = -2 * torch.ones(P), 3 * torch.ones(P)


def _tiny_config(**overrides) -> DiffusionConfig:
    features = {OBS_STATE: PolicyFeature(FeatureType.STATE, (P,))}
    features.update({k: PolicyFeature(FeatureType.VISUAL, (3, IMG, IMG)) for k in CAMS})
    kwargs = dict(input_features=features, output_features={ACTION: PolicyFeature(FeatureType.ACTION, (A,))},
                  n_obs_steps=TO, horizon=T, n_action_steps=NA, down_dims=(16, 32), kernel_size=3, n_groups=4,
                  diffusion_step_embed_dim=16, spatial_softmax_num_keypoints=8, num_inference_steps=10,
                  pretrained_backbone_weights=None, device="cpu", push_to_hub=False)  # DDPM: LeRobot's default
    kwargs.update(overrides)
    return DiffusionConfig(**kwargs)


STATS = {OBS_STATE: {"min": STATE_MIN, "max": STATE_MAX},
         ACTION: {"min": ACTION_MIN, "max": ACTION_MAX},
         **{k: {"mean": torch.full((3, 1, 1), 0.4), "std": torch.full((3, 1, 1), 0.2)} for k in CAMS}}


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    """A real LeRobot DiffusionPolicy (random weights) written by LeRobot's own save_pretrained."""
    torch.manual_seed(0)
    config = _tiny_config()
    policy = DiffusionPolicy(config)
    pre, post = make_diffusion_pre_post_processors(config, dataset_stats=STATS)
    out = tmp_path_factory.mktemp("lerobot_policy")
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter(saved_dir):
    return LeRobotDiffusionAdapter.from_pretrained(saved_dir, image_keys=OURS)


def _lerobot_reference(saved_dir):
    """LeRobot's own loading path (as its eval scripts do): policy + processors, made DDIM like the adapter."""
    from diffusers import DDIMScheduler

    policy = DiffusionPolicy.from_pretrained(saved_dir)
    c = policy.config
    policy.diffusion.noise_scheduler = DDIMScheduler(
        num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end,
        beta_schedule=c.beta_schedule, clip_sample=c.clip_sample, clip_sample_range=c.clip_sample_range,
        prediction_type=c.prediction_type)
    pre = PolicyProcessorPipeline.from_pretrained(saved_dir, config_filename="policy_preprocessor.json")
    post = PolicyProcessorPipeline.from_pretrained(saved_dir, config_filename="policy_postprocessor.json",
                                                   to_transition=policy_action_to_transition,
                                                   to_output=transition_to_policy_action)
    return policy, pre, post


def _frames(n: int, batch: int = 1, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """n raw observations (images in [0, 1], state in raw units), each ``(batch, ...)``."""
    g = torch.Generator().manual_seed(seed)
    return [{OBS_STATE: STATE_MIN + (STATE_MAX - STATE_MIN) * torch.rand(batch, P, generator=g),
             **{k: torch.rand(batch, 3, IMG, IMG, generator=g) for k in CAMS}} for _ in range(n)]


def _our_obs(history: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Our observation dict from LeRobot-keyed frames, oldest first: ``(B, To, ...)`` per key."""
    obs = {ours: torch.stack([f[cam] for f in history], dim=1) for ours, cam in zip(OURS, CAMS)}
    obs["proprio"] = torch.stack([f[OBS_STATE] for f in history], dim=1)
    return obs


def test_loads_a_real_lerobot_checkpoint_and_maps_its_semantics(saved_dir, adapter):
    assert LEROBOT_VERSION == LEROBOT_TESTED_VERSION
    assert isinstance(adapter, NoisePredictionPolicy) and isinstance(adapter.policy, DiffusionPolicy)
    assert (adapter.horizon, adapter.action_dim, adapter.n_obs_steps, adapter.n_action_steps) == (T, A, TO, NA)
    assert adapter.action_offset == TO - 1  # LeRobot's chunk starts To-1 steps in the past
    spec = adapter.cfg
    assert spec.image_keys == OURS and spec.lerobot_image_keys == CAMS and spec.image_shape == (3, IMG, IMG)
    assert spec.proprio_dim == P and spec.trained_scheduler == "DDPM"
    # the schedule is explicitly DDIM, for LeRobot's own sampling and for ours, and the two are the same
    assert type(adapter.policy.diffusion.noise_scheduler).__name__ == "DDIMScheduler"
    assert adapter.policy.diffusion.num_inference_steps == spec.ddim.num_inference_steps == 10
    theirs, ours = adapter.policy.diffusion.noise_scheduler, make_ddim_scheduler(spec.ddim)
    theirs.set_timesteps(adapter.policy.diffusion.num_inference_steps)
    assert torch.equal(theirs.alphas_cumprod, ours.alphas_cumprod) and torch.equal(theirs.timesteps, ours.timesteps)
    # strict load: every weight of the saved policy, none left at its random init
    reference = DiffusionPolicy.from_pretrained(saved_dir)
    for (name, a), (_, b) in zip(adapter.policy.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    # 0 inference steps = the checkpoint's; an explicit count overrides it
    assert LeRobotDiffusionAdapter.from_pretrained(
        saved_dir, options=LeRobotAdapterConfig(num_inference_steps=5)).cfg.ddim.num_inference_steps == 5
    default_keys = load_policy("lerobot", saved_dir)
    assert isinstance(default_keys, LeRobotDiffusionAdapter) and default_keys.cfg.image_keys == ("front", "wrist")


def test_unguided_sampling_equals_lerobot_conditional_sample(saved_dir, adapter):
    policy, pre, _ = _lerobot_reference(saved_dir)
    policy.diffusion.num_inference_steps = adapter.cfg.ddim.num_inference_steps
    history = _frames(TO, batch=3, seed=1)
    # LeRobot's batch, built as select_action builds it: pre-process each frame, stack cameras, stack time
    frames = [pre(dict(f)) for f in history]
    batch = {OBS_STATE: torch.stack([f[OBS_STATE] for f in frames], dim=1),
             OBS_IMAGES: torch.stack([torch.stack([f[k] for k in CAMS], dim=-4) for f in frames], dim=1)}
    noise = torch.randn(3, T, A, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        global_cond = policy.diffusion._prepare_global_conditioning(batch)
        expected = policy.diffusion.conditional_sample(3, global_cond=global_cond, noise=noise.clone())
    cond = adapter.encode_observation(_our_obs(history))
    assert cond.shape == global_cond.shape and torch.allclose(cond, global_cond, atol=1e-6)
    ours = guided_ddim_sample(adapter, cond, None, scale=0.0, ddim=adapter.cfg.ddim, initial_noise=noise).actions
    assert ours.shape == (3, T, A)
    assert (ours - expected).abs().max().item() <= 1e-5
    # not vacuous: the chunks are neither clipped to ±1 nor alike across the batch
    assert (ours.abs() < 0.99).float().mean() > 0.9 and (ours[0] - ours[1]).abs().max() > 0.1


def test_chunks_equal_lerobot_select_action_with_its_observation_queue(saved_dir, adapter):
    """Two chunks of LeRobot's select_action (first: the queue padded with o_0; second after n_action_steps
    pops: o_{NA-1}, o_NA) equal our sampler on the same histories, executed from index action_offset."""
    policy, pre, post = _lerobot_reference(saved_dir)
    policy.reset()
    frames = _frames(2 * NA, seed=3)
    noises = [torch.randn(1, T, A, generator=torch.Generator().manual_seed(10 + i)) for i in range(2)]
    executed = []
    for step, frame in enumerate(frames):
        noise = noises[step // NA]  # used only when the action queue is empty (steps 0 and NA)
        executed.append(post(policy.select_action(pre(dict(frame)), noise=noise.clone())))
    executed = torch.cat(executed)  # (2 NA, A) raw units
    histories = [[frames[0]] * TO, frames[NA - TO + 1:NA + 1]]  # what the queues held at steps 0 and NA
    for i, history in enumerate(histories):
        cond = adapter.encode_observation(_our_obs(history))
        sample = guided_ddim_sample(adapter, cond, None, scale=0.0, ddim=adapter.cfg.ddim, initial_noise=noises[i])
        chunk = adapter.unnormalize_actions(sample.actions)[0]  # (T, A) raw
        start = adapter.action_offset
        assert (chunk[start:start + NA] - executed[i * NA:(i + 1) * NA]).abs().max().item() <= 1e-5


def _dynamics(tokens: int = 16, dim: int = 8) -> LatentDynamicsModel:
    torch.manual_seed(4)
    model = LatentDynamicsModel(LatentDynamicsConfig.cpu(embed_tokens=tokens, embed_dim=dim, pool=1, model_dim=32,
                                                         n_layers=1, n_heads=2, proprio_dim=P, action_dim=A,
                                                         horizon=T))
    model.set_normalizer_stats(ACTION_MIN, ACTION_MAX, STATE_MIN, STATE_MAX)
    return model.eval()


def test_guidance_through_the_adapter_steers_the_chunk(adapter):
    dynamics = _dynamics()
    dynamics.check_compatible_with(adapter)  # same horizon, action dim and action min/max as LeRobot's stats
    history = _frames(TO, seed=5)
    cond = adapter.encode_observation(_our_obs(history))
    g = torch.Generator().manual_seed(6)
    tokens, goal = torch.randn(1, 16, 8, generator=g), torch.randn(2, 16, 8, generator=g)
    guidance = GoalLatents(dynamics.outcome_latent(goal), None, GuidanceConfig(scale=8.0, sigma=5.0))
    objective = DynaGuideObjective(dynamics, tokens, history[-1][OBS_STATE], guidance,
                                   action_offset=adapter.action_offset)
    noise = torch.randn(1, T, A, generator=g)
    base = guided_ddim_sample(adapter, cond, objective, scale=0.0, ddim=adapter.cfg.ddim, initial_noise=noise)
    unguided = guided_ddim_sample(adapter, cond, None, scale=0.0, ddim=adapter.cfg.ddim, initial_noise=noise)
    assert torch.equal(base.actions, unguided.actions)  # s = 0 never touches the objective
    steered = guided_ddim_sample(adapter, cond, objective, scale=8.0, ddim=adapter.cfg.ddim, initial_noise=noise)
    assert torch.isfinite(steered.actions).all()
    assert (steered.actions - base.actions).abs().max().item() > 1e-3
    assert steered.objective.item() > base.objective.item()  # towards the goal: higher Eq. 2 score
    with pytest.raises(ValueError, match="min/max differ"):
        other = _dynamics()
        other.set_normalizer_stats(ACTION_MIN - 1, ACTION_MAX, STATE_MIN, STATE_MAX)
        other.check_compatible_with(adapter)


def test_runner_drives_the_adapter_like_our_own_policy(saved_dir, adapter):
    """GuidedPolicyRunner (the policy node's core) with the adapter: unguided = LeRobot select_action for the
    runner's noise; goal tokens steer it."""
    from dynaguide.guided_runner import GuidedPolicyRunner

    runner = GuidedPolicyRunner(adapter, _dynamics(), trained=True, seed=7)
    assert runner.action_offset == TO - 1
    rng = np.random.default_rng(8)
    images = {k: rng.integers(0, 256, (TO, IMG, IMG, 3), dtype=np.uint8) for k in OURS}
    proprio = rng.uniform(-2, 3, (TO, P)).astype(np.float32)
    result = runner.act(images, proprio, None)
    assert result.actions.shape == (T, A) and not result.guided
    # LeRobot on the same frames (uint8 → [0, 1] as the runner converts them) and the runner's first noise draw
    policy, pre, post = _lerobot_reference(saved_dir)
    frames = []
    for t in range(TO):
        frame = {cam: torch.as_tensor(images[ours][t]).permute(2, 0, 1).float() / 255.0
                 for ours, cam in zip(OURS, CAMS)}
        frame[OBS_STATE] = torch.as_tensor(proprio[t])
        frames.append(pre(frame))
    noise = torch.randn(1, T, A, generator=torch.Generator().manual_seed(7))
    policy.reset()
    policy.select_action(frames[0], noise=noise.clone())  # the observation queue now holds o_0 (padded)
    policy._queues[ACTION].clear()  # replan at the next step, as the runner does at every call
    first = policy.select_action(frames[1], noise=noise.clone())  # chunk from the queue [o_0, o_1]
    expected = post(torch.stack([first, *policy._queues[ACTION]], dim=1))[0]  # (NA, A) raw, executed part
    got = torch.as_tensor(result.actions)[runner.action_offset:runner.action_offset + NA]
    assert (got - expected).abs().max().item() <= 1e-5
    # guided: goal tokens through the runner's set_guidance path steer the chunk
    g = torch.Generator().manual_seed(9)
    runner.set_guidance_tokens(torch.randn(2, 16, 8, generator=g).numpy(), None,
                               runner.guidance_defaults.retuned(scale=8.0, sigma=5.0, stochastic_steps=1))
    steered = runner.act(images, proprio, torch.randn(16, 8, generator=g).numpy())
    assert steered.guided and np.isfinite(steered.actions).all()
    assert np.abs(steered.actions - result.actions).max() > 1e-3


def test_normalisation_round_trip_and_shapes(adapter):
    x = torch.rand(2, T, A) * 2 - 1
    raw = adapter.unnormalize_actions(x)
    assert raw.shape == (2, T, A)
    assert torch.allclose(adapter.normalize_actions(raw), x, atol=1e-5)
    assert torch.allclose(adapter.unnormalize_actions(-torch.ones(A)), ACTION_MIN, atol=1e-6)
    assert torch.allclose(adapter.unnormalize_actions(torch.ones(1, A)), ACTION_MAX[None], atol=1e-6)
    assert torch.allclose(adapter.action_normalizer.unnormalize(x), raw, atol=1e-5)  # our MinMax = LeRobot's
    obs = _our_obs(_frames(TO + 2, batch=2, seed=11))  # extra history: the last To steps are used
    batch = adapter.lerobot_batch(obs)
    assert batch[OBS_STATE].shape == (2, TO, P) and batch[OBS_IMAGES].shape == (2, TO, 2, 3, IMG, IMG)
    state = obs["proprio"][:, -TO:]
    assert torch.allclose(batch[OBS_STATE], 2 * (state - STATE_MIN) / (STATE_MAX - STATE_MIN) - 1, atol=1e-6)
    assert torch.allclose(batch[OBS_IMAGES][:, :, 1], (obs["rgb_gripper"][:, -TO:] - 0.4) / (0.2 + 1e-8), atol=1e-5)
    cond = adapter.encode_observation(obs)
    eps = adapter.predict_noise(torch.randn(4, T, A), torch.full((4,), 50, dtype=torch.long), cond[:1])
    assert eps.shape == (4, T, A)
    with pytest.raises(ValueError, match="time steps"):
        adapter.encode_observation({k: v[:, :1] for k, v in obs.items()})
    with pytest.raises(ValueError, match="missing"):
        adapter.encode_observation({"proprio": obs["proprio"]})
    with pytest.raises(ValueError, match="noisy_actions"):
        adapter.predict_noise(torch.randn(1, T + 1, A), torch.zeros(1, dtype=torch.long), cond[:1])


def test_image_size_mismatch_is_refused_or_resized(saved_dir, adapter):
    obs = _our_obs(_frames(TO, seed=12))
    big = {k: (torch.nn.functional.interpolate(v.flatten(0, 1), size=(48, 48)).unflatten(0, v.shape[:2])
               if v.ndim == 5 else v) for k, v in obs.items()}
    with pytest.raises(ValueError, match="trained on"):
        adapter.encode_observation(big)
    resizing = LeRobotDiffusionAdapter.from_pretrained(saved_dir, image_keys=OURS,
                                                       options=LeRobotAdapterConfig(resize_images=True))
    assert resizing.encode_observation(big).shape == adapter.encode_observation(obs).shape


def test_refuses_what_it_cannot_load_safely_or_exactly(saved_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        LeRobotDiffusionAdapter.from_pretrained("lerobot/diffusion_pusht")  # a hub id: nothing is downloaded
    # a processor step naming a class to import (instead of a registered step) is refused before LeRobot sees it
    bad = tmp_path / "bad"
    shutil.copytree(saved_dir, bad)
    spec = json.loads((bad / "policy_postprocessor.json").read_text())
    spec["steps"][0] = {"class": "subprocess.Popen", "config": {"args": ["true"]}}
    (bad / "policy_postprocessor.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="registered processor step"):
        LeRobotDiffusionAdapter.from_pretrained(bad)
    (bad / "policy_preprocessor.json").unlink()
    with pytest.raises(FileNotFoundError, match="policy_preprocessor.json"):
        LeRobotDiffusionAdapter.from_pretrained(bad)
    # schedules our DDIM sampler cannot reproduce exactly
    with pytest.raises(ValueError, match="epsilon"):
        ddim_config_from_lerobot(_tiny_config(prediction_type="sample"))
    with pytest.raises(ValueError, match="beta_start"):
        ddim_config_from_lerobot(_tiny_config(beta_schedule="linear", beta_start=0.001))
    assert ddim_config_from_lerobot(_tiny_config(beta_schedule="linear")).beta_schedule == "linear"
    assert ddim_config_from_lerobot(_tiny_config(num_inference_steps=None)).num_inference_steps == 100
    with pytest.raises(ValueError, match="policy kind"):
        load_policy("diffusers", saved_dir)


@pytest.mark.parametrize("jacobian", [False, True])
def test_rtc_prefix_is_honoured_through_the_adapter(adapter, jacobian):
    """Real-time chunking through a LeRobot policy (the same sampler): the frozen steps from the chunk's current
    step (action_offset = To − 1) on equal the previous chunk's, also with the VJP through LeRobot's U-Net."""
    from dynaguide.guidance.rtc import RTCConfig, prefix_weights, shift_prefix

    cond = adapter.encode_observation(_our_obs(_frames(TO, seed=7)))
    g = torch.Generator().manual_seed(8)
    previous = guided_ddim_sample(adapter, cond, None, scale=0.0, ddim=adapter.cfg.ddim, generator=g).actions
    shift, frozen = NA, adapter.action_offset + 2
    prefix = shift_prefix(previous, shift)
    out = guided_ddim_sample(adapter, cond, None, scale=0.0, ddim=adapter.cfg.ddim, generator=g, prefix=prefix,
                             prefix_weights=prefix_weights(T, frozen, T - shift),
                             rtc=RTCConfig(mode="hard", jacobian=jacobian)).actions
    assert torch.equal(out[:, :frozen], prefix[:, :frozen])
    assert torch.isfinite(out).all()
