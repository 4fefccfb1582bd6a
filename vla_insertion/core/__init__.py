"""The ROS-free core: everything but the rclpy shells (docs/development.md has the map).

Shared vocabulary at the top (config, data, interfaces, topics, params, health, ticker,
artifacts, feature_contract); each concept in its subpackage: wire/ and bridge/ (the cell's
streams in), vlm/ and expert/ (the policy), executor/ (chunks -> commands), robot/ (the robot's
side of command_v1), sim/ (the simulated cell and the one in-process loop), bag/ (recordings),
train/, evaluation/, orchestration/.
"""
