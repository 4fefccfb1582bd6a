"""The receive side of the cell's bridges, free of ROS: socket loops, stream checks, clocks.

Modules:
    receive        ReceiveLoop: daemon socket loop, size caps, reopen, drops counted by cause
    stream         what a bridge checks before it publishes: session, sequence order, clock
    clock          sender clock -> local clock for every stream: offset, steps, bad times
    sensor_window  the newest `window_size` sensor samples as one contiguous run
    joint_map      ros2_control's joint_states (joint_state_broadcaster) -> the robot state

The byte layouts themselves are in core/wire/; the node shells in nodes/*_bridge.py.
"""
