"""The simulated peg-in-hole cell, free of ROS and sockets (docs/sim.md).

Modules:
    geometry     dimensions of the peg, the block and the hole
    kinematics   FK, Jacobian, batched IK of the UR5e-like arm
    servo        joint servo: follows commands within limits, holds on timeout/HOLD/unarmed
    contact      peg-on-block constraint, forces, jamming
    episode      seeded hole positions, success criteria, outcome records
    cell         SimCell: the three above stepped at a fixed physics rate; its sensor windows
    reference    the closed-loop scripted demonstrator (infer/reset) and what it observes
    loop         PipelineLoop: a policy through the chunk executor driving the cell in-process
    live         LiveCell: the cell on the wall clock, shared by sim_cell's threads
    render       camera images of any of the cell's states
"""
from vla_insertion.core.sim.cell import CellParams, CellState, SimCell
from vla_insertion.core.sim.contact import ContactModel, ContactParams, ContactResult
from vla_insertion.core.sim.episode import (
    episode_spec, EpisodeParams, EpisodeRecord, EpisodeSpec)
from vla_insertion.core.sim.loop import EpisodeMetrics, PipelineLoop, PipelineTiming
from vla_insertion.core.sim.reference import (
    reference_observation, ReferenceObservation, ReferenceParams, ReferencePolicy)
from vla_insertion.core.sim.servo import JointServo, ServoCommand, ServoParams

__all__ = [
    'CellParams', 'CellState', 'SimCell', 'ContactModel', 'ContactParams', 'ContactResult',
    'EpisodeParams', 'EpisodeRecord', 'EpisodeSpec', 'episode_spec', 'EpisodeMetrics',
    'PipelineLoop', 'PipelineTiming', 'reference_observation', 'ReferenceObservation',
    'ReferenceParams', 'ReferencePolicy', 'JointServo', 'ServoCommand', 'ServoParams',
]
