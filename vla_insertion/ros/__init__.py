"""The rclpy library the nodes and the ROS tools share (no module-level mutable state).

Modules:
    qos          QoS profiles and endpoints on the topic table's topics
    parameters   ROS parameters from config dataclasses; command-line helpers
    monitoring   /diagnostics and vla/stats of every node
    lifecycle    the managed-node base and the exit codes of a failed start
    run          run_node, every node's main()
    monitor      MonitorNode: the pipeline's health in one place (the monitor node, the demo)
    executor_operator  arm, disarm and reset the chunk executor over its services
"""
