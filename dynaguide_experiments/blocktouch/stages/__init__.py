"""The BlockTouch stages — collect, train-policy, train-dynamics, eval, report — each resumable.

A stage whose output already exists is skipped unless ``force``; training resumes from the last
checkpoint of an interrupted run (``dynaguide.training``), evaluation from the last finished
(layout, method) cell.  Stage wall-clock times accumulate in ``<work_dir>/stages.json`` and are copied
into ``results.json``.

Modules, one stage each: :mod:`.collect`, :mod:`.training` (policy, goal policy, classifier, dynamics),
:mod:`.evaluate` (one cell, the eval stage), :mod:`.results` (``results.json``), :mod:`.sweep` and
:mod:`.diagnose` (validation-scene studies); and what they share: :mod:`.workdir` (output paths, stage
timing), :mod:`.models` (checkpoints and the samplers built from them), :mod:`.goals` (goal frames per layout),
:mod:`.calibration` (the latent guidance scale matched to the classifier's).

Outputs (``work_dir`` = data + checkpoints, not committed; ``results_dir`` = committed results)::

    <work_dir>/demos.hdf5                    scripted demonstrations (the policy's data)
    <work_dir>/failures.hdf5                 rejected scripted episodes that touched another block
                                             (outcome models only, when ``outcome_failures``)
    <work_dir>/{policy,goal_policy,classifier,dynamics}/latest/   safetensors checkpoints
    <work_dir>/eval/<layout>/<method>.json   one evaluation cell (+ .npz trajectories)
    <results_dir>/results.json, results.md, bars.png, trajectories_<layout>.png
"""
