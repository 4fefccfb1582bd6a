"""RemotePolicy: a policy server behind the model interface, ticked by the expert's runner.

    ExpertRunner.tick (core/expert/runner.py): the staleness rules on the newest ViewSet (in
    the features' place), sensor window and robot state, then
        RemotePolicy.infer(ExpertObservation)
            ObservationMapping.build      our views, state and prompt in the server's keys
            RemoteClient.infer            one request on the protocol's connection
            ActionMapping.to_ours         the reply in our 7 dims and units
        -> ActionChunkData stamped with the observation: the robot state sent (the older of
           its joints and pose stamps), where the server's first action starts, as the
           reference_policy node stamps; dt chunk_dt_s; inference_ms = the whole call;
           untrained False (a server's weights are its concern)

Why not the tick's time, as the expert's chunks: a server answers for the state it was sent;
stamped later by that state's age, a chunk that starts at the measured joints would pull a
moving arm back by its speed times that age at every chunk (openpi on the loaded
development machine: velocity jumps of 3-4 rad/s p50 at chunk boundaries, 0.012 once stamped
with the state). The committed prefix is aligned to the tick (core/expert/inputs.py),
a state's age (tens of ms) earlier than the chunk it conditions.

A refused call raises a PolicyRefusal, which the runner counts under its reason (refusals.py).
`remote_runner(config)` builds the runner of the policy_client node; the benchmark and the
tests build the same.
"""
from __future__ import annotations

from dataclasses import dataclass
import time

from vla_insertion.core.config import PolicyClientConfig
from vla_insertion.core.data import ActionChunkData, MODE_ASYNC
from vla_insertion.core.expert.runner import ExpertRunner
from vla_insertion.core.expert.staleness import StalenessLimits
from vla_insertion.core.interfaces import ExpertObservation
from vla_insertion.core.remote.client import RemoteClient
from vla_insertion.core.remote.codec import OPENPI
from vla_insertion.core.remote.gr00t import Gr00tConnection
from vla_insertion.core.remote.mapping import ActionMapping, ObservationMapping
from vla_insertion.core.remote.openpi import OpenpiConnection
from vla_insertion.core.remote.refusals import BadReply, REMOTE_REFUSALS


@dataclass(frozen=True)
class RemoteMeta:
    """What the runner and the diagnostics read of a policy's checkpoint, for a server."""

    contract_digest: str | None = None   # no feature contract: the staleness rule is skipped
    feature_shape: tuple[int, int] | None = None
    untrained: bool = False        # the server's weights are its concern, never flagged here


def connection_factory(config: PolicyClientConfig):
    """Return a callable making a new connection of the config's protocol."""
    if config.protocol == OPENPI:
        return lambda: OpenpiConnection(config.server_host, config.server_port,
                                        config.api_token, config.max_reply_bytes)
    return lambda: Gr00tConnection(config.server_host, config.server_port, config.api_token,
                                   config.max_reply_bytes, config.rtc_ramp_rate)


class RemotePolicy:
    """`infer(ExpertObservation) -> ActionChunkData`, `reset()`, `meta`: see the module."""

    def __init__(self, config: PolicyClientConfig, client: RemoteClient | None = None) -> None:
        self.config = config
        self.client = client or RemoteClient(
            connection_factory(config), connect_timeout_s=config.connect_timeout_s,
            reply_timeout_s=config.reply_timeout_s, reconnect_min_s=config.reconnect_min_s,
            reconnect_max_s=config.reconnect_max_s)
        self.observations = ObservationMapping(config)
        self.actions = ActionMapping(config)
        self.meta = RemoteMeta()

    def describe(self) -> str:
        cfg = self.config
        return (f'{cfg.protocol} server {self.client.address}: views {list(cfg.image_views)} '
                f'-> {list(cfg.image_keys)} at {cfg.image_width}x{cfg.image_height}, actions '
                f'{list(cfg.action_keys)}, dt {cfg.chunk_dt_s} s'
                + (', committed prefix sent' if cfg.send_prefix else ''))

    def infer(self, obs: ExpertObservation) -> ActionChunkData:
        t0 = time.perf_counter()
        joints = obs.robot.joint_positions_rad
        prefix = self.actions.to_server(obs.prefix, joints) if self.config.send_prefix \
            else None
        reply = self.client.infer(self.observations.build(obs.features, obs.robot, obs.window,
                                                          prefix))
        try:
            actions = self.actions.to_ours(reply.actions, joints)         # (H, 7)
        except BadReply as exc:
            self.client.count_bad_reply(exc)
            raise
        return ActionChunkData(
            stamp_s=obs.robot.stamp_s, actions=actions, dt_s=self.config.chunk_dt_s,
            feature_sequence=obs.features.sequence,
            feature_age_s=obs.now_s - obs.features.stamp_s,
            sensor_stamp_s=obs.window.stamp_s, sensor_age_s=obs.now_s - obs.window.stamp_s,
            inference_ms=(time.perf_counter() - t0) * 1e3, untrained=False)

    def reset(self) -> None:
        """Nothing is kept between calls on this side."""


def remote_runner(config: PolicyClientConfig, client: RemoteClient | None = None
                  ) -> ExpertRunner:
    """Return the runner of a remote policy: the expert's rules, refusals and stamps."""
    return ExpertRunner(RemotePolicy(config, client), StalenessLimits.from_config(config),
                        MODE_ASYNC, refusals=REMOTE_REFUSALS)
