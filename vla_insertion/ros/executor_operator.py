"""ExecutorOperator: what an operator does at the chunk executor, for tools and the demo.

    with ExecutorOperator() as operator:
        operator.enable(True)        # ros2 service call /chunk_executor/enable ... {data: true}
        operator.reset_fault()       # ros2 service call /chunk_executor/reset_fault ...

A small client node on its own rclpy context (so it never disturbs a tool's other nodes); every
call is bounded by a timeout and returns (success, message) instead of raising, so a tool can
log a refusal (e.g. "no robot state received yet") and carry on.
"""
from __future__ import annotations

import threading
import time

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_srvs.srv import SetBool, Trigger


class ExecutorOperator:
    """Call the chunk executor's ~/enable and ~/reset_fault services."""

    def __init__(self, executor_name: str = '/chunk_executor', timeout_s: float = 10.0) -> None:
        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self._node = Node('executor_operator', context=self._context)
        self._enable = self._node.create_client(SetBool, f'{executor_name}/enable')
        self._reset = self._node.create_client(Trigger, f'{executor_name}/reset_fault')
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._lock = threading.Lock()         # one call at a time (callbacks from threads)
        # set by close(): a call in flight (a re-arming thread's) ends within one spin and
        # later calls answer (False, ...) instead of touching a destroyed node
        self._closed = threading.Event()
        self.timeout_s = timeout_s

    def __enter__(self) -> ExecutorOperator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, client, request) -> tuple[bool, str]:
        with self._lock:
            if self._closed.is_set():
                return False, 'the operator is closed'
            # polled rather than client.wait_for_service(), so that close() ends the wait
            deadline = time.monotonic() + self.timeout_s
            while not client.service_is_ready():
                if self._closed.wait(0.05) or time.monotonic() >= deadline:
                    return False, f'{client.srv_name} is not available'
            future = client.call_async(request)
            deadline = time.monotonic() + self.timeout_s
            while not future.done() and time.monotonic() < deadline:
                if self._closed.is_set():
                    return False, 'the operator is closed'
                self._executor.spin_once(timeout_sec=0.05)
            if not future.done():
                return False, f'{client.srv_name} did not answer within {self.timeout_s} s'
            result = future.result()
            return bool(result.success), str(result.message)

    def enable(self, on: bool = True) -> tuple[bool, str]:
        return self._call(self._enable, SetBool.Request(data=on))

    def reset_fault(self) -> tuple[bool, str]:
        return self._call(self._reset, Trigger.Request())

    def close(self) -> None:
        self._closed.set()
        with self._lock:                      # a call in flight sees the flag within 50 ms
            pass
        self._executor.shutdown()
        self._node.destroy_node()
        rclpy.try_shutdown(context=self._context)
