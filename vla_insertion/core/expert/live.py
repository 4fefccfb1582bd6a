"""The live action expert's core: its runner built from ExpertConfig, and what it reports.

    load_runner(config)      checkpoint -> ExpertPolicy (device, precision, flow steps, seed,
                             warmed up when live) -> ExpertRunner with the staleness rules and
                             the mode; the one builder of a runner (core.orchestration.builders
                             calls it for the tools)
    apply_live(runner, ...)  the parameters that change while it runs
    ExpertDiagnostics        what a live loop reports beside the runner's statistics
    run_ticks(ticker, ...)   the live loop: a tick at every deadline, its lateness recorded
                             (action_expert's and policy_client's threads)

The runner counts chunks and refusals (`RunnerStats`, the same offline); a live loop adds its
publication rate, how late its ticks start, whether it died, and the feature contract the VLM
announces on vla/feature_contract, so that a `contract_mismatch` refusal names the fields that
differ from the checkpoint's. `ExpertDiagnostics.report` assembles /diagnostics and vla/stats
from both. The action_expert node is the shell around these and core.expert.inputs.
"""
from __future__ import annotations

import os
from pathlib import Path
import time

import torch

from vla_insertion.core.config import ConfigError, ExpertConfig
from vla_insertion.core.data import MODE_ASYNC, MODE_SYNC, NodeStatsData
from vla_insertion.core.expert.checkpoint import CheckpointError, load_checkpoint
from vla_insertion.core.expert.policy import ExpertPolicy
from vla_insertion.core.expert.runner import expert_health, ExpertRunner
from vla_insertion.core.expert.staleness import CONTRACT_MISMATCH, Decision, StalenessLimits
from vla_insertion.core.feature_contract import describe_mismatch, FeatureContract
from vla_insertion.core.health import HealthReport, LatencyStats, RateMeter


def load_runner(config: ExpertConfig, limits: StalenessLimits | None = None, *,
                live: bool = True) -> ExpertRunner:
    """Return the runner of `config.checkpoint`: the one builder, for the node and every tool.

    The policy gets the config's device, precision, flow steps and seed (-1: fresh noise every
    chunk); the runner its staleness rules (`limits`, default the config's) and mode. `live`
    (the node): torch's thread count is set first (`torch_threads` > 0, process-wide) and the
    policy warmed up; offline tools share their process with a VLM and leave both alone.
    A missing or bad checkpoint is a ConfigError saying how to fix it.
    """
    if live and config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    try:
        checkpoint = load_checkpoint(config.checkpoint, device=config.device)
    except CheckpointError as exc:
        where = ('' if Path(config.checkpoint).is_absolute() else
                 f' (relative to the working directory {os.getcwd()})')
        raise ConfigError(f'checkpoint: {exc}{where}; pass checkpoint:=<folder> to the '
                          'launch file or -p checkpoint:=<folder>') from None
    policy = ExpertPolicy(checkpoint, device=config.device, steps=config.flow_steps or None,
                          seed=None if config.seed < 0 else config.seed,
                          precision=config.precision)
    if live:
        policy.warm_up()
    return ExpertRunner(policy, limits or StalenessLimits.from_config(config),
                        MODE_SYNC if config.mode == 'sync' else MODE_ASYNC)


def apply_live(runner: ExpertRunner, old: ExpertConfig, new: ExpertConfig) -> None:
    """Apply `new`'s live parameters (staleness limits, flow steps) to a configured runner."""
    limits = StalenessLimits.from_config(new)
    if limits != runner.limits:
        runner.limits = limits
    if new.flow_steps != old.flow_steps:
        runner.policy.set_steps(new.flow_steps or None)


class ExpertDiagnostics:
    """Rate, tick lateness, the loop's failure and the VLM's contract; read by any thread."""

    def __init__(self) -> None:
        self.rate = RateMeter(window_s=5.0)      # published chunks
        self.lateness_ms = LatencyStats(maxlen=600)  # tick start after its deadline [ms]
        self.failed = ''               # the unexpected error that stopped the loop
        self.vlm_contract: FeatureContract | None = None  # as announced by the VLM
        self.mismatch = ''             # what differs between it and the checkpoint's
        self._published_at_report = 0

    def new_checkpoint(self, runner: ExpertRunner) -> None:
        """Start the statistics of the checkpoint `runner` has just loaded."""
        self.rate = RateMeter(window_s=5.0)
        self._published_at_report = 0
        self.mismatch = self._describe(runner)

    def published(self) -> None:
        self.rate.tick(time.monotonic())

    def rate_hz(self) -> float:
        return self.rate.rate_hz(time.monotonic())

    def contract_announced(self, contract_json: str, runner: ExpertRunner | None) -> str:
        """Take the VLM's contract (ConfigError if unreadable); return the error to log, or ''.

        `runner`: the loaded checkpoint's, None while none is loaded.
        """
        self.vlm_contract = FeatureContract.from_json(contract_json)
        self.mismatch = self._describe(runner)
        return self.mismatch and (
            f'{self.mismatch}: every feature set will be refused ({CONTRACT_MISMATCH}); run the '
            'VLM as the checkpoint was trained, or use a checkpoint trained on these features')

    def _describe(self, runner: ExpertRunner | None) -> str:
        """Return what differs between the VLM's contract and the checkpoint's, or ''."""
        contract = self.vlm_contract
        if runner is None or contract is None or \
                contract.digest == runner.policy.meta.contract_digest:
            return ''
        return describe_mismatch(runner.policy.meta.contract, contract)

    def explain(self, refusal: Decision) -> str:
        """Return the warning for a refused tick, naming a contract mismatch's fields if known."""
        mismatch, contract, why = self.mismatch, self.vlm_contract, refusal.detail
        if refusal.reason == CONTRACT_MISMATCH and mismatch and contract is not None \
                and contract.digest in why:
            why = f'{why}: {mismatch}'
        return f'no action chunk: {refusal.reason}: {why}'

    def report(self, runner: ExpertRunner | None, state: str, mode: str,
               target_rate_hz: float, checkpoint: str, overruns: int,
               stamp_s: float) -> tuple[HealthReport, NodeStatsData]:
        """Return /diagnostics and vla/stats of the node in lifecycle `state`.

        `runner`: the loaded checkpoint's, None while none is loaded.
        """
        rate = self.rate_hz()
        if runner is None:
            report = HealthReport(values={'lifecycle_state': state, 'rate_hz': rate})
            report.escalate('WARN', f'{state}: no checkpoint loaded (configure loads '
                                    f'{checkpoint})')
            return report, NodeStatsData(stamp_s=stamp_s, node='')
        stats = runner.stats
        if state == 'active':
            report = expert_health(stats, self._published_at_report, rate, target_rate_hz,
                                   self.failed)
            if self.mismatch and CONTRACT_MISMATCH in report.message:
                report.message += f' ({self.mismatch})'
        else:
            report = HealthReport()
            report.escalate('WARN', f'{state}: not ticking (activate starts the loop)')
        self._published_at_report = stats.published
        meta = runner.policy.meta
        report.values = {
            'lifecycle_state': state, 'rate_hz': rate, 'mode': mode, **stats.values(),
            'tick_lateness_ms_p99': self.lateness_ms.summary()['p99'], 'overruns': overruns,
            'untrained': meta.untrained, 'contract': meta.contract_digest,
            'vlm_contract': self.vlm_contract.digest if self.vlm_contract else '',
            'contract_mismatch': self.mismatch}
        return report, stats.node_stats(stamp_s, rate)

    def status_line(self, runner: ExpertRunner | None, state: str) -> str:
        if runner is None:
            return f'{state}: no checkpoint loaded'
        return runner.stats.status_line(self.rate_hz())


def run_ticks(ticker, tick, diagnostics: ExpertDiagnostics, fatal, what: str) -> None:
    """Call `tick()` at every deadline of `ticker` (a DeadlineTicker) until it stops.

    An unexpected error is made loud (`fatal(message)`, `diagnostics.failed`, which /diagnostics
    reports) and propagates: the thread ends, the node's health says why.
    """
    while ticker.wait():
        try:
            tick()
        except Exception as exc:  # unexpected: make it loud, then let it propagate
            failed = diagnostics.failed = f'{type(exc).__name__}: {exc}'
            fatal(f'{what} stopped by an unexpected error: {failed}')
            raise
        diagnostics.lateness_ms.add(ticker.last_lateness_s * 1e3)
