"""``embedding_node`` — patch-token embeddings of the policy camera, and a batch embedding service.

Subscribes ``image`` (sensor_msgs/Image), publishes ``embedding`` (dynaguide_msgs/PatchEmbedding) at
most ``max_rate_hz``; serves ``embed_images`` (dynaguide_msgs/EmbedImages) so goal images and
observations are embedded by one and the same model.  The model is :func:`dynaguide.embedders.factory.make_embedder`
(``embedder.*`` parameters: kind ``efficientnet_lite0`` by default, ``image_size``, ``stride``, …); every
message carries ``embedder_id`` = :func:`dynaguide.embedders.identity.embedder_id` of that model (kind, geometry and a
hash of its weights), which the policy node checks against the dynamics checkpoint's recorded embedder.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image

from dynaguide.embedders.factory import EmbedderConfig, make_embedder
from dynaguide.embedders.identity import embedder_id
from dynaguide.embedders.protocol import resize_images
from dynaguide_msgs.msg import PatchEmbedding
from dynaguide_msgs.srv import EmbedImages
from dynaguide_ros.conversions import MessageError, embedding_to_msg, rgb_from_image_msg
from dynaguide_ros.params import declare_config
from dynaguide_ros.qos import RELIABLE, SENSOR


@dataclass
class EmbeddingNodeConfig:
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    max_rate_hz: float = 10.0
    max_batch: int = 64
    max_image_side: int = 4096
    torch_threads: int = 1


class EmbeddingNode(Node):
    def __init__(self) -> None:
        super().__init__("embedding_node")
        self.cfg = declare_config(self, EmbeddingNodeConfig)
        self.embedder = make_embedder(self.cfg.embedder).eval()
        self.embedder_id = embedder_id(self.embedder)  # kind@size/geometry:hash of identity (weights included)
        self.grid = tuple(int(v) for v in self.embedder.grid)
        self._lock = threading.Lock()  # one forward pass at a time
        self._last = 0.0
        self.pub = self.create_publisher(PatchEmbedding, "embedding", RELIABLE)
        self.create_subscription(Image, "image", self._on_image, SENSOR,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self.create_service(EmbedImages, "embed_images", self._on_embed,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.get_logger().info(f"embedding node ready ({self.embedder_id}, grid {self.grid})")

    def embed(self, rgbs: list[np.ndarray]) -> np.ndarray:
        """``[(H, W, 3) uint8]`` → ``(B, N, D) float32``.  Each image is resized to the embedder's input size
        with the embedder's own resize (bicubic, antialiased), so tokens equal the offline ones
        (:func:`dynaguide.data.embedding_cache.build_embedding_cache`) for the same frame."""
        size = self.embedder.image_size
        batch = []
        for rgb in rgbs:
            t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().unsqueeze(0) / 255.0
            batch.append(resize_images(t, size))
        with self._lock, torch.no_grad():
            torch.set_num_threads(max(1, self.cfg.torch_threads))  # per calling (executor) thread
            return self.embedder(torch.cat(batch)).numpy().astype(np.float32)

    def _on_image(self, msg: Image) -> None:
        now = time.monotonic()
        if now - self._last < 1.0 / max(self.cfg.max_rate_hz, 1e-6):
            return
        try:
            rgb = rgb_from_image_msg(msg, max_side=self.cfg.max_image_side)
        except MessageError as exc:
            self.get_logger().warning(f"dropping camera frame: {exc}", throttle_duration_sec=5.0)
            return
        self._last = now
        tokens = self.embed([rgb])[0]
        self.pub.publish(embedding_to_msg(tokens, self.grid, self.embedder_id, stamp=msg.header.stamp))

    def _on_embed(self, request: EmbedImages.Request, response: EmbedImages.Response) -> EmbedImages.Response:
        try:
            if not request.images:
                raise MessageError("no images to embed")
            if len(request.images) > self.cfg.max_batch:
                raise MessageError(f"{len(request.images)} images exceed the limit of {self.cfg.max_batch}")
            rgbs = []
            for i, im in enumerate(request.images):
                try:
                    rgbs.append(rgb_from_image_msg(im, max_side=self.cfg.max_image_side))
                except MessageError as exc:
                    raise MessageError(f"image {i}: {exc}") from exc
            tokens = self.embed(rgbs)
        except MessageError as exc:
            response.success, response.message = False, str(exc)
            return response
        response.embeddings = [embedding_to_msg(t, self.grid, self.embedder_id, stamp=im.header.stamp)
                               for t, im in zip(tokens, request.images)]
        response.success, response.message = True, f"embedded {len(tokens)} images with {self.embedder_id}"
        return response


def main(argv=None) -> int:
    from dynaguide_ros.node_main import spin_node

    return spin_node(EmbeddingNode, argv)
