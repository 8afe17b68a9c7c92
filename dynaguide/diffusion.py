"""The DDIM noise schedule shared by the base policy, the guided sampler and dynamics training."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import DDIMScheduler


@dataclass
class DDIMConfig:
    """Defaults are the paper's base policy (diffusion_policy / robomimic CALVIN config)."""

    num_train_timesteps: int = 100
    num_inference_steps: int = 10
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    steps_offset: int = 0

    def __post_init__(self) -> None:
        from dynaguide.config import check_ranges

        check_ranges(self, {"num_train_timesteps": (1, 100_000), "num_inference_steps": (1, 100_000),
                            "steps_offset": (0, 100_000)})
        if self.num_train_timesteps <= 0 or self.num_inference_steps <= 0:
            raise ValueError("num_train_timesteps and num_inference_steps must be positive")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError("num_inference_steps cannot exceed num_train_timesteps")
        if self.prediction_type != "epsilon":
            raise ValueError("only epsilon prediction is supported (guidance modifies the noise estimate)")


def make_ddim_scheduler(cfg: DDIMConfig | None = None) -> DDIMScheduler:
    """A fresh ``diffusers.DDIMScheduler`` with ``set_timesteps(cfg.num_inference_steps)`` applied."""
    cfg = cfg or DDIMConfig()
    scheduler = DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=cfg.clip_sample,
        set_alpha_to_one=cfg.set_alpha_to_one,
        steps_offset=cfg.steps_offset,
    )
    scheduler.set_timesteps(cfg.num_inference_steps)
    return scheduler
