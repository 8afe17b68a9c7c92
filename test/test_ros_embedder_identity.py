"""Embedder identity through the ROS nodes, in-process (callbacks called directly, no traffic needed):
the embedding node stamps ``embedder_id`` from its model and reads ``embedder.stride``; the policy node
drops embeddings and guidance of another embedder and keeps its last good state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.ros


@pytest.fixture
def ros_args():
    """``ros_args(*params)``: (re)initialise the global rclpy context with ``-p name:=value`` parameters."""
    import rclpy

    def init(*params: str) -> None:
        if rclpy.ok():
            rclpy.shutdown()
        args = ["test"]
        if params:
            args += ["--ros-args", *[x for p in params for x in ("-p", p)]]
        rclpy.init(args=args)

    yield init
    if rclpy.ok():
        rclpy.shutdown()


def test_embedding_node_ids_its_model_and_reads_stride(ros_args):
    from dynaguide.embedders.efficientnet import EfficientNetLite0Embedder
    from dynaguide.embedders.identity import embedder_id
    from dynaguide.embedders.protocol import resize_images
    from dynaguide_msgs.srv import EmbedImages
    from dynaguide_ros.conversions import embedding_from_msg, rgb_to_image_msg
    from dynaguide_ros.embedding_node import EmbeddingNode

    ros_args()
    node = EmbeddingNode()  # parameters default to the code's: EfficientNet-Lite0, 128 px, stride 16
    try:
        reference = EfficientNetLite0Embedder.pretrained(128, 16)
        assert node.embedder_id == embedder_id(reference) and node.grid == (8, 8)
        rng = np.random.default_rng(0)
        rgb = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        res = node._on_embed(EmbedImages.Request(images=[rgb_to_image_msg(rgb)]), EmbedImages.Response())
        assert res.success, res.message
        msg = res.embeddings[0]
        assert (msg.embedder_id, msg.grid_h, msg.grid_w, msg.dim) == (node.embedder_id, 8, 8, 112)
        offline = reference(resize_images(torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255.0, 128))[0]
        assert np.allclose(embedding_from_msg(msg), offline.numpy(), atol=1e-5)  # same tokens as offline
    finally:
        node.destroy_node()
    ros_args("embedder.stride:=8", "embedder.image_size:=64")
    node = EmbeddingNode()
    try:
        assert node.grid == (8, 8) and node.embedder.dim == 40
        assert node.embedder_id.startswith("efficientnet_lite0@64/s8:")
    finally:
        node.destroy_node()


def test_policy_node_refuses_embeddings_and_guidance_of_another_embedder(ros_args, tmp_path):
    from dynaguide.checkpoint import save_checkpoint
    from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
    from dynaguide.embedders.identity import embedder_id
    from dynaguide.embedders.random_patch import RandomPatchEmbedder
    from dynaguide_msgs.msg import GuidanceSet
    from dynaguide_ros.conversions import embedding_to_msg
    from dynaguide_ros.policy_node import PolicyNode

    trained_on = RandomPatchEmbedder(16, 4, 8, seed=0)
    good, bad = embedder_id(trained_on), embedder_id(RandomPatchEmbedder(16, 4, 8, seed=1))
    torch.manual_seed(0)
    dynamics = LatentDynamicsModel(LatentDynamicsConfig.for_embedder(trained_on, "cpu", proprio_dim=15,
                                                                     action_dim=7, horizon=16))
    dynamics.set_normalizer_stats(-torch.ones(7), torch.ones(7), -3 * torch.ones(15), 3 * torch.ones(15))
    save_checkpoint(tmp_path / "dyn", dynamics, dynamics.cfg)
    ros_args(f"runner.dynamics_checkpoint:={tmp_path / 'dyn'}")
    node = PolicyNode()
    try:
        assert node.runner.expected_embedder_id == good
        rng = np.random.default_rng(0)
        tokens = lambda: rng.standard_normal((16, 8)).astype(np.float32)  # noqa: E731
        node._on_embedding(embedding_to_msg(tokens(), (4, 4), bad))
        assert node.embedding is None                               # refused, nothing stored
        node._on_embedding(embedding_to_msg(tokens(), (4, 4), good))
        kept = node.embedding
        assert kept is not None and kept[2] == good
        node._on_embedding(embedding_to_msg(tokens(), (4, 4), bad))
        assert node.embedding is kept                               # last good embedding stays
        ok = GuidanceSet(active=True, positive=[embedding_to_msg(tokens(), (4, 4), good)], scale=1.0, sigma=5.0,
                         stochastic_steps=1, revision=1)
        node._on_guidance(ok)
        in_force = node.runner.guidance
        assert in_force is not None and node.guidance_revision == 1
        wrong = GuidanceSet(active=True, positive=[embedding_to_msg(tokens(), (4, 4), good)],
                            negative=[embedding_to_msg(tokens(), (4, 4), bad)], scale=1.0, sigma=5.0,
                            stochastic_steps=1, revision=2)
        node._on_guidance(wrong)                                    # logged as a warning, not raised
        assert node.runner.guidance is in_force and node.guidance_revision == 1
    finally:
        node.destroy_node()
