"""ROS 2 nodes of the DynaGuide stack: thin adapters around ``dynaguide`` and ``calvin_bridge``.

Nothing here holds method logic.  Every process that uses rclpy goes through
:func:`dynaguide_ros.ros_env.apply_localhost_defaults` first, so DDS discovery stays on this machine
unless a user explicitly configures a robot network.
"""
