"""Steer an off-the-shelf LeRobot ``DiffusionPolicy``: an adapter to our ``NoisePredictionPolicy`` protocol.

LeRobot (0.4.x, checked against 0.4.4) saves a diffusion policy with ``save_pretrained`` as a directory::

    config.json                      DiffusionConfig (draccus JSON, ``"type": "diffusion"``)
    model.safetensors                weights
    policy_preprocessor.json         rename → add batch dim → device → NormalizerProcessorStep
    policy_preprocessor_step_3_normalizer_processor.safetensors      normalisation stats
    policy_postprocessor.json        UnnormalizerProcessorStep → device (cpu)
    policy_postprocessor_step_0_unnormalizer_processor.safetensors   the same stats

:meth:`LeRobotDiffusionAdapter.from_pretrained` loads such a directory with LeRobot's own classes
(``DiffusionPolicy.from_pretrained(dir, strict=True)``, ``PolicyProcessorPipeline.from_pretrained``) — JSON and
safetensors only, nothing is unpickled — and maps it onto our two-call protocol:

* ``encode_observation(obs)`` — our observation dict (camera key → ``(B, To, 3, H, W)`` in [0, 1],
  ``"proprio"`` → ``(B, To, P)`` raw) is split into To frames, each frame goes through LeRobot's
  pre-processor (its normalisation, exactly as ``select_action`` callers do it), the frames are stacked the
  way ``DiffusionPolicy.select_action``'s queues stack them, and
  ``policy.diffusion._prepare_global_conditioning`` gives the conditioning ``(B, cond_dim)``.
* ``predict_noise(x, t, cond)`` — ``policy.diffusion.unet(x, t, global_cond=cond)``, ε for ``x (B, T, A)``
  in LeRobot's normalised action space.
* ``unnormalize_actions`` / ``normalize_actions`` — LeRobot's post-/pre-processor on actions.

Observation queue and chunk timing (LeRobot's convention, kept as is): at control step t the policy sees
``o_{t-To+1} … o_t`` (before To observations exist, the first one is repeated — ``populate_queues``; our
policy node pads its history the same way) and predicts ``horizon`` actions for steps
``t-To+1 … t-To+horizon``.  The action for *now* is chunk index ``To − 1``: that is
:attr:`LeRobotDiffusionAdapter.action_offset`, the first step LeRobot executes (it executes
``chunk[To-1 : To-1+n_action_steps]``) and the first step fed to the dynamics model.

Noise scheduler: LeRobot trains with DDPM by default; our guided sampler is DDIM (η = 0), which is valid for
any ε-prediction model trained on the same β schedule.  The adapter makes this explicit: :attr:`ddim`
(our :class:`~dynaguide.diffusion.DDIMConfig`) is derived from the LeRobot config (same β schedule, clipping,
train timesteps) and the wrapped policy's own ``diffusion.noise_scheduler`` is replaced by the equal
``DDIMScheduler``, so LeRobot's ``select_action``/``conditional_sample`` and our sampler run the same
schedule (the tests check they agree to 1e-5 for the same noise).  Schedules our ``DDIMConfig`` cannot
express (β range other than diffusers' default with a linear schedule, ``clip_sample_range`` ≠ 1,
``prediction_type="sample"``) are refused with a ``ValueError``.

Importing LeRobot 0.4.4 next to this stack (torch 2.13 CPU, transformers 5) needs two import-time
workarounds, both in :func:`import_lerobot` and both harmless for the diffusion policy:

1. PyPI's torchvision 0.28 wheel is built against CUDA torch; with the CPU torch its compiled ops do not
   load, and its ``_meta_registrations`` then fails on ``register_fake("torchvision::nms")``.  We declare
   the two op schemas it registers fakes for (``nms``, ``qnms``) so the import completes; torchvision's
   models and transforms (pure Python: the ResNet backbone, resize/crop) are unaffected, and calling
   ``torchvision.ops.nms`` still fails loudly (no kernel).
2. ``lerobot/policies/__init__.py`` imports every policy's config, and GR00T's config class cannot be
   defined with transformers 5 (``TypeError: non-default argument 'backbone_cfg' follows default
   argument``).  If that import fails, ``lerobot.policies`` is set up as a bare package so that its
   ``diffusion`` subpackage imports on its own; in an environment where the import works it is used as is.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynaguide.checkpoint import model_skeleton
from dynaguide.diffusion import DDIMConfig
from dynaguide.inputs import check_finite_tensors, check_state_dict_matches, confined_file, safetensors_header
from dynaguide.normalization import MinMaxNormalizer

logger = logging.getLogger(__name__)

LEROBOT_TESTED_VERSION = "0.4.4"
"""The LeRobot release this adapter was written and tested against (names drift between releases)."""

POLICY_KINDS: tuple[str, ...] = ("dynaguide", "lerobot")
"""Values of the ``kind`` argument of :func:`load_policy`."""

PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"

# diffusers' DDIMScheduler defaults, which our DDIMConfig / make_ddim_scheduler leave in place
_DIFFUSERS_BETA_START, _DIFFUSERS_BETA_END, _DIFFUSERS_CLIP_RANGE = 0.0001, 0.02, 1.0
_SCHEDULES_WITHOUT_BETA_RANGE = ("squaredcos_cap_v2",)

# ------------------------------------------------------------------------------------------- importing
_version_warned = False
import_notes: list[str] = []
"""What :func:`import_lerobot` had to work around in this process (empty when nothing)."""


def _import_torchvision() -> Any:
    """``import torchvision`` through :func:`dynaguide.torchvision_compat.ensure_torchvision_importable`."""
    from dynaguide import torchvision_compat

    module = torchvision_compat.ensure_torchvision_importable()
    if module is None:
        raise ModuleNotFoundError("torchvision is not installed (LeRobot's diffusion policy needs it: "
                                  "pip install -e '.[lerobot]')")
    import_notes.extend(n for n in torchvision_compat.notes if n not in import_notes)
    return module


def _import_lerobot_policies_package() -> None:
    """Make ``lerobot.policies`` importable even when its ``__init__`` (all policies' configs) fails."""
    if "lerobot.policies" in sys.modules:
        return
    import lerobot

    try:
        import lerobot.policies  # noqa: F401

        return
    except Exception as exc:  # TypeError from GR00T's config under transformers 5, or a missing optional dep
        reason = f"{type(exc).__name__}: {exc}"
    # Submodules that imported fine before the failure (e.g. diffusion.configuration_diffusion, with its
    # draccus registration) stay in sys.modules and are reused, so nothing is registered twice.
    spec = importlib.machinery.ModuleSpec("lerobot.policies", None, is_package=True)
    spec.submodule_search_locations = [str(Path(lerobot.__file__).parent / "policies")]
    package = importlib.util.module_from_spec(spec)
    sys.modules["lerobot.policies"] = package
    lerobot.policies = package
    import_notes.append(f"lerobot.policies/__init__ failed ({reason}); imported lerobot.policies.diffusion on its own")


def import_lerobot() -> str:
    """Import LeRobot's diffusion policy and processors (applying the workarounds in the module docstring).

    Returns:
        the installed LeRobot version.  Raises ``ImportError`` when LeRobot (or a dependency of its
        diffusion policy) is missing: ``pip install -e '.[lerobot]' && pip install --no-deps lerobot==0.4.4``.
    """
    _import_torchvision()
    import lerobot

    _import_lerobot_policies_package()
    import lerobot.policies.diffusion.modeling_diffusion  # noqa: F401
    import lerobot.policies.diffusion.processor_diffusion  # noqa: F401
    import lerobot.processor  # noqa: F401

    global _version_warned
    version = getattr(lerobot, "__version__", "unknown")
    if version != LEROBOT_TESTED_VERSION and not _version_warned:
        _version_warned = True
        logger.warning("LeRobot %s is installed; this adapter was tested with %s", version, LEROBOT_TESTED_VERSION)
    return version


# --------------------------------------------------------------------------------------------- config
@dataclass
class LeRobotAdapterConfig:
    """Options for wrapping a LeRobot DiffusionPolicy (ROS-parameter friendly: no ``None``, no empty tuples).

    Attributes:
        num_inference_steps: DDIM steps per chunk; 0 = the checkpoint's ``num_inference_steps``, or its
            ``num_train_timesteps`` when that is unset (LeRobot's own rule).
        device: torch device the policy runs on (LeRobot's config ``device`` is overridden by this).
        resize_images: frames whose size differs from the checkpoint's image features are resized
            (bilinear, antialiased) when True; otherwise such frames raise ``ValueError``.  Ignored when the
            LeRobot config resizes inside the model (``resize_shape`` set).
        proprio_key: our observation key holding ``observation.state``.
        env_state_key: our observation key holding ``observation.environment_state`` (if the policy uses it).
    """

    num_inference_steps: int = 0
    device: str = "cpu"
    resize_images: bool = False
    proprio_key: str = "proprio"
    env_state_key: str = "environment_state"

    def __post_init__(self) -> None:
        if self.num_inference_steps < 0:
            raise ValueError(f"num_inference_steps must be >= 0 (0 = the checkpoint's), got {self.num_inference_steps}")


@dataclass
class LeRobotPolicySpec:
    """How one loaded LeRobot checkpoint maps onto our conventions (the adapter's ``cfg``).

    Attributes:
        image_keys: our camera keys, one per LeRobot image feature, in the checkpoint's order.
        lerobot_image_keys: the LeRobot feature names (``observation.images.<name>``) they feed.
        image_shape: ``(3, H, W)`` the checkpoint's image features have.
        proprio_dim: P, size of ``observation.state``.
        env_state_dim: size of ``observation.environment_state`` (0: not used).
        action_dim: A.  horizon: T, chunk length.  n_obs_steps: To.  n_action_steps: actions LeRobot executes.
        action_offset: chunk index of the current step (To − 1).
        ddim: the DDIM schedule both our sampler and the wrapped policy use.
        trained_scheduler: ``noise_scheduler_type`` recorded in the checkpoint ("DDPM" or "DDIM").
    """

    image_keys: tuple[str, ...]
    lerobot_image_keys: tuple[str, ...]
    image_shape: tuple[int, int, int] | None
    proprio_dim: int
    env_state_dim: int
    action_dim: int
    horizon: int
    n_obs_steps: int
    n_action_steps: int
    action_offset: int
    ddim: DDIMConfig
    trained_scheduler: str


def ddim_config_from_lerobot(config: Any, num_inference_steps: int = 0) -> DDIMConfig:
    """Our :class:`DDIMConfig` equal to LeRobot's noise schedule (``config``: a LeRobot ``DiffusionConfig``).

    ``num_inference_steps`` 0 keeps LeRobot's rule (its ``num_inference_steps`` or ``num_train_timesteps``).
    Raises ``ValueError`` for schedules ``DDIMConfig`` cannot express exactly.
    """
    if config.prediction_type != "epsilon":
        raise ValueError(f"the LeRobot policy predicts {config.prediction_type!r}; guidance needs an epsilon "
                         "(noise) prediction policy")
    default_range = (math.isclose(config.beta_start, _DIFFUSERS_BETA_START)
                     and math.isclose(config.beta_end, _DIFFUSERS_BETA_END))
    if config.beta_schedule not in _SCHEDULES_WITHOUT_BETA_RANGE and not default_range:
        raise ValueError(f"beta schedule {config.beta_schedule!r} with beta_start={config.beta_start}, "
                         f"beta_end={config.beta_end}: only diffusers' default range "
                         f"({_DIFFUSERS_BETA_START}, {_DIFFUSERS_BETA_END}) is supported by DDIMConfig")
    if config.clip_sample and not math.isclose(config.clip_sample_range, _DIFFUSERS_CLIP_RANGE):
        raise ValueError(f"clip_sample_range={config.clip_sample_range}: only 1.0 is supported by DDIMConfig")
    steps = int(num_inference_steps or config.num_inference_steps or config.num_train_timesteps)
    return DDIMConfig(num_train_timesteps=int(config.num_train_timesteps), num_inference_steps=steps,
                      beta_schedule=config.beta_schedule, prediction_type="epsilon",
                      clip_sample=bool(config.clip_sample), set_alpha_to_one=True, steps_offset=0)


def _check_processor_file(path: Path) -> None:
    """Refuse processor JSON whose steps name a Python class to import (``"class"``) instead of a registered step,
    and steps whose ``state_file`` is not a file inside the policy directory (``..``, an absolute path, a symlink
    out) or is missing (LeRobot would fetch a missing file from the model hub); the state files must be valid
    safetensors with finite values."""
    from safetensors.numpy import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: save the processors with the policy (LeRobot >= 0.4 writes "
                                "policy_preprocessor.json / policy_postprocessor.json next to model.safetensors)")
    try:
        steps = json.loads(path.read_text()).get("steps", [])
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a LeRobot processor file ({exc})") from exc
    if not isinstance(steps, list):
        raise ValueError(f"{path}: 'steps' is not a list")
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or not step.get("registry_name"):
            raise ValueError(f"{path}: step {i} names no registered processor step (a 'class' entry would make "
                             "LeRobot import arbitrary code); refusing to load it")
        if step.get("state_file") is not None:
            state = confined_file(path.parent, step["state_file"], f"{path.name} step {i} state_file")
            safetensors_header(state)  # well-formed before it is read
            check_finite_tensors(state, load_file(str(state)))


# -------------------------------------------------------------------------------------------- adapter
class LeRobotDiffusionAdapter(nn.Module):
    """A LeRobot ``DiffusionPolicy`` as a :class:`~dynaguide.interfaces.NoisePredictionPolicy`.

    Build it with :meth:`from_pretrained` (or :meth:`from_policy` for an in-memory policy and processors).
    Actions in/out of :meth:`predict_noise` are in LeRobot's normalised action space ([-1, 1]: the adapter
    requires ``MIN_MAX`` action normalisation, LeRobot's default for diffusion).

    Attributes:
        policy: the wrapped ``lerobot.policies.diffusion.modeling_diffusion.DiffusionPolicy`` (eval mode).
        preprocessor / postprocessor: its ``PolicyProcessorPipeline`` s.
        cfg: :class:`LeRobotPolicySpec` (``cfg.image_keys``, ``cfg.ddim`` as the runner reads them from our policy).
        horizon, action_dim, n_obs_steps, n_action_steps, action_offset: as in :class:`LeRobotPolicySpec`.
        action_normalizer: a :class:`MinMaxNormalizer` holding LeRobot's action min/max, so that
            ``LatentDynamicsModel.check_compatible_with(adapter)`` compares action spaces.  (LeRobot maps a
            constant feature, max == min, to −1 where ours maps it to 0; the adapter itself always
            (un)normalises with LeRobot's processors.)
    """

    checkpoint_kind = "lerobot_diffusion"

    def __init__(self, policy: Any, preprocessor: Any, postprocessor: Any, *, image_keys: tuple[str, ...] | None = None,
                 options: LeRobotAdapterConfig | None = None) -> None:
        super().__init__()
        import_lerobot()
        from lerobot.configs.types import FeatureType, NormalizationMode
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy as LeRobotDiffusionPolicy
        from lerobot.processor import NormalizerProcessorStep, UnnormalizerProcessorStep
        from lerobot.utils.constants import ACTION, OBS_STATE

        if not isinstance(policy, LeRobotDiffusionPolicy):
            raise TypeError(f"expected a LeRobot DiffusionPolicy, got {type(policy).__name__}")
        self.options = options or LeRobotAdapterConfig()
        config = policy.config
        self.policy = policy.to(self.options.device).eval()
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor

        # ---- features and their normalisation
        lerobot_image_keys = tuple(config.image_features)
        if image_keys is None or len(image_keys) == 0:
            image_keys = tuple(k.removeprefix("observation.images.").removeprefix("observation.")
                               for k in lerobot_image_keys)
        image_keys = tuple(image_keys)
        if len(image_keys) != len(lerobot_image_keys):
            raise ValueError(f"{len(image_keys)} camera keys {list(image_keys)} for the {len(lerobot_image_keys)} "
                             f"image features of the LeRobot policy {list(lerobot_image_keys)}")
        if len(set(image_keys)) != len(image_keys) or self.options.proprio_key in image_keys:
            raise ValueError(f"camera keys must be distinct and differ from the proprio key, got {list(image_keys)}")
        norm_map = {FeatureType(k): NormalizationMode(v)
                    for k, v in config.normalization_mapping.items()}
        if norm_map.get(FeatureType.ACTION) != NormalizationMode.MIN_MAX:
            raise ValueError(f"the LeRobot policy normalises actions with {norm_map.get(FeatureType.ACTION)}; the "
                             "adapter needs MIN_MAX (actions in [-1, 1], as LeRobot's diffusion default)")
        normalizers = [s for s in preprocessor.steps if isinstance(s, NormalizerProcessorStep)]
        unnormalizers = [s for s in postprocessor.steps if isinstance(s, UnnormalizerProcessorStep)]
        if len(normalizers) != 1 or len(unnormalizers) != 1:
            raise ValueError("expected one NormalizerProcessorStep in the pre-processor and one "
                             f"UnnormalizerProcessorStep in the post-processor, got {len(normalizers)} and "
                             f"{len(unnormalizers)}")
        required = {OBS_STATE: FeatureType.STATE, ACTION: FeatureType.ACTION}
        if config.env_state_feature is not None:
            required["observation.environment_state"] = FeatureType.ENV
        identity = NormalizationMode.IDENTITY
        for step, what in ((normalizers[0], "pre"), (unnormalizers[0], "post")):
            for key, ftype in required.items():
                if key in step.features and norm_map.get(ftype, identity) != identity and key not in step._tensor_stats:
                    raise ValueError(f"the LeRobot {what}-processor has no normalisation stats for {key!r}: it would "
                                     "pass raw values to the policy (save the processors with dataset stats)")
        for key in lerobot_image_keys:
            if norm_map.get(FeatureType.VISUAL, identity) != identity and key not in normalizers[0]._tensor_stats:
                logger.warning("no normalisation stats for %s: images go to the policy unnormalised, as LeRobot "
                               "itself would do", key)
        action_stats = unnormalizers[0]._tensor_stats[ACTION]
        self._normalizer = normalizers[0]

        # ---- noise schedule: explicitly DDIM, the same for LeRobot's own sampling and ours
        ddim = ddim_config_from_lerobot(config, self.options.num_inference_steps)
        trained_scheduler = config.noise_scheduler_type
        from diffusers import DDIMScheduler

        self.policy.diffusion.noise_scheduler = DDIMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start, beta_end=config.beta_end,
            beta_schedule=config.beta_schedule, clip_sample=config.clip_sample,
            clip_sample_range=config.clip_sample_range, prediction_type=config.prediction_type)
        self.policy.diffusion.num_inference_steps = ddim.num_inference_steps
        config.noise_scheduler_type, config.num_inference_steps = "DDIM", ddim.num_inference_steps
        if trained_scheduler != "DDIM":
            logger.info("LeRobot policy trained with a %s scheduler: sampling it with DDIM, %d steps",
                        trained_scheduler, ddim.num_inference_steps)

        self.horizon = int(config.horizon)
        self.action_dim = int(config.action_feature.shape[0])
        self.n_obs_steps = int(config.n_obs_steps)
        self.n_action_steps = int(config.n_action_steps)
        self.action_offset = self.n_obs_steps - 1
        image_shape = tuple(int(s) for s in config.image_features[lerobot_image_keys[0]].shape) \
            if lerobot_image_keys else None
        self.cfg = LeRobotPolicySpec(
            image_keys=image_keys, lerobot_image_keys=lerobot_image_keys, image_shape=image_shape,
            proprio_dim=int(config.robot_state_feature.shape[0]),
            env_state_dim=int(config.env_state_feature.shape[0]) if config.env_state_feature else 0,
            action_dim=self.action_dim, horizon=self.horizon, n_obs_steps=self.n_obs_steps,
            n_action_steps=self.n_action_steps, action_offset=self.action_offset, ddim=ddim,
            trained_scheduler=trained_scheduler)
        self.action_normalizer = MinMaxNormalizer(self.action_dim)
        self.action_normalizer.set_stats(action_stats["min"].detach().float().cpu(),
                                         action_stats["max"].detach().float().cpu())

    # ------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | Path, *, image_keys: tuple[str, ...] | None = None,
                        options: LeRobotAdapterConfig | None = None) -> LeRobotDiffusionAdapter:
        """Load a LeRobot ``save_pretrained`` directory (see the module docstring); local directories only.

        Args:
            path: the directory (``config.json``, ``model.safetensors``, ``policy_{pre,post}processor.json``
                and their ``.safetensors`` stats).
            image_keys: our camera keys for the checkpoint's image features, in its order; None or empty:
                the feature names without ``observation.images.``.
            options: :class:`LeRobotAdapterConfig`.
        """
        import_lerobot()
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy as LeRobotDiffusionPolicy
        from lerobot.processor import PolicyProcessorPipeline
        from lerobot.processor.converters import (batch_to_transition, policy_action_to_transition,
                                                  transition_to_batch, transition_to_policy_action)

        options = options or LeRobotAdapterConfig()
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory: give the local directory LeRobot's save_pretrained "
                                    "wrote (hub ids are not downloaded)")
        for name in ("config.json", "model.safetensors"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name} is missing: not a LeRobot policy directory")
        for name in (PREPROCESSOR_FILE, POSTPROCESSOR_FILE):
            _check_processor_file(path / name)
        config = PreTrainedConfig.from_pretrained(path)
        if not isinstance(config, DiffusionConfig):
            raise ValueError(f"{path} holds a LeRobot {type(config).__name__} ({getattr(config, 'type', '?')}), "
                             "not a diffusion policy")
        # the weights come from model.safetensors: never fetch torchvision's ImageNet weights to initialise
        config.pretrained_backbone_weights = None
        config.device = options.device
        # the size config.json asks for, on the meta device (no memory), capped and compared with the weights'
        # header before LeRobot allocates the model (down_dims [16, 32, 100000] asked for 120 GB)
        skeleton = model_skeleton(LeRobotDiffusionPolicy, config, path / "config.json")
        check_state_dict_matches(path / "model.safetensors", skeleton.state_dict())
        del skeleton
        policy = LeRobotDiffusionPolicy.from_pretrained(path, config=config, strict=True)
        check_finite_tensors(path / "model.safetensors", policy.state_dict())
        device_override = {"device_processor": {"device": options.device}}
        preprocessor = PolicyProcessorPipeline.from_pretrained(
            path, config_filename=PREPROCESSOR_FILE, overrides=device_override,
            to_transition=batch_to_transition, to_output=transition_to_batch)
        postprocessor = PolicyProcessorPipeline.from_pretrained(
            path, config_filename=POSTPROCESSOR_FILE, to_transition=policy_action_to_transition,
            to_output=transition_to_policy_action)
        return cls(policy, preprocessor, postprocessor, image_keys=image_keys, options=options)

    @classmethod
    def from_policy(cls, policy: Any, preprocessor: Any, postprocessor: Any, **kwargs: Any) -> LeRobotDiffusionAdapter:
        """Wrap an in-memory LeRobot policy and its processors (same keyword arguments as :meth:`from_pretrained`)."""
        return cls(policy, preprocessor, postprocessor, **kwargs)

    # ------------------------------------------------------------------------------- conditioning
    def lerobot_batch(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our observation dict → LeRobot's normalised, stacked batch for ``_prepare_global_conditioning``.

        Args:
            obs: every key of ``cfg.image_keys`` → ``(B, To', 3, H, W)`` float in [0, 1]; ``options.proprio_key``
                → ``(B, To', P)`` raw units (``options.env_state_key`` → ``(B, To', E)`` raw when the policy uses
                it); To' ≥ To, the last To steps are used, oldest first.

        Returns:
            ``{"observation.state": (B, To, P), "observation.images": (B, To, N_cam, 3, H, W)
            [, "observation.environment_state": (B, To, E)]}``, normalised by LeRobot's pre-processor
            frame by frame, exactly as ``select_action``'s queues hold them.
        """
        from lerobot.utils.constants import OBS_ENV_STATE, OBS_IMAGES, OBS_STATE

        if not isinstance(obs, dict):
            raise ValueError(f"obs must be a dict of tensors, got {type(obs).__name__}")
        to, spec, opts = self.n_obs_steps, self.cfg, self.options
        device = self._device()
        inputs: dict[str, torch.Tensor] = {}
        sources = [(opts.proprio_key, OBS_STATE, (spec.proprio_dim,))]
        if spec.env_state_dim:
            sources.append((opts.env_state_key, OBS_ENV_STATE, (spec.env_state_dim,)))
        sources += [(ours, theirs, None) for ours, theirs in zip(spec.image_keys, spec.lerobot_image_keys)]
        batch = None
        for ours, theirs, feature_shape in sources:
            if ours not in obs:
                raise ValueError(f"observation is missing {ours!r} (have {sorted(obs)})")
            value = torch.as_tensor(obs[ours])
            if feature_shape is not None:
                if value.ndim != 3 or tuple(value.shape[2:]) != feature_shape:
                    raise ValueError(f"obs[{ours!r}] must be (B, >= {to}, {feature_shape[0]}), "
                                     f"got {tuple(value.shape)}")
            else:
                if value.ndim != 5 or value.shape[2] != 3:
                    raise ValueError(f"obs[{ours!r}] must be (B, To, 3, H, W), got {tuple(value.shape)}")
                value = self._fit_images(ours, value)
            if value.shape[1] < to:
                raise ValueError(f"obs[{ours!r}] has {value.shape[1]} time steps, the policy needs {to}")
            if batch is not None and value.shape[0] != batch:
                raise ValueError("all observation entries must share the batch size")
            batch = value.shape[0]
            inputs[theirs] = value[:, -to:].to(device=device, dtype=torch.float32)
        frames = [self.preprocessor({key: value[:, t] for key, value in inputs.items()}) for t in range(to)]
        out = {OBS_STATE: torch.stack([f[OBS_STATE] for f in frames], dim=1)}
        if spec.env_state_dim:
            out[OBS_ENV_STATE] = torch.stack([f[OBS_ENV_STATE] for f in frames], dim=1)
        if spec.lerobot_image_keys:  # as select_action: cameras stacked at dim -4, then the queue stacks time at 1
            out[OBS_IMAGES] = torch.stack(
                [torch.stack([f[key] for key in spec.lerobot_image_keys], dim=-4) for f in frames], dim=1)
        return out

    def encode_observation(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Observation dict (see :meth:`lerobot_batch`) → LeRobot's global conditioning ``(B, cond_dim)``."""
        with torch.no_grad():
            return self.policy.diffusion._prepare_global_conditioning(self.lerobot_batch(obs))

    def predict_noise(self, noisy_actions: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``noisy_actions (B, T, A)`` normalised, ``timesteps (B,)`` long (train scale), ``cond (B or 1, C)``
        → ε ``(B, T, A)`` from ``policy.diffusion.unet``.  One conditioning row is shared by all B chunks."""
        if noisy_actions.ndim != 3 or tuple(noisy_actions.shape[1:]) != (self.horizon, self.action_dim):
            raise ValueError(f"noisy_actions must be (B, {self.horizon}, {self.action_dim}), "
                             f"got {tuple(noisy_actions.shape)}")
        if cond.ndim != 2:
            raise ValueError(f"cond must be (B, cond_dim), got {tuple(cond.shape)}")
        batch = noisy_actions.shape[0]
        if cond.shape[0] == 1 and batch > 1:
            cond = cond.expand(batch, -1)
        if cond.shape[0] != batch:
            raise ValueError(f"cond batch {cond.shape[0]} != actions batch {batch}")
        timesteps = torch.as_tensor(timesteps, device=noisy_actions.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        return self.policy.diffusion.unet(noisy_actions, timesteps.long(), global_cond=cond)

    # ------------------------------------------------------------------------------ normalisation
    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., A)`` → raw units ``(..., A)`` with LeRobot's post-processor (on its output device)."""
        flat = actions.reshape(-1, self.action_dim)
        return self.postprocessor(flat).reshape(actions.shape)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Raw ``(..., A)`` → normalised ``(..., A)`` with the pre-processor's ``NormalizerProcessorStep``
        (the whole pipeline wants an observation; its other steps do not touch a batched action)."""
        from lerobot.processor import TransitionKey, create_transition

        flat = actions.reshape(-1, self.action_dim).to(self._device(), torch.float32)
        return self._normalizer(create_transition(action=flat))[TransitionKey.ACTION].reshape(actions.shape)

    # ----------------------------------------------------------------------------------- helpers
    def _device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def _fit_images(self, key: str, images: torch.Tensor) -> torch.Tensor:
        """``(B, To, 3, H, W)`` → the checkpoint's image size (or unchanged when the model resizes itself)."""
        target = self.cfg.image_shape[1:]
        if self.policy.config.resize_shape is not None or tuple(images.shape[-2:]) == target:
            return images
        if not self.options.resize_images:
            raise ValueError(f"obs[{key!r}] frames are {tuple(images.shape[-2:])} but the LeRobot policy was "
                             f"trained on {target}: resize them, or set resize_images")
        b, t = images.shape[:2]
        resized = F.interpolate(images.reshape(b * t, *images.shape[2:]).float(), size=target, mode="bilinear",
                                align_corners=False, antialias=True)
        return resized.reshape(b, t, 3, *target)


def load_policy(kind: str, path: str | Path, *, image_keys: tuple[str, ...] | None = None,
                lerobot: LeRobotAdapterConfig | None = None) -> nn.Module:
    """Load a frozen policy for guided sampling.

    Args:
        kind: ``"dynaguide"`` — our :class:`~dynaguide.policy.DiffusionPolicy` checkpoint (safetensors + JSON,
            ``image_keys`` ignored: the checkpoint has its own); ``"lerobot"`` — a LeRobot DiffusionPolicy
            ``save_pretrained`` directory, wrapped in :class:`LeRobotDiffusionAdapter`.
        path: the checkpoint directory.
        image_keys: for ``"lerobot"``: our camera keys for its image features
            (see :meth:`LeRobotDiffusionAdapter.from_pretrained`).
        lerobot: :class:`LeRobotAdapterConfig` for ``"lerobot"``.
    """
    if kind == "dynaguide":
        from dynaguide.checkpoint import load_checkpoint

        policy, _ = load_checkpoint(Path(path))
        return policy
    if kind == "lerobot":
        return LeRobotDiffusionAdapter.from_pretrained(path, image_keys=image_keys, options=lerobot)
    raise ValueError(f"policy kind must be one of {POLICY_KINDS}, got {kind!r}")
