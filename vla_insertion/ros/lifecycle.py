"""The managed-node base: configure loads, activate starts, and the exit codes of a failure."""
from __future__ import annotations

from collections.abc import Callable
import gc
import sys
import traceback

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from vla_insertion.core.config import ConfigError


EXIT_CONFIG = 2          # exit status of an invalid configuration (parameter, checkpoint)
EXIT_FAILED = 1          # a managed node could not reach active for another reason
AUTOSTART = 'autostart'  # managed nodes: drive to active at start (the launch file drives them)


class ManagedNode(LifecycleNode):
    """A managed (lifecycle) node: configure loads, activate starts, deactivate stops.

    Cleanup frees what configure loaded, so a model or checkpoint can be swapped in place.

    Subclasses implement `_configure`, `_activate`, `_deactivate` and `_cleanup`; each raises
    on failure and `_deactivate`/`_cleanup` may be called when there is nothing to stop or
    free. An exception of a type in `FAILURES` (type -> exit status) is an expected failure:
    the transition fails with one log line naming the cause (fatal when it ends the process)
    and `exit_code` is set. Any other exception is logged with its traceback and the
    transition ends in ErrorProcessing, which frees everything and returns to unconfigured.

    Parameter `autostart` (read-only, default true): `run_node` configures and activates the
    node at start, so a plain process (the demo, tests, `ros2 run`) runs as before; the launch
    file sets it false and drives the transitions itself.
    """

    FAILURES: dict[type, int] = {ConfigError: EXIT_CONFIG}

    def __init__(self, node_name: str, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.exit_code = 0
        self._starting = False
        self.autostart = self.declare_parameter(AUTOSTART, True, ParameterDescriptor(
            description='configure and activate at start; false: wait unconfigured for '
                        '`ros2 lifecycle set` (the launch file drives the transitions)',
            type=ParameterType.PARAMETER_BOOL, read_only=True)).value

    @property
    def lifecycle_state(self) -> str:
        """Label of the current state: unconfigured, inactive, active, configuring, ..."""
        return self._state_machine.current_state[1]

    def unconfigured(self) -> bool:
        """Whether configure-time parameters may change now (for declare_config)."""
        return self.lifecycle_state == 'unconfigured'

    def start(self) -> int:
        """Configure and activate; return 0, or the exit status of the failed transition."""
        self._starting = True
        try:
            for trigger in (self.trigger_configure, self.trigger_activate):
                if trigger() != TransitionCallbackReturn.SUCCESS:
                    return self.exit_code or EXIT_FAILED
            return 0
        finally:
            self._starting = False

    # transitions: rclpy calls these from the lifecycle services (or trigger_*)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition('configure', self._configure)
        if result != TransitionCallbackReturn.SUCCESS:
            self._quietly(self._cleanup)       # nothing half-loaded stays behind
        return result

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        super().on_activate(state)             # enables the lifecycle publishers first
        result = self._transition('activate', self._activate)
        if result != TransitionCallbackReturn.SUCCESS:
            super().on_deactivate(state)
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition('deactivate', self._deactivate)
        super().on_deactivate(state)           # then disables the publishers
        return result

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition('cleanup', self._cleanup)
        free_memory()                          # the process lives on: return the memory now
        return result

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release(state.label)
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release('active')
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self._release(self.lifecycle_state)
        super().destroy_node()

    def _release(self, state: str) -> None:
        """Stop and free whatever `state` holds, without the state machine (shutdown)."""
        if state == 'active':
            self._quietly(self._deactivate)
        if state in ('active', 'inactive'):
            self._quietly(self._cleanup)

    def _transition(self, name: str, step: Callable[[], None]) -> TransitionCallbackReturn:
        try:
            step()
        except tuple(self.FAILURES) as exc:
            self.exit_code = next(c for t, c in self.FAILURES.items() if isinstance(exc, t))
            log = self.get_logger().fatal if self._starting else self.get_logger().error
            log(f'{name} failed: {exc}')
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # noqa: B902 - unexpected: loud, then ErrorProcessing
            self.get_logger().error(f'{name} failed unexpectedly: {type(exc).__name__}: {exc}'
                                    f'\n{traceback.format_exc()}')
            return TransitionCallbackReturn.ERROR
        done, now = _DONE[name]
        self.get_logger().info(f'{done}: now {now}')
        return TransitionCallbackReturn.SUCCESS

    def _quietly(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # noqa: B902 - freeing after a failure must not raise
            self.get_logger().error(f'{step.__name__} failed: {type(exc).__name__}: {exc}')

    def _configure(self) -> None:
        raise NotImplementedError

    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _cleanup(self) -> None:
        raise NotImplementedError


_DONE = {'configure': ('configured', 'inactive'), 'activate': ('activated', 'active'),
         'deactivate': ('deactivated', 'inactive'), 'cleanup': ('cleaned up', 'unconfigured')}


def free_memory() -> None:
    """Return freed model memory: Python objects, then torch's cached CUDA blocks if any."""
    gc.collect()
    torch = sys.modules.get('torch')
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
