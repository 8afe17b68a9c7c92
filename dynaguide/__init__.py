"""DynaGuide: steering frozen diffusion policies with active dynamic guidance.

The method lives here and imports no ROS: guided DDIM sampling (Algorithm 1 / Eq. 2-3 of the paper),
the latent dynamics model, embedders, the base diffusion policy, baselines, datasets and training.
ROS 2 nodes in ``dynaguide_ros`` are thin adapters around these functions.
"""

__version__ = "0.1.0"
