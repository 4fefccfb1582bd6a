"""Running the cell's programs and building what runs, from params files (ROS-free).

Modules:
    builders          the one home of the executor, the policy and a sim run built from configs
    launch_table      what runs in the cell: the table behind the launch file and the demo
    cell_run          CellRun: the one orchestrator of the real nodes (demo, ros backend, replay)
    replay            timing-faithful replay of a bag into the real vlm_node and action_expert
    processes         ProcessGroup: start programs, stop them cleanly, report how they ended
    episode_listener  following sim_cell's episodes from outside (the episode_v1 stream)
    demo_policy       the demo's trained policy, built on this machine the first time
    verify            whether this machine is ready to run the cell
"""
