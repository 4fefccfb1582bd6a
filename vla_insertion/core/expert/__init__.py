"""The action expert: the fast half of the dual-rate VLA policy (ROS-free).

- `model`: the PyTorch network (sensor encoder, VL and state projections, fusion, heads).
- `checkpoint`: safetensors weights + JSON metadata, validated on load.
- `policy`: `ExpertPolicy`, the `infer()/reset()` wrapper the node and the evaluator use.
- `staleness`: the rules deciding whether a tick may publish a chunk.
- `inputs`: `LatestInputs`, the newest inputs of a tick (the robot at capture, the prefix).
- `live`: the live node's runner from ExpertConfig, and its diagnostics.
"""
