"""run_ticks: the live loop of action_expert and policy_client (core/expert/live.py)."""
import pytest

from vla_insertion.core.expert.live import ExpertDiagnostics, run_ticks


class Ticker:
    """Allows `n` ticks, each this late."""

    def __init__(self, n: int, lateness_s: float) -> None:
        self.left, self.last_lateness_s = n, lateness_s

    def wait(self) -> bool:
        self.left -= 1
        return self.left >= 0


def test_every_tick_runs_and_its_lateness_is_recorded():
    diagnostics, ticks = ExpertDiagnostics(), []
    run_ticks(Ticker(3, 0.002), lambda: ticks.append(1), diagnostics, pytest.fail, 'loop')
    assert len(ticks) == 3 and diagnostics.failed == ''
    assert diagnostics.lateness_ms.summary()['p99'] == pytest.approx(2.0)


def test_an_unexpected_error_is_loud_recorded_and_propagates():
    diagnostics, said = ExpertDiagnostics(), []

    def tick():
        raise RuntimeError('boom')

    with pytest.raises(RuntimeError, match='boom'):
        run_ticks(Ticker(3, 0.0), tick, diagnostics, said.append, 'action loop')
    assert diagnostics.failed == 'RuntimeError: boom'
    assert said == ['action loop stopped by an unexpected error: RuntimeError: boom']
