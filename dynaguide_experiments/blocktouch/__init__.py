"""BlockTouch: the paper's 2-D steering experiment (appendix A.1), end to end on a CPU.

Modules: :mod:`.env` (batched numpy physics + rendering), :mod:`.layouts` (random reset and the five
evaluation layouts), :mod:`.scripted` (Bezier demonstration collector writing the HDF5 layout),
:mod:`.classifier` (the outcome classifier DynaGuide (a) guides with),
:mod:`.evaluation` (lockstep rollouts, Wilson intervals), :mod:`.methods` (base / guided / sampling
action samplers), :mod:`.pipeline` (resumable stages), :mod:`.report` (table + figures), :mod:`.cli`.
"""
