"""``ros2 launch dynaguide_ros calvin_sim.launch.py [params_file:=...]`` — the CALVIN simulation graph.

Nodes from ``dynaguide_ros.graphs.GRAPHS["calvin_sim"]``, parameters from ``config/calvin_sim.yaml``:
the same description ``dynaguide launch calvin_sim`` (pip installs) uses.
"""

from dynaguide_ros.launch_description import generate_graph_launch_description


def generate_launch_description():
    return generate_graph_launch_description("calvin_sim")
