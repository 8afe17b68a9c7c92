"""``guidance_manager`` — the ``/set_guidance`` front door.

* ``set_guidance`` (dynaguide_msgs/SetGuidance): validates the request (image encodings, sizes, data
  length, counts; s, σ, M through :class:`~dynaguide.guidance.goals.GuidanceConfig`, :func:`request_settings`),
  embeds the goal images through the embedding node's
  ``embed_images`` service, then publishes ``guidance/set`` (GuidanceSet) and ``guidance/state``
  (GuidanceState) with transient-local QoS and stores the guidance on disk.  A bad request gets
  ``success = false`` and a message naming the problem; the guidance in force does not change.
  A parameter given as 0 keeps the one in force; ``set_scale = true`` takes ``scale`` as given, so
  s = 0 (unguided chunks, goals kept) is expressible.
  A request without images while guidance is in force *retunes* it: the same goal embeddings with the
  request's s, σ, M (``dynaguide guide --scale 10``).
* ``clear_guidance`` (std_srvs/Trigger): back to the unguided base policy.
* ``guidance/goal_images`` (sensor_msgs/Image, transient-local): the accepted goal images as one mosaic, for
  viewers (:mod:`dynaguide_ros.goal_images`; a clear publishes an empty image with frame id ``cleared``).
* On start, restores the last accepted guidance from ``state_dir``.  Everything restored is validated (the
  store's own checks, :func:`dynaguide.guidance.store.check_stored`, and this manager's limits through
  :func:`validate_request`); a corrupt store is logged in one line with the reason, its files are moved to
  ``state_dir/corrupt-<time>/`` for inspection and the manager starts unguided.  Revision numbers keep
  increasing across clears, restarts and corrupt stores.

Concurrency: both services share one mutually exclusive callback group (requests are served one at a
time, in arrival order, queued in the service's QoS history of ``request_queue_depth``); the embedding
client has a group of its own, so its reply always finds an executor thread while a request waits for
it.  A waiting request gives up when the context shuts down, so SIGINT stops the node promptly.
Defaults for s, σ and M are those of :class:`dynaguide.guidance.goals.GuidanceConfig`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from dynaguide.guidance.goals import GuidanceConfig
from dynaguide.guidance.store import (StoredGuidance, clear_guidance, load_guidance, quarantine_store, save_guidance,
                                      stored_revision)
from dynaguide.inputs import one_line
from dynaguide.text import clip_text
from dynaguide_msgs.msg import GuidanceSet, GuidanceState
from std_msgs.msg import Header
from dynaguide_msgs.srv import EmbedImages, SetGuidance
from dynaguide_ros import goal_images
from dynaguide_ros.conversions import (MessageError, embedding_from_msg, embedding_to_msg, rgb_from_image_msg,
                                       rgb_to_image_msg)
from dynaguide_ros.params import declare_config
from dynaguide_ros.qos import LATCHED, service_qos

_DEFAULTS = GuidanceConfig()
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_REPLY_CHARS = 1000  # longest message in a response (client strings inside it are cut far shorter)


@dataclass
class GuidanceManagerConfig:
    state_dir: str = "~/.local/state/dynaguide/guidance"
    max_images: int = 64
    max_image_side: int = 2048
    min_image_side: int = 14
    default_scale: float = _DEFAULTS.scale            # used while no guidance is in force; the defaults
    default_sigma: float = _DEFAULTS.sigma            # live in GuidanceConfig (dynaguide/guidance/goals.py)
    default_stochastic_steps: int = _DEFAULTS.stochastic_steps
    max_scale: float = 1000.0
    max_stochastic_steps: int = 32
    embed_timeout_s: float = 30.0
    request_queue_depth: int = 100                    # requests waiting to be served; more are lost by DDS


def validate_request(req: SetGuidance.Request, cfg: GuidanceManagerConfig, retune: bool = False) -> None:
    """Raise :class:`MessageError` naming the first problem in the images and counts of ``req`` (a
    ``/set_guidance`` request, or the guidance restored from the store: :meth:`GuidanceManagerNode._restore`
    passes a request built from it, so requests and restored guidance meet the same limits); its s, sigma and M
    are checked by :func:`request_settings`.  ``retune``: guidance is in force, so a request without images is
    allowed (it changes s, sigma or M and keeps the goal images)."""
    n_pos, n_neg = len(req.positive), len(req.negative)
    if n_pos + n_neg == 0 and not retune:
        raise MessageError("no goal images: give at least one positive or negative image "
                           "(a request without images retunes s, sigma, M of the guidance in force; there is none)")
    if n_pos + n_neg == 0 and not (req.set_scale or req.sigma or req.stochastic_steps):
        raise MessageError("no goal images and nothing to retune: give images, or a scale, sigma or M to change")
    if n_pos + n_neg > cfg.max_images:
        raise MessageError(f"{n_pos + n_neg} goal images exceed the limit of {cfg.max_images}")
    for side, images in (("positive", req.positive), ("negative", req.negative)):
        for i, im in enumerate(images):
            try:
                rgb_from_image_msg(im, max_side=cfg.max_image_side, min_side=cfg.min_image_side)
            except MessageError as exc:
                raise MessageError(f"{side}[{i}]: {exc}") from exc


def request_settings(req: SetGuidance.Request, current: GuidanceConfig, cfg: GuidanceManagerConfig) -> GuidanceConfig:
    """The guidance settings in force after ``req``: the one conversion of a request's s, sigma and M.

    A value given as 0 keeps ``current``'s (the settings in force, or the configured defaults when there are
    none); with ``set_scale`` the scale is taken as given, so s = 0 ("no guidance": unguided chunks, goals kept)
    is expressible.  :class:`GuidanceConfig` validates the result (finite, s >= 0, sigma >= MIN_SIGMA, M >= 1);
    this manager adds its limits ``max_scale`` and ``max_stochastic_steps``.  Raises :class:`MessageError`."""
    try:
        settings = current.retuned(scale=req.scale if req.set_scale or req.scale else None,
                                   sigma=req.sigma or None, stochastic_steps=req.stochastic_steps or None)
    except ValueError as exc:
        raise MessageError(f"{exc} (in a request, 0 keeps the value in force)") from None
    if settings.scale > cfg.max_scale:
        raise MessageError(f"scale {settings.scale:g} exceeds the limit of {cfg.max_scale}")
    if settings.stochastic_steps > cfg.max_stochastic_steps:
        raise MessageError(f"stochastic_steps {settings.stochastic_steps} exceeds the limit of "
                           f"{cfg.max_stochastic_steps}")
    return settings


class GuidanceManagerNode(Node):
    def __init__(self) -> None:
        super().__init__("guidance_manager")
        self.cfg = declare_config(self, GuidanceManagerConfig)
        # the settings while no guidance is in force: must themselves be usable (ValueError naming the problem)
        self.defaults = GuidanceConfig(scale=self.cfg.default_scale, sigma=self.cfg.default_sigma,
                                       stochastic_steps=self.cfg.default_stochastic_steps)
        self.state_dir = Path(self.cfg.state_dir).expanduser()
        self.current: StoredGuidance | None = None
        self._rev = 0  # increases with every accepted change, clears included
        self.set_pub = self.create_publisher(GuidanceSet, "guidance/set", LATCHED)
        self.state_pub = self.create_publisher(GuidanceState, "guidance/state", LATCHED)
        self.goal_images_pub = self.create_publisher(Image, goal_images.TOPIC, LATCHED)
        qos = service_qos(self.cfg.request_queue_depth)
        requests = MutuallyExclusiveCallbackGroup()  # set/clear: one at a time, no lock needed
        self.embed_client = self.create_client(EmbedImages, "embed_images", qos_profile=qos,
                                               callback_group=MutuallyExclusiveCallbackGroup())
        self.create_service(SetGuidance, "set_guidance", self._on_set, qos_profile=qos, callback_group=requests)
        self.create_service(Trigger, "clear_guidance", self._on_clear, qos_profile=qos, callback_group=requests)
        self._restore()
        self.get_logger().info("guidance manager ready")

    # ------------------------------------------------------------------------- state
    def _restore(self) -> None:
        self._rev = stored_revision(self.state_dir)  # also after a clear, so revisions never repeat
        try:
            stored = load_guidance(self.state_dir)  # validates the store's own invariants (ValueError)
            if stored is not None:  # and the limits of this manager, as for a request
                request = self._as_request(stored)
                validate_request(request, self.cfg)
                request_settings(request, self.defaults, self.cfg)
        except ValueError as exc:  # corrupt store: say so, move it aside, run unguided
            try:
                aside = quarantine_store(self.state_dir, self._rev)
                kept = f"; its files were moved to {aside}" if aside is not None else ""
            except OSError as move_exc:
                kept = f"; could not move its files aside ({clip_text(move_exc, 200)})"
            self.get_logger().error(f"{clip_text(one_line(exc), 600)}{kept}; starting unguided (revision {self._rev})")
            self._publish(None, "restore_failed")
            return
        if stored is None:
            self._publish(None, "initial")
            return
        self.current = stored
        self._rev = max(self._rev, stored.revision)
        self._publish(stored, "restored")
        self.get_logger().info(f"restored guidance revision {stored.revision} "
                               f"({len(stored.positive)} positive, {len(stored.negative)} negative) "
                               f"from {self.state_dir}")

    def _as_request(self, g: StoredGuidance) -> SetGuidance.Request:
        """The parameters and counts of stored guidance as a request (images of the smallest accepted size
        stand for the goals: their tokens are checked by the store), for :func:`validate_request` and
        :func:`request_settings`."""
        from sensor_msgs.msg import Image

        if not (abs(g.scale) <= FLOAT32_MAX and abs(g.sigma) <= FLOAT32_MAX and 0 <= g.stochastic_steps < 2**32):
            raise MessageError(f"scale {g.scale:g}, sigma {g.sigma:g} or stochastic_steps {g.stochastic_steps} does "
                               "not fit the guidance messages (float32, uint32)")
        req = SetGuidance.Request()
        req.scale, req.sigma, req.stochastic_steps = float(g.scale), float(g.sigma), int(g.stochastic_steps)
        req.set_scale = True  # the stored scale as it is (0 included)
        side = self.cfg.min_image_side
        placeholder = Image(height=side, width=side, encoding="mono8", step=side, data=bytes(side * side))
        req.positive = [placeholder] * len(g.positive)
        req.negative = [placeholder] * len(g.negative)
        return req

    def _publish(self, g: StoredGuidance | None, source: str) -> None:
        now = self.get_clock().now().to_msg()
        msg, state = GuidanceSet(), GuidanceState()
        msg.header.stamp = state.header.stamp = now
        state.source = source
        if g is not None:
            msg.active = state.active = True
            msg.positive = [embedding_to_msg(t, g.grid_hw, g.embedder_id) for t in g.positive]
            msg.negative = [embedding_to_msg(t, g.grid_hw, g.embedder_id) for t in g.negative]
            msg.scale = state.scale = float(g.scale)
            msg.sigma = state.sigma = float(g.sigma)
            msg.stochastic_steps = state.stochastic_steps = int(g.stochastic_steps)
            msg.revision = state.revision = int(g.revision)
            state.num_positive, state.num_negative = len(g.positive), len(g.negative)
        else:
            msg.revision = state.revision = self._rev
        self.set_pub.publish(msg)
        self.state_pub.publish(state)

    # ------------------------------------------------------------------------- services
    def _embed(self, images) -> tuple[np.ndarray, tuple[int, int], str]:
        if not self.embed_client.wait_for_service(timeout_sec=5.0):
            raise MessageError("the embedding service 'embed_images' is not available")
        done = threading.Event()
        future = self.embed_client.call_async(EmbedImages.Request(images=list(images)))
        future.add_done_callback(lambda _f: done.set())
        # the reply is handled by the client's own callback group on another executor thread; wait in
        # slices so that a shutdown (SIGINT) never waits for the full timeout
        deadline = time.monotonic() + self.cfg.embed_timeout_s
        while not done.wait(0.05):
            if not self.context.ok():
                future.cancel()
                raise MessageError("the guidance manager is shutting down")
            if time.monotonic() > deadline:
                future.cancel()
                raise MessageError(f"embedding timed out after {self.cfg.embed_timeout_s} s")
        res = future.result()
        if res is None or not res.success:
            raise MessageError(f"embedding failed: {clip_text(getattr(res, 'message', 'no reply'), 200)}")
        if len(res.embeddings) != len(images):
            raise MessageError(f"the embedding service returned {len(res.embeddings)} embeddings "
                               f"for {len(images)} images")
        tokens = np.stack([embedding_from_msg(e) for e in res.embeddings])
        first = res.embeddings[0]
        return tokens, (int(first.grid_h), int(first.grid_w)), first.embedder_id

    def _on_set(self, req: SetGuidance.Request, res: SetGuidance.Response) -> SetGuidance.Response:
        res.revision = self._rev
        try:
            validate_request(req, self.cfg, retune=self.current is not None)
            cur = self.current
            in_force = self.defaults if cur is None else self.defaults.retuned(
                scale=cur.scale, sigma=cur.sigma, stochastic_steps=cur.stochastic_steps)
            settings = request_settings(req, in_force, self.cfg)
            if not req.positive and not req.negative:  # retune: the goal images in force, new s / sigma / M
                tokens = np.concatenate([cur.positive, cur.negative]) if len(cur.negative) else cur.positive
                grid, emb_id, n_pos = cur.grid_hw, cur.embedder_id, len(cur.positive)
            else:
                tokens, grid, emb_id = self._embed(list(req.positive) + list(req.negative))
                n_pos = len(req.positive)
            new = StoredGuidance(
                positive=tokens[:n_pos], negative=tokens[n_pos:], grid_hw=grid, embedder_id=emb_id,
                scale=settings.scale, sigma=settings.sigma, stochastic_steps=settings.stochastic_steps,
                revision=self._rev + 1)
        except Exception as exc:  # MessageError: a bad request; anything else must not kill the node either
            reason = exc if isinstance(exc, MessageError) else f"internal error: {type(exc).__name__}: {exc}"
            res.success = False
            res.message = clip_text(f"rejected: {reason}", MAX_REPLY_CHARS) + \
                f" (guidance revision {res.revision} stays in force)"
            self.get_logger().warning(res.message)
            return res
        try:
            save_guidance(self.state_dir, new)
        except OSError as exc:
            self.get_logger().error(f"could not store guidance in {self.state_dir}: {exc}")
        self.current = new
        self._rev = new.revision
        self._publish(new, "service")
        if req.positive or req.negative:
            self._publish_goal_images(req, new.revision)
        res.success = True
        res.num_positive, res.num_negative = len(new.positive), len(new.negative)
        res.revision = new.revision
        res.message = (f"guidance revision {new.revision}: {res.num_positive} positive, {res.num_negative} negative, "
                       f"scale {new.scale:g}, sigma {new.sigma:g}, M {new.stochastic_steps}")
        self.get_logger().info(res.message)
        return res

    def _publish_goal_images(self, req: SetGuidance.Request, revision: int) -> None:
        """``guidance/goal_images``: the request's (validated) goal images as one mosaic, for viewers."""
        try:
            mosaic, layout = goal_images.goal_mosaic([rgb_from_image_msg(m) for m in req.positive],
                                                     [rgb_from_image_msg(m) for m in req.negative], revision)
        except (MessageError, ValueError) as exc:   # never fails a request that was accepted
            self.get_logger().warning(f"goal images not published for viewers: {clip_text(one_line(exc), 300)}")
            return
        self.goal_images_pub.publish(rgb_to_image_msg(mosaic, self.get_clock().now().to_msg(),
                                                      goal_images.layout_text(layout)))

    def _on_clear(self, _req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        rev = self._rev
        self.current = None
        self._rev += 1
        try:
            clear_guidance(self.state_dir, revision=self._rev)  # recorded: revisions never repeat after a restart
        except OSError as exc:
            self.get_logger().error(f"could not record the clear in {self.state_dir}: {exc}")
        self._publish(None, "cleared")
        self.goal_images_pub.publish(Image(header=Header(stamp=self.get_clock().now().to_msg(), frame_id="cleared")))
        res.success, res.message = True, f"guidance cleared (was revision {rev}); running the base policy"
        return res


def main(argv=None) -> int:
    from dynaguide_ros.node_main import spin_node

    # two groups (requests, embedding replies) -> two threads are all it can use
    return spin_node(GuidanceManagerNode, argv, threads=2)
