"""ExpertRunner: the one policy tick, shared by the live node and every offline tool.

    newest features, sensor window, robot state at time t
        -> staleness rules (core.expert.staleness.check_inputs)
        -> policy.infer under torch.inference_mode()
        -> chunk stamped t, with its sequence and reuse index
        -> ROS-free statistics (published, refused by reason, latency, reuse, ages)

The action_expert node calls `tick` from its loop with the newest inputs it holds; open-loop
evaluation, both comparison modes and training-sample collection call it with the newest
recorded inputs at each tick time. All of them therefore refuse exactly the ticks the robot
would refuse. A refused tick returns the Decision with its reason (also the diagnostics key
`drops.<reason>`) and no chunk.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
import math

import numpy as np

from vla_insertion.core.data import (
    ActionChunkData, MODE_ASYNC, NodeStatsData, RobotState, SensorWindowData, VLFeatureData)
from vla_insertion.core.expert.capture import RobotHistory
from vla_insertion.core.expert.checkpoint import ContractMismatch
from vla_insertion.core.expert.policy import ObservationError
from vla_insertion.core.expert.staleness import (
    BAD_OBSERVATION, check_inputs, CONTRACT_MISMATCH, Decision, PolicyRefusal, REFUSALS,
    ReuseCounter, StalenessLimits)
from vla_insertion.core.health import DropCounter, HealthReport, LatencyStats
from vla_insertion.core.interfaces import ExpertObservation

# Refusals shown as ERROR in /diagnostics: they do not go away by waiting.
ERROR_REASONS = (CONTRACT_MISMATCH,)


@dataclass(frozen=True)
class TickResult:
    """The outcome of one tick: the decision and, when it published, the chunk."""

    decision: Decision
    chunk: ActionChunkData | None = None

    @property
    def published(self) -> bool:
        return self.chunk is not None


class RunnerStats:
    """What the runner counts; the node turns it into /diagnostics and vla/stats.

    `reasons`: refusal reasons of the policy's own (PolicyRefusal), reported from the start.
    """

    def __init__(self, reasons: tuple[str, ...] = ()) -> None:
        self.published = 0
        self.refused = DropCounter(reasons)
        self.inference_ms = LatencyStats(maxlen=600)
        self.reuse_index = LatencyStats(maxlen=100)
        self.chunks_per_features = LatencyStats(maxlen=50)  # chunks each feature set served
        self.feature_age_s = LatencyStats(maxlen=100)
        self.sensor_age_s = LatencyStats(maxlen=100)
        self.last_refusal = ''         # 'reason: detail' of the newest refused tick
        self.last_refusal_reason = ''
        self._last_reuse = 0

    def add_chunk(self, chunk: ActionChunkData) -> None:
        self.published += 1
        self.inference_ms.add(chunk.inference_ms)
        self.reuse_index.add(chunk.reuse_index)
        if chunk.reuse_index == 1 and self._last_reuse > 0:
            self.chunks_per_features.add(self._last_reuse)
        self._last_reuse = chunk.reuse_index
        self.feature_age_s.add(chunk.feature_age_s)
        self.sensor_age_s.add(chunk.sensor_age_s)

    def add_refusal(self, decision: Decision) -> None:
        self.refused.count(decision.reason)
        self.last_refusal = f'{decision.reason}: {decision.detail}'
        self.last_refusal_reason = decision.reason

    def values(self) -> dict:
        """Plain numbers for /diagnostics.

        Every refusal reason is present from the start, 0 when none: a key that appears only
        at its first drop cannot be plotted or alarmed on.
        """
        refused = self.refused.as_dict()
        latency = self.inference_ms.summary()
        return {
            'chunks': self.published,
            'inference_ms_mean': latency['mean'], 'inference_ms_p99': latency['p99'],
            'reuse_index_mean': self.reuse_index.summary()['mean'],
            'chunks_per_features_mean': self.chunks_per_features.summary()['mean'],
            'feature_age_s_mean': self.feature_age_s.summary()['mean'],
            'sensor_age_s_mean': self.sensor_age_s.summary()['mean'],
            **{f'drops.{k}': refused.get(k, 0) for k in sorted(set(REFUSALS) | set(refused))},
        }

    def node_stats(self, stamp_s: float, rate_hz: float) -> NodeStatsData:
        """Return the plottable vla/stats numbers (NodeMonitor fills in the node's name)."""
        latency = self.inference_ms.summary()
        return NodeStatsData(
            stamp_s=stamp_s, node='', rate_hz=rate_hz, latency_mean_ms=latency['mean'],
            latency_p99_ms=latency['p99'], input_age_s=self.feature_age_s.summary()['mean'],
            published=self.published, dropped=self.refused.total())

    def status_line(self, rate_hz: float) -> str:
        """Return the one-line status a person watching the terminal wants."""
        refused = {k: v for k, v in self.refused.as_dict().items() if v}
        line = (f'Actions: {self.published} | rate {rate_hz:.1f} Hz | avg '
                f'{self.inference_ms.summary()["mean"]:.1f} ms | reuse avg '
                f'{self.chunks_per_features.summary()["mean"]:.1f} | feature age avg '
                f'{self.feature_age_s.summary()["mean"]:.2f} s')
        if refused:
            line += ' | refused ' + ', '.join(f'{k}={v}' for k, v in sorted(refused.items()))
        return line


class ExpertRunner:
    """Apply the staleness rules, run the policy and stamp the chunk, at a given time.

    `policy` is an ExpertPolicy (or anything with `infer`, `reset` and `meta`: a remote policy,
    core/remote/policy.py, whose meta has no contract digest). Training-sample collection, which
    only needs the decisions, passes `policy=None` with the contract digest and feature shape
    the checkpoint will have. `refusals`: the reasons the policy may refuse with
    (PolicyRefusal), counted from 0.
    """

    def __init__(self, policy, limits: StalenessLimits, mode: int = MODE_ASYNC, *,
                 contract_digest: str | None = None,
                 feature_shape: tuple[int, int] | None = None,
                 refusals: tuple[str, ...] = ()) -> None:
        self.policy = policy
        self.limits = limits
        self.mode = mode
        meta = policy.meta if policy is not None else None
        self.contract_digest = contract_digest or (meta.contract_digest if meta else '')
        self.feature_shape = feature_shape or (meta.feature_shape if meta else None)
        self.refusals = refusals
        self.stats = RunnerStats(refusals)
        self.robots = RobotHistory()   # for the robot state at the features' capture
        self._reuse = ReuseCounter()
        self._sequence = 0

    def decide(self, features: VLFeatureData | None, window: SensorWindowData | None,
               robot: RobotState | None, now_s: float, no_pose: bool = False) -> Decision:
        """Apply the staleness rules at `now_s`; a refusal is counted."""
        decision = check_inputs(features, window, robot, now_s, self.limits,
                                self.contract_digest, self.feature_shape, no_pose)
        if not decision.publish:
            self.stats.add_refusal(decision)
        return decision

    def tick(self, features: VLFeatureData | None, window: SensorWindowData | None,
             robot: RobotState | None, now_s: float,
             prefix: np.ndarray | None = None,
             capture_robot: RobotState | None = None, no_pose: bool = False) -> TickResult:
        """One tick at `now_s` on the newest inputs; `prefix` (d, A): committed actions.

        `capture_robot`: the robot state when the features' views were taken, where the caller
        knows it (a recording); otherwise the runner looks it up in the states it was given.
        `no_pose`: robot is None for want of a tool pose alone (the refusal no_tool_pose).
        """
        if robot is not None:
            self.robots.add(robot)
        decision = self.decide(features, window, robot, now_s, no_pose)
        if not decision.publish:
            return TickResult(decision)
        if capture_robot is None:
            capture_robot = self.robots.at(features.stamp_s)
        obs = ExpertObservation(features, window, robot, now_s, prefix, capture_robot)
        try:
            chunk = self.policy.infer(obs)
        except ContractMismatch as exc:
            return self._refused(replace(decision, publish=False, reason=CONTRACT_MISMATCH,
                                         detail=str(exc)))
        except ObservationError as exc:
            return self._refused(replace(decision, publish=False, reason=BAD_OBSERVATION,
                                         detail=str(exc)))
        except PolicyRefusal as exc:   # the policy's own reason (a remote server's error)
            return self._refused(replace(decision, publish=False, reason=exc.reason,
                                         detail=str(exc)))
        self._sequence += 1
        chunk = replace(chunk, sequence=self._sequence, mode=self.mode,
                        reuse_index=self._reuse.use(features.sequence))
        self.stats.add_chunk(chunk)
        return TickResult(decision, chunk)

    def refuse(self, reason: str, detail: str) -> TickResult:
        """Count a tick refused before the rules ran (e.g. sync mode's feature timeout)."""
        return self._refused(Decision(False, reason, detail))

    def _refused(self, decision: Decision) -> TickResult:
        self.stats.add_refusal(decision)
        return TickResult(decision)

    def reset(self) -> None:
        """Start a new run: sequences, reuse counting, statistics and the policy's state."""
        if self.policy is not None:
            self.policy.reset()
        self._reuse.reset()
        self._sequence = 0
        self.robots.clear()
        self.stats = RunnerStats(self.refusals)


def expert_health(stats: RunnerStats, published_before: int, rate_hz: float,
                  target_rate_hz: float, failed: str = '') -> HealthReport:
    """Return the expert's /diagnostics level and message since the previous report.

    ERROR when the loop died or the newest refusal cannot clear by itself (contract mismatch),
    WARN when nothing was published since the last report (saying why) or the rate is low.
    """
    report = HealthReport()
    if failed:
        report.escalate('ERROR', f'action loop stopped: {failed}')
    if stats.published == published_before:
        if stats.last_refusal:
            level = 'ERROR' if stats.last_refusal_reason in ERROR_REASONS else 'WARN'
            report.escalate(level, f'not publishing: {stats.last_refusal}')
        else:
            report.escalate('WARN', 'not publishing yet')
    elif math.isfinite(rate_hz) and rate_hz < 0.9 * target_rate_hz:
        report.escalate('WARN', f'rate {rate_hz:.2f} Hz < rate_hz {target_rate_hz}')
    return report
