"""run_node's choice of executor: events, or the fallback that Humble runs, and its switch."""
from __future__ import annotations

import pytest
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node

from vla_insertion.core.config import ConfigError
from vla_insertion.ros import run


@pytest.mark.parametrize('env, choice', [({}, 'auto'), ({'VLA_EXECUTOR': ''}, 'auto'),
                                         ({'VLA_EXECUTOR': 'auto'}, 'auto'),
                                         ({'VLA_EXECUTOR': 'multi_threaded'}, 'multi_threaded')])
def test_executor_choice_reads_the_switch(env, choice):
    assert run.executor_choice(env) == choice


@pytest.mark.parametrize('value', ['events', 'MultiThreaded', 'single'])
def test_an_unknown_executor_is_a_configuration_error_naming_the_variable(value):
    with pytest.raises(ConfigError, match='VLA_EXECUTOR must be one of auto, multi_threaded, '
                                          f'got {value!r}'):
        run.executor_choice({'VLA_EXECUTOR': value})


@pytest.fixture
def node(rclpy_context):
    node = Node('executor_choice', context=rclpy_context)
    yield node
    node.destroy_node()


def _kind(node, choice: str, parallel: bool = False) -> str:
    node.needs_parallel_callbacks = parallel
    executor = run._executor_for(node, 2, choice)
    try:
        if isinstance(executor, MultiThreadedExecutor):
            return 'fallback'
        return type(executor).__name__
    finally:
        executor.shutdown(timeout_sec=1.0)


def test_the_switch_forces_the_fallback_executor(node):
    assert _kind(node, 'multi_threaded') == 'fallback'
    assert _kind(node, 'auto', parallel=True) == 'fallback'


@pytest.mark.skipif(run.EventsExecutor is None, reason='rclpy has no EventsExecutor (Humble)')
def test_auto_spins_the_events_executor_where_rclpy_has_it(node):
    assert _kind(node, 'auto') == 'EventsExecutor'
