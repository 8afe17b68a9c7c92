"""A CALVIN-like play table in PyBullet (ROS-free core).

* :mod:`calvin_bridge.procedural_table` writes the project's own play-table URDF (scene D layout),
* :mod:`calvin_bridge.scene_file` reads a table's layout from its own files (CALVIN's
  ``calvin_scene_<X>.yaml`` and block URDFs), so any CALVIN-format table works,
* :mod:`calvin_bridge.scene` loads it, or the genuine CALVIN assets, and reads/writes scene state,
* :mod:`calvin_bridge.env` is the gymnasium-style :class:`~calvin_bridge.env.CalvinEnv`,
* :mod:`calvin_bridge.labels` labels behaviours as the DynaGuide paper's evaluation does,
* :mod:`calvin_bridge.experts` holds scripted experts for the 14 behaviours,
* :mod:`calvin_bridge.datasets` records HDF5 demonstrations and goal sets.
"""

from calvin_bridge.config import CalvinEnvConfig

__all__ = ["CalvinEnvConfig"]
