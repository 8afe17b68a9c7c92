"""DynaGuide guidance: Eq. 2 metric, goal sets, objectives and the guided DDIM sampler (Algorithm 1)."""

from dynaguide.guidance.goals import FinalFrames, GuidanceConfig, GoalLatents
from dynaguide.guidance.metric import goal_distances, latent_guidance_metric
from dynaguide.guidance.objectives import (
    ClassifierObjective,
    DynaGuideObjective,
    PositionGuidanceObjective,
    chunk_for_dynamics,
)
from dynaguide.guidance.rtc import RTCConfig, prefix_weights, shift_prefix
from dynaguide.guidance.sampler import (
    GuidedSample,
    SampleTimings,
    guided_ddim_sample,
    objective_value_and_grad,
    renoise,
)

__all__ = [
    "ClassifierObjective",
    "DynaGuideObjective",
    "FinalFrames",
    "GuidanceConfig",
    "GoalLatents",
    "GuidedSample",
    "PositionGuidanceObjective",
    "RTCConfig",
    "SampleTimings",
    "chunk_for_dynamics",
    "goal_distances",
    "guided_ddim_sample",
    "latent_guidance_metric",
    "objective_value_and_grad",
    "prefix_weights",
    "renoise",
    "shift_prefix",
]
