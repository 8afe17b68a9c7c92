"""BlockTouch: the paper's 2-D steering experiment (appendix A.1), end to end on a CPU.

Modules: :mod:`.env` (batched numpy physics + rendering), :mod:`.layouts` (random reset and the five
evaluation layouts), :mod:`.scripted` (Bezier demonstration collector writing the HDF5 layout),
:mod:`.dataset` (the demonstrations in memory and the training batches built from them),
:mod:`.classifier` (the outcome classifier DynaGuide (a) guides with),
:mod:`.evaluation` (lockstep rollouts, Wilson intervals), :mod:`.methods` (base / guided / sampling
action samplers), :mod:`.stages` (the resumable stages, one module each), :mod:`.report` (table + figures).
The command line is ``dynaguide blocktouch`` (:mod:`dynaguide_cli.blocktouch`).
"""
