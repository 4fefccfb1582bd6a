"""What a policy is worth, and what a run did, in numbers (ROS-free).

Modules:
    summary        the one episode summary: success rate, outcomes, forces, smoothness
    run_summary    a live run's numbers: the demo's status lines and final summary
    open_loop      the policy on a recording: open loop, and the sync / threaded modes
    metrics        action chunks against a recorded trajectory, in plain numpy
    policy_report  a trained expert measured three ways (open loop, feature age, closed loop)
    plots          evaluation plots (matplotlib, Agg)
"""
