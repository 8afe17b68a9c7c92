"""The paper's CALVIN experiments on the CALVIN-like PyBullet table (``calvin_bridge``).

* :mod:`.config` — :class:`CalvinExperimentConfig` (``config/calvin_experiment.yaml``): data, models,
  training, evaluation settings in one typed place.
* :mod:`.pipeline` — resumable stages: merge collected segments, embed frames, train the base policy
  and the latent dynamics model, export inference checkpoints.
* :mod:`.diagnostics` — does the dynamics model's predicted outcome tell behaviours apart?
* :mod:`.harness` — batched closed-loop evaluation (``dynaguide calvin eval``).
"""
