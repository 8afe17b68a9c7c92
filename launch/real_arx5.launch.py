"""``ros2 launch dynaguide_ros real_arx5.launch.py [params_file:=...]`` — camera, embedding, guided
policy (``ee_delta`` chunks), guidance manager and the ARX5 driver.

Nodes from ``dynaguide_ros.graphs.GRAPHS["real_arx5"]``, parameters from ``config/real_arx5.yaml`` and
``config/arx5.yaml``: the same description ``dynaguide launch real_arx5`` uses.  Read docs/arx5.md first.
"""

from dynaguide_ros.launch_description import generate_graph_launch_description


def generate_launch_description():
    return generate_graph_launch_description("real_arx5")
