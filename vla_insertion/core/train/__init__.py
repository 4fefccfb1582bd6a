"""From recordings to a trained policy (ROS-free); docs/training.md.

Modules:
    demonstrations  demonstrations (and DAgger rounds) recorded in-process as bags
    feature_cache   the VLM once over recorded bags, at the times it would run live
    split           episodes and the train/validation split by episode
    feature_age     how old the features are at use, modelled from recordings
    dataset         training samples: the runner's inputs at every tick, and their targets
    trainer         the one training loop (DDP-capable)
    fit             stage 1: bags -> cache -> dataset -> trainer -> checkpoint
    stage2          stage 2: LoRA on the VLM
"""
