"""Validated configuration dataclasses, shared by nodes (ROS parameters) and tools (YAML).

Each component's config is a frozen dataclass whose fields carry one comment with the unit;
`__post_init__` raises ConfigError with the offending value. Nodes declare one ROS parameter per
field (the comment becomes the parameter description, see `field_docs`) and tools load the same
fields from the ROS params YAML in config/ with `core.params.load_config`.

Two class attributes (not fields) tell ros/parameters.py `declare_config` how a running node
treats its parameters:
- `LIVE`: the fields a running node applies at once when set (`ros2 param set`), validated
  like at start-up; every other field is read-only, or for a managed node (VLM, expert)
  changeable while it is unconfigured and used at its next configure.
- `RANGES`: {field: (low, high)}, the hard bounds `__post_init__` enforces, inclusive as ROS
  parameter ranges are (`ros2 param describe` shows them); a bound the config itself refuses
  (`> 0`) is still refused with the reason. A test checks each range against the validation.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import math
import re
import tokenize
import typing

from vla_insertion.core.data import (
    DEFAULT_SENSOR_CHANNELS, DEFAULT_VIEWS)
from vla_insertion.core.topics import RECORDED


class ConfigError(ValueError):
    """A configuration value is out of range or of the wrong kind."""


# --- validation helpers -------------------------------------------------------------------

def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def require_positive(name: str, value: float) -> None:
    require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
            f'{name} must be a finite number > 0, got {value!r}')


def require_non_negative(name: str, value: float) -> None:
    require(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
            f'{name} must be a finite number >= 0, got {value!r}')


def require_port(name: str, value: int) -> None:
    require(isinstance(value, int) and 0 < value < 65536,
            f'{name} must be a TCP/UDP port in 1..65535, got {value!r}')


def require_one_of(name: str, value, choices) -> None:
    require(value in choices, f'{name} must be one of {sorted(choices)}, got {value!r}')


def require_string(name: str, value) -> None:
    require(isinstance(value, str), f'{name} must be a string, got {value!r}')


def require_unique_names(name: str, values) -> None:
    require(len(values) > 0 and all(isinstance(v, str) and v for v in values),
            f'{name} must be a non-empty list of non-empty strings, got {values!r}')
    require(len(set(values)) == len(values), f'{name} must not repeat names, got {values!r}')


# ros2_control cells (docs/bringup.md "ros2_control"): where a node's joint states come from, and
# how the chunk executor commands the gripper there.
JOINT_STATE_SOURCES = ('robot_bridge', 'joint_states')
GRIPPER_OUTPUTS = ('none', 'trajectory_joint', 'forward_command')


def require_joint_state_map(config) -> None:
    """Validate the joint-state fields ExpertConfig and ExecutorConfig share (joint_names too).

    joint_names: the 6 arm joints in action order; with joint_state_source joint_states, the
    names joint_state_broadcaster gives them (core/bridge/joint_map.py).
    """
    require_one_of('joint_state_source', config.joint_state_source, JOINT_STATE_SOURCES)
    require_unique_names('joint_names', config.joint_names)
    require(len(config.joint_names) == 6,
            f'joint_names must name the 6 arm joints, got {list(config.joint_names)}')
    require(isinstance(config.gripper_joint, str)
            and config.gripper_joint not in config.joint_names,
            "gripper_joint must be a name other than the arm joints' or empty, got "
            f'{config.gripper_joint!r}')
    for name in ('gripper_open_position', 'gripper_closed_position'):
        value = getattr(config, name)
        require(isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value), f'{name} must be a finite number, got {value!r}')
    require(config.gripper_open_position != config.gripper_closed_position,
            f'gripper_open_position and gripper_closed_position must differ, both are '
            f'{config.gripper_open_position!r}')


# --- introspection: field comments become parameter descriptions --------------------------

@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field to the `# comment` written after it in the class body."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: str | None = None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and pending is None:
            pending = tok.string
        elif tok.type == tokenize.COMMENT and pending is not None:
            docs[pending] = tok.string.lstrip('#').strip()
        elif tok.type == tokenize.NEWLINE:
            pending = None
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in docs.items() if k in names}


def field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value, hint):
    """YAML/ROS values -> the field's Python type (lists -> tuples, ints -> floats)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(hint) or (object,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'expected a list, got {value!r}')
        return tuple(_coerce(v, item_type) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def config_from_dict(cls: type, values: dict):
    """Build a config dataclass from plain values, refusing unknown keys."""
    types = field_types(cls)
    unknown = set(values) - set(types)
    if unknown:
        raise ConfigError(f'{cls.__name__}: unknown parameter(s) {sorted(unknown)}; '
                          f'known: {sorted(types)}')
    kwargs = {}
    for name, hint in types.items():
        if name in values:
            try:
                kwargs[name] = _coerce(values[name], hint)
            except ConfigError as exc:
                raise ConfigError(f'{cls.__name__}.{name}: {exc}') from None
    return cls(**kwargs)


def config_to_dict(config) -> dict:
    """Config dataclass -> plain dict (tuples become lists), e.g. for JSON or YAML."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# --- VLM ----------------------------------------------------------------------------------

VLM_DTYPES = ('auto', 'float32', 'bfloat16', 'float16')
VLM_ATTENTION = ('sdpa', 'eager', 'flash_attention_2')
VLM_MODES = ('async', 'sync')
VLM_PREPROCESSING = ('fast', 'processor')
VLM_COMPILE = ('auto', 'on', 'off')
VLM_COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune-no-cudagraphs')


@dataclasses.dataclass(frozen=True)
class VlmConfig:
    """The VLM node: model, views, prompt, feature reduction and scheduling."""

    # Scheduling limits apply at once. The instruction is not live: it is part of the feature
    # contract, so a change must be deliberate (deactivate, cleanup, set, configure, activate)
    # and the expert then names the prompt as what differs from its checkpoint.
    LIVE: typing.ClassVar[tuple[str, ...]] = ('sync_tolerance_s', 'max_view_age_s',
                                              'max_rate_hz')
    RANGES: typing.ClassVar[dict] = {
        'image_width': (28, 4096), 'image_height': (28, 4096), 'pool_grid_h': (1, 64),
        'pool_grid_w': (1, 64), 'torch_threads': (0, 256), 'warmup_runs': (0, 100)}

    model: str = 'Qwen/Qwen2.5-VL-3B-Instruct'  # hub id or local folder (make_tiny_vlm writes one)
    device: str = 'auto'           # 'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N'
    dtype: str = 'auto'            # 'auto' (bf16 on cuda, fp32 on cpu), float32, bfloat16, float16
    attn_implementation: str = 'sdpa'  # attention kernel: sdpa, eager, flash_attention_2
    view_names: tuple[str, ...] = DEFAULT_VIEWS  # camera views in prompt order (cameras/<view>/)
    image_width: int = 640         # pixels each view is resized to before the processor
    image_height: int = 360        # pixels each view is resized to before the processor
    instruction: str = 'Insert the needle into the target.'  # task instruction in the prompt
    pool_grid_h: int = 2           # rows of image tokens per view after grid pooling [tokens]
    pool_grid_w: int = 4           # columns of image tokens per view after grid pooling [tokens]
    sync_tolerance_s: float = 0.1  # max spread of the capture stamps within one set of views [s]
    max_view_age_s: float = 0.5    # views older than this at selection are stale [s]
    max_rate_hz: float = 0.0       # upper bound on inference starts [Hz], 0 = back to back
    mode: str = 'async'            # 'async': run continuously; 'sync': run per vla/feature_request
    torch_threads: int = 1         # CPU threads for torch [threads], 0 = torch's default
    warmup_runs: int = 1           # inferences on blank views at start-up, unpublished [runs]
    artificial_delay_s: float = 0.0  # added to every inference (stand-in for a heavier VLM) [s]
    preprocessing: str = 'fast'    # 'fast' (cached ids, torch pixels), 'processor' (stock HF)
    preprocess_threads: int = 2    # threads decoding and resizing views (fast path) [threads]
    torch_compile: str = 'auto'    # on, off, auto (on for cuda once measured to help)
    compile_mode: str = 'default'  # default, reduce-overhead, max-autotune-no-cudagraphs
    # The hub is contacted only with hub_download, and only for a pinned revision; otherwise
    # a hub id is read from the local cache (HF_HUB_OFFLINE). The digest of the weight files
    # is in the feature contract either way (docs/vlm.md, "Which weights").
    revision: str = ''             # hub commit (40 hex) of a hub-id model, '' = the cached main
    hub_download: bool = False     # fetch a hub-id model missing from the cache at configure

    def __post_init__(self) -> None:
        require(isinstance(self.model, str) and bool(self.model.strip()),
                f'model must be a hub id or a folder, got {self.model!r}')
        require(isinstance(self.revision, str)
                and (self.revision == '' or re.fullmatch(r'[0-9a-f]{40}', self.revision)),
                f'revision must be a 40-hex-digit hub commit or empty, got {self.revision!r}')
        require(isinstance(self.hub_download, bool),
                f'hub_download must be a bool, got {self.hub_download!r}')
        require(not self.hub_download or self.revision,
                'hub_download needs a pinned revision (the commit to fetch), got none')
        require(isinstance(self.device, str)
                and re.fullmatch(r'auto|cpu|cuda(:\d+)?', self.device) is not None,
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        require_one_of('dtype', self.dtype, VLM_DTYPES)
        require(not (self.device == 'cpu' and self.dtype == 'float16'),
                'dtype float16 is not supported on the CPU, use float32 or bfloat16')
        require_one_of('attn_implementation', self.attn_implementation, VLM_ATTENTION)
        require_unique_names('view_names', self.view_names)
        for name in ('image_width', 'image_height'):
            value = getattr(self, name)
            # the vision tower needs at least one 28x28 merged patch
            require(isinstance(value, int) and 28 <= value <= 4096,
                    f'{name} must be an integer in 28..4096 pixels, got {value!r}')
        require(isinstance(self.instruction, str) and bool(self.instruction.strip()),
                f'instruction must not be empty, got {self.instruction!r}')
        for name in ('pool_grid_h', 'pool_grid_w'):
            value = getattr(self, name)
            require(isinstance(value, int) and 1 <= value <= 64,
                    f'{name} must be an integer in 1..64 tokens, got {value!r}')
        require_positive('sync_tolerance_s', self.sync_tolerance_s)
        require_positive('max_view_age_s', self.max_view_age_s)
        require_non_negative('max_rate_hz', self.max_rate_hz)
        require_one_of('mode', self.mode, VLM_MODES)
        require(isinstance(self.torch_threads, int) and 0 <= self.torch_threads <= 256,
                f'torch_threads must be an integer in 0..256, got {self.torch_threads!r}')
        require(isinstance(self.warmup_runs, int) and 0 <= self.warmup_runs <= 100,
                f'warmup_runs must be an integer in 0..100, got {self.warmup_runs!r}')
        require_non_negative('artificial_delay_s', self.artificial_delay_s)
        require_one_of('preprocessing', self.preprocessing, VLM_PREPROCESSING)
        require_int_range('preprocess_threads', self.preprocess_threads, 1, 64, ' threads')
        require_one_of('torch_compile', self.torch_compile, VLM_COMPILE)
        require_one_of('compile_mode', self.compile_mode, VLM_COMPILE_MODES)


# --- action expert ------------------------------------------------------------------------

EXPERT_MODES = ('async', 'sync')
EXPERT_SCHEDULERS = ('thread', 'timer')
EXPERT_PRECISIONS = ('fp32', 'int8', 'fp16')


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    """The action expert node: checkpoint, rate, staleness rules and scheduling."""

    # The loop's rate, the staleness rules and the flow steps apply at the next tick; the
    # checkpoint, device, mode and scheduler change through the lifecycle (cleanup, configure).
    LIVE: typing.ClassVar[tuple[str, ...]] = (
        'rate_hz', 'max_feature_age_s', 'max_sensor_age_s', 'max_robot_age_s',
        'require_complete_window', 'sync_timeout_s', 'flow_steps')
    RANGES: typing.ClassVar[dict] = {
        'rate_hz': (0.0, 1000.0), 'torch_threads': (0, 256), 'flow_steps': (0, 1000),
        'realtime_priority': (0, 99)}

    checkpoint: str = 'artifacts/checkpoints/untrained-expert'  # checkpoint folder path
    rate_hz: float = 10.0          # chunk rate [Hz]
    max_feature_age_s: float = 1.0  # refuse VL features older than this at use [s]
    max_sensor_age_s: float = 0.1  # refuse sensor windows whose newest sample is older [s]
    max_robot_age_s: float = 0.2   # refuse robot joint states or poses older than this [s]
    require_complete_window: bool = True  # refuse sensor windows with missing (NaN) rows
    device: str = 'cpu'            # torch device of the expert: 'cpu', 'cuda', 'cuda:N'
    torch_threads: int = 1         # CPU threads for torch [threads], 0 = torch's default
    mode: str = 'async'            # 'async': newest features; 'sync': request fresh ones per step
    sync_timeout_s: float = 1.0    # sync mode: longest wait for requested features [s]
    flow_steps: int = 0            # ODE steps of a flow-head checkpoint [steps], 0 = its default
    seed: int = 0                  # seed of the flow head's noise, -1 = fresh noise every chunk
    scheduler: str = 'thread'      # 'thread': absolute-deadline loop; 'timer': rclpy timer
    realtime_priority: int = 0     # SCHED_FIFO priority of the loop thread 1..99, 0 = normal
    precision: str = 'fp32'        # big Linear weights: fp32, int8, fp16 (converted at load, cpu)
    # ros2_control cells: the joints from joint_state_broadcaster (docs/bringup.md)
    joint_state_source: str = 'robot_bridge'  # robot_bridge, or joint_states from ros2_control
    joint_names: tuple[str, ...] = (  # the 6 arm joints in action order, named as joint_states
        'joint_1', 'joint_2', 'joint_3', 'joint_4', 'joint_5', 'joint_6')
    gripper_joint: str = 'gripper'  # joint_states: the gripper joint's name, '' = none (reads 0)
    gripper_open_position: float = 0.0  # joint_states: that joint when open [controller units]
    gripper_closed_position: float = 1.0  # joint_states: ... when closed [controller units]

    def __post_init__(self) -> None:
        require(isinstance(self.checkpoint, str) and bool(self.checkpoint.strip()),
                f'checkpoint must be a folder path, got {self.checkpoint!r}')
        require_positive('rate_hz', self.rate_hz)
        require(self.rate_hz <= 1000.0, f'rate_hz must be <= 1000, got {self.rate_hz!r}')
        for name in ('max_feature_age_s', 'max_sensor_age_s', 'max_robot_age_s',
                     'sync_timeout_s'):
            require_positive(name, getattr(self, name))
        require(isinstance(self.require_complete_window, bool),
                f'require_complete_window must be a bool, got {self.require_complete_window!r}')
        require(isinstance(self.device, str)
                and re.fullmatch(r'cpu|cuda(:\d+)?', self.device) is not None,
                f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        require(isinstance(self.torch_threads, int) and 0 <= self.torch_threads <= 256,
                f'torch_threads must be an integer in 0..256, got {self.torch_threads!r}')
        require_one_of('mode', self.mode, EXPERT_MODES)
        require(isinstance(self.flow_steps, int) and 0 <= self.flow_steps <= 1000,
                f'flow_steps must be an integer in 0..1000, got {self.flow_steps!r}')
        require(isinstance(self.seed, int) and self.seed >= -1,
                f'seed must be an integer >= -1, got {self.seed!r}')
        require_one_of('scheduler', self.scheduler, EXPERT_SCHEDULERS)
        require(isinstance(self.realtime_priority, int) and 0 <= self.realtime_priority <= 99,
                f'realtime_priority must be an integer in 0..99, got {self.realtime_priority!r}')
        require_one_of('precision', self.precision, EXPERT_PRECISIONS)
        require(self.precision == 'fp32' or self.device == 'cpu',
                f'precision {self.precision} is a CPU kernel (fbgemm); use fp32 on {self.device}')
        require_joint_state_map(self)


# --- cell I/O: bridges and simulated cell -------------------------------------------------

DEFAULT_WRIST_VIEWS = ('oak',)   # the simulated cell's hand-eye camera (core/sim/render.py)
SIM_STREAMS = ('cameras', 'robot', 'sensor')
SIM_CONTROLS = ('commands', 'reference')


def require_host(name: str, value: str) -> None:
    require(isinstance(value, str) and re.fullmatch(r'[A-Za-z0-9.\-:*]+', value) is not None,
            f'{name} must be a host name or IP address (no scheme or port), got {value!r}')


def require_networks(name: str, values) -> None:
    """Require a non-empty list of IP addresses or networks ('10.0.0.2', '10.0.0.0/24')."""
    import ipaddress
    require(isinstance(values, (tuple, list)) and len(values) > 0,
            f'{name} must list at least one address or network (0.0.0.0/0: any), '
            f'got {values!r}')
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except (TypeError, ValueError):
            raise ConfigError(f'{name} must hold IP addresses or networks (a.b.c.d or '
                              f'a.b.c.d/n), got {value!r}') from None


def require_keys_dir(name: str, value: str) -> None:
    """Require a CURVE keys folder (core/wire/curve.py) or '' for plain TCP (read at start)."""
    require(isinstance(value, str), f'{name} must be a folder path or empty, got {value!r}')


def require_wire_format(name: str, value: str, stream: str) -> None:
    from vla_insertion.core.wire import codec_names   # the registry imports nothing from here
    require_one_of(name, value, codec_names(stream))


def require_int_range(name: str, value: int, low: int, high: int, unit: str = '') -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
            f'{name} must be an integer in {low}..{high}{unit}, got {value!r}')


@dataclasses.dataclass(frozen=True)
class CameraBridgeConfig:
    """camera_bridge: ZMQ PULL of JPEG frames -> cameras/<view>/image/compressed."""

    RANGES: typing.ClassVar[dict] = {
        'port': (1, 65535), 'max_message_bytes': (1024, 1 << 30),
        'calibration_batches': (1, 100_000)}

    bind_address: str = '127.0.0.1'  # address the PULL socket binds: the cell interface's own
    port: int = 5555               # TCP port the camera sender pushes to
    view_names: tuple[str, ...] = DEFAULT_VIEWS  # view ids accepted; one topic each
    wire_format: str = 'camera_v1'  # decoder name (docs/wire.md)
    max_message_bytes: int = 4_000_000  # larger frames are dropped as oversized [bytes]
    receive_timeout_s: float = 0.1  # socket poll period; bounds shutdown latency [s]
    calibration_batches: int = 50  # frames used to calibrate the clock offset [frames]
    min_fps: float = 4.0           # per-view rate below which diagnostics warn [Hz]
    stale_after_s: float = 1.0     # no frame for this long is an error in diagnostics [s]
    curve_keys_dir: str = ''       # CURVE keys folder (cell_keys), '' = plain TCP (docs/wire.md)

    def __post_init__(self) -> None:
        require_host('bind_address', self.bind_address)
        require_port('port', self.port)
        require_keys_dir('curve_keys_dir', self.curve_keys_dir)
        require_unique_names('view_names', self.view_names)
        require_wire_format('wire_format', self.wire_format, 'camera')
        require_int_range('max_message_bytes', self.max_message_bytes, 1024, 1 << 30, ' bytes')
        require_positive('receive_timeout_s', self.receive_timeout_s)
        require_int_range('calibration_batches', self.calibration_batches, 1, 100_000)
        require_non_negative('min_fps', self.min_fps)
        require_positive('stale_after_s', self.stale_after_s)


@dataclasses.dataclass(frozen=True)
class RobotBridgeConfig:
    """robot_bridge: ZMQ SUB of robot state -> robot/joint_states, robot/pose."""

    RANGES: typing.ClassVar[dict] = {
        'port': (1, 65535), 'max_message_bytes': (128, 1 << 24),
        'calibration_batches': (1, 100_000)}

    robot_ip: str = '127.0.0.1'    # host of the robot PC's PUB socket
    port: int = 5556               # TCP port the robot PC publishes on
    wire_format: str = 'robot_v1'  # decoder name: robot_v1 or robot_msgpack_v1 (docs/wire.md)
    max_message_bytes: int = 4096  # larger messages are dropped as oversized [bytes]
    receive_timeout_s: float = 0.1  # socket poll period; bounds shutdown latency [s]
    calibration_batches: int = 50  # messages used to calibrate the clock offset [messages]
    joint_names: tuple[str, ...] = (  # JointState names, base to tool
        'joint_1', 'joint_2', 'joint_3', 'joint_4', 'joint_5', 'joint_6')
    base_frame: str = 'base_link'  # frame_id of robot/pose
    min_rate_hz: float = 50.0      # state rate below which diagnostics warn [Hz]
    stale_after_s: float = 0.5     # no state for this long is an error in diagnostics [s]
    curve_keys_dir: str = ''       # CURVE keys folder (cell_keys), '' = plain TCP (docs/wire.md)

    def __post_init__(self) -> None:
        require_host('robot_ip', self.robot_ip)
        require_port('port', self.port)
        require_keys_dir('curve_keys_dir', self.curve_keys_dir)
        require_wire_format('wire_format', self.wire_format, 'robot')
        require_int_range('max_message_bytes', self.max_message_bytes, 128, 1 << 24, ' bytes')
        require_positive('receive_timeout_s', self.receive_timeout_s)
        require_int_range('calibration_batches', self.calibration_batches, 1, 100_000)
        require_unique_names('joint_names', self.joint_names)
        require(len(self.joint_names) == 6,
                f'joint_names must name the 6 joints, got {list(self.joint_names)}')
        require(isinstance(self.base_frame, str) and bool(self.base_frame),
                f'base_frame must not be empty, got {self.base_frame!r}')
        require_non_negative('min_rate_hz', self.min_rate_hz)
        require_positive('stale_after_s', self.stale_after_s)


@dataclasses.dataclass(frozen=True)
class SensorBridgeConfig:
    """sensor_bridge: UDP sensor batches -> sensor/window (the newest window_size samples)."""

    RANGES: typing.ClassVar[dict] = {
        'port': (1, 65535), 'window_size': (1, 100_000), 'max_datagram_bytes': (64, 65507),
        'socket_buffer_bytes': (4096, 1 << 28), 'calibration_batches': (1, 100_000)}

    bind_address: str = '127.0.0.1'  # address the UDP socket binds: the cell interface's own
    port: int = 9999               # UDP port the sensor sender sends to
    # Datagrams from other source addresses are dropped and counted (drops.source).
    allowed_sources: tuple[str, ...] = ('127.0.0.1',)  # sender addresses or networks (CIDR)
    wire_format: str = 'sensor_v1'  # decoder name (docs/wire.md)
    channel_names: tuple[str, ...] = DEFAULT_SENSOR_CHANNELS  # channels in datagram order
    sample_rate_hz: float = 650.0  # nominal sender sample rate [Hz]
    window_size: int = 65          # samples per published window (100 ms at 650 Hz) [samples]
    max_datagram_bytes: int = 16384  # larger datagrams are dropped as oversized [bytes]
    socket_buffer_bytes: int = 1 << 20  # SO_RCVBUF asked for; absorbs scheduling stalls [bytes]
    receive_timeout_s: float = 0.1  # socket poll period; bounds shutdown latency [s]
    calibration_batches: int = 50  # datagrams used to calibrate the clock offset [datagrams]
    min_fill: int = 60             # valid samples below which diagnostics warn [samples]
    stale_after_s: float = 0.5     # no datagram for this long is an error in diagnostics [s]

    def __post_init__(self) -> None:
        require_host('bind_address', self.bind_address)
        require_port('port', self.port)
        require_networks('allowed_sources', self.allowed_sources)
        require_wire_format('wire_format', self.wire_format, 'sensor')
        require_unique_names('channel_names', self.channel_names)
        require_int_range('len(channel_names)', len(self.channel_names), 1, 64)
        require_positive('sample_rate_hz', self.sample_rate_hz)
        require_int_range('window_size', self.window_size, 1, 100_000, ' samples')
        require_int_range('max_datagram_bytes', self.max_datagram_bytes, 64, 65507, ' bytes')
        require_int_range('socket_buffer_bytes', self.socket_buffer_bytes, 4096, 1 << 28)
        require_positive('receive_timeout_s', self.receive_timeout_s)
        require_int_range('calibration_batches', self.calibration_batches, 1, 100_000)
        require_int_range('min_fill', self.min_fill, 0, self.window_size, ' samples')
        require_positive('stale_after_s', self.stale_after_s)


@dataclasses.dataclass(frozen=True)
class SimCellConfig:
    """sim_cell: cameras, robot and sensor senders of a simulated peg-in-hole cell."""

    camera_host: str = '127.0.0.1'  # where camera_bridge's PULL socket listens
    camera_port: int = 5555        # TCP port of camera_bridge
    robot_bind: str = '127.0.0.1'  # interface the robot PUB socket binds
    robot_port: int = 5556         # TCP port robot_bridge subscribes to
    sensor_host: str = '127.0.0.1'  # where sensor_bridge's UDP socket listens
    sensor_port: int = 9999        # UDP port of sensor_bridge
    streams: tuple[str, ...] = SIM_STREAMS  # which senders run: cameras, robot, sensor
    view_names: tuple[str, ...] = DEFAULT_VIEWS  # camera view ids, each a different viewpoint
    wrist_views: tuple[str, ...] = DEFAULT_WRIST_VIEWS  # of view_names: on the flange, the rest
    #                                                    on a ring around the cell
    width: int = 640               # rendered image width [px]
    height: int = 360              # rendered image height [px]
    camera_fps: float = 30.0       # frames per second per view [Hz]
    jpeg_quality: int = 80         # JPEG quality [1..95]
    robot_rate_hz: float = 100.0   # robot state rate [Hz]
    sensor_rate_hz: float = 650.0  # sensor sample rate [Hz]
    sensor_batch: int = 10         # samples per UDP datagram [samples]
    clock_offset_s: float = 0.0    # senders' clock minus the local clock, to test calibration [s]
    control: str = 'commands'      # who moves the arm: commands (command_v1) or reference
    command_bind: str = '127.0.0.1'  # interface the command PULL socket binds (control commands)
    command_port: int = 5557       # TCP port the chunk executor pushes command_v1 to
    episode_bind: str = '127.0.0.1'  # interface the episode_v1 PUB socket binds
    episode_port: int = 5558       # TCP port of the episode reports (the evaluation subscribes)
    episode_period_s: float = 1.0  # time between episode status reports [s]
    episode_log: str = ''          # also append episode starts and ends as JSON lines here
    episode_timeout_s: float = 20.0  # an episode not inserted after this long fails [s]
    max_contact_force_n: float = 50.0  # contact force above this fails the episode [N]
    settle_s: float = 0.5          # arm held after an episode's outcome, then the next one [s]
    physics_rate_hz: float = 1000.0  # integration rate of the arm and the contact [Hz]
    reference_latency_s: float = 0.1  # control reference: observation -> chunk delay [s]
    seed: int = 0                  # seed of every random choice (scene variation, noise)
    duration_s: float = 0.0        # stop after this long, 0 = until SIGINT/SIGTERM [s]
    faults: bool = False           # inject malformed, truncated, oversized, NaN, stale packets
    fault_period_s: float = 0.5    # time between injected faults per stream [s]
    fault_report: str = ''         # write injected-fault counts as JSON here on exit ('' = no)
    # The camera sender's, robot PC's keys (camera, robot and command links; not episodes).
    curve_keys_dir: str = ''       # CURVE keys folder (cell_keys), '' = plain TCP (docs/wire.md)

    def __post_init__(self) -> None:
        for name in ('camera_host', 'robot_bind', 'sensor_host', 'command_bind', 'episode_bind'):
            require_host(name, getattr(self, name))
        require_keys_dir('curve_keys_dir', self.curve_keys_dir)
        for name in ('camera_port', 'robot_port', 'sensor_port', 'command_port', 'episode_port'):
            require_port(name, getattr(self, name))
        require(len(self.streams) > 0 and set(self.streams) <= set(SIM_STREAMS),
                f'streams must be a non-empty subset of {list(SIM_STREAMS)}, '
                f'got {list(self.streams)}')
        require_unique_names('view_names', self.view_names)
        require(set(self.wrist_views) <= set(self.view_names),
                f'wrist_views must name views of view_names {list(self.view_names)}, '
                f'got {list(self.wrist_views)}')
        require_int_range('width', self.width, 32, 4096, ' px')
        require_int_range('height', self.height, 32, 4096, ' px')
        require_positive('camera_fps', self.camera_fps)
        require_int_range('jpeg_quality', self.jpeg_quality, 1, 95)
        require_positive('robot_rate_hz', self.robot_rate_hz)
        require_positive('sensor_rate_hz', self.sensor_rate_hz)
        require_int_range('sensor_batch', self.sensor_batch, 1, 256, ' samples')
        require(isinstance(self.clock_offset_s, (int, float))
                and math.isfinite(self.clock_offset_s),
                f'clock_offset_s must be a finite number, got {self.clock_offset_s!r}')
        require_int_range('seed', self.seed, 0, 2**32 - 1)
        require_non_negative('duration_s', self.duration_s)
        require(isinstance(self.faults, bool), f'faults must be a bool, got {self.faults!r}')
        require_one_of('control', self.control, SIM_CONTROLS)
        require(isinstance(self.episode_log, str),
                f'episode_log must be a file path or empty, got {self.episode_log!r}')
        for name in ('episode_period_s', 'episode_timeout_s', 'max_contact_force_n'):
            require_positive(name, getattr(self, name))
        require_non_negative('settle_s', self.settle_s)
        require(isinstance(self.physics_rate_hz, (int, float))
                and 100.0 <= self.physics_rate_hz <= 10_000.0,
                f'physics_rate_hz must be in 100..10000 Hz, got {self.physics_rate_hz!r}')
        require(isinstance(self.reference_latency_s, (int, float))
                and 0.0 <= self.reference_latency_s <= 1.0,
                f'reference_latency_s must be in 0..1 s, got {self.reference_latency_s!r}')
        require_positive('fault_period_s', self.fault_period_s)
        require(isinstance(self.fault_report, str),
                f'fault_report must be a path or empty, got {self.fault_report!r}')


# --- recording and evaluation -------------------------------------------------------------

BAG_STORAGES = ('mcap', 'sqlite3')


@dataclasses.dataclass(frozen=True)
class BagRecorderConfig:
    """bag_recorder: which topics go into which rosbag2 bag, and how it is kept safe."""

    RANGES: typing.ClassVar[dict] = {'reliable_depth': (1, 100_000),
                                     'best_effort_depth': (1, 100_000)}

    output_dir: str = 'artifacts/bags'  # folder in which the bag folder is created
    bag_name: str = ''             # bag folder name, '' = vla_<YYYYmmdd_HHMMSS>
    storage: str = 'mcap'          # rosbag2 storage: 'mcap' or 'sqlite3'
    topics: tuple[str, ...] = RECORDED  # topics or patterns (cameras/*/...) to record
    split_duration_s: float = 10.0  # start a new bag file this often, 0 = one file [s]
    flush_period_s: float = 1.0    # flush the open file this often (crash recovery) [s]
    reliable_depth: int = 1000     # subscription queue of reliable topics [messages]
    best_effort_depth: int = 50    # subscription queue of best-effort (camera) topics [messages]
    max_queue_mb: float = 512.0    # messages waiting for the writer thread, beyond: dropped [MB]
    min_free_disk_mb: float = 200.0  # close the bag cleanly when free disk falls below [MB]
    duration_s: float = 0.0        # stop after this long, 0 = until SIGINT/SIGTERM [s]
    discovery_period_s: float = 1.0  # look for topics whose type is not known yet this often [s]

    def __post_init__(self) -> None:
        require(isinstance(self.output_dir, str) and bool(self.output_dir.strip()),
                f'output_dir must be a folder path, got {self.output_dir!r}')
        require(isinstance(self.bag_name, str) and '/' not in self.bag_name,
                f'bag_name must be a plain folder name or empty, got {self.bag_name!r}')
        require_one_of('storage', self.storage, BAG_STORAGES)
        require_unique_names('topics', self.topics)
        require_non_negative('split_duration_s', self.split_duration_s)
        require_non_negative('flush_period_s', self.flush_period_s)
        for name in ('reliable_depth', 'best_effort_depth'):
            value = getattr(self, name)
            require(isinstance(value, int) and 1 <= value <= 100_000,
                    f'{name} must be an integer in 1..100000 messages, got {value!r}')
        require_positive('max_queue_mb', self.max_queue_mb)
        require_non_negative('min_free_disk_mb', self.min_free_disk_mb)
        require_non_negative('duration_s', self.duration_s)
        require_positive('discovery_period_s', self.discovery_period_s)


@dataclasses.dataclass(frozen=True)
class BagPlayerConfig:
    """bag_player: replay a bag's topics with their recorded timing, and /clock."""

    bag: str = ''                  # bag folder to play (required)
    topics: tuple[str, ...] = ('',)  # topics to play, [''] = every topic in the bag
    rate: float = 1.0              # playback speed factor (2.0 = twice as fast)
    start_offset_s: float = 0.0    # skip this much of the bag's beginning [s]
    loop: bool = False             # start again at the end
    clock: bool = True             # publish /clock (rosgraph_msgs/Clock) with the bag time
    clock_rate_hz: float = 100.0   # /clock publication rate [Hz]
    restamp: bool = False          # shift header stamps to the current wall clock
    start_delay_s: float = 0.5     # wait up to this long for a subscriber on every topic [s]
    exit_when_done: bool = True    # shut down at the end of the bag (unless loop)
    report: str = ''               # write what was played and the restamp shift here (JSON)

    def __post_init__(self) -> None:
        require(isinstance(self.bag, str), f'bag must be a folder path, got {self.bag!r}')
        require(all(isinstance(t, str) for t in self.topics),
                f'topics must be a list of names, got {self.topics!r}')
        require_positive('rate', self.rate)
        require_non_negative('start_offset_s', self.start_offset_s)
        require_positive('clock_rate_hz', self.clock_rate_hz)
        require_non_negative('start_delay_s', self.start_delay_s)
        for name in ('loop', 'clock', 'restamp', 'exit_when_done'):
            require(isinstance(getattr(self, name), bool),
                    f'{name} must be a bool, got {getattr(self, name)!r}')
        require(isinstance(self.report, str), f'report must be a path or empty, got '
                f'{self.report!r}')


# --- chunk executor -----------------------------------------------------------------------

EXECUTOR_MERGES = ('latest', 'temporal_ensemble', 'blend', 'prefix')
# Where the commands go: command_v1 over ZMQ to the robot PC, and/or a JointTrajectory for
# ros2_control's joint_trajectory_controller.
EXECUTOR_OUTPUTS = ('command_v1', 'joint_trajectory')


@dataclasses.dataclass(frozen=True)
class ExecutorConfig:
    """chunk_executor: action chunks -> a smooth, safety-gated joint command stream.

    Per-joint limits are not fields here: they come from the `joint_limits.<joint>.<key>`
    parameters in ros2_control's shape (core/executor/limits.py). docs/executor.md explains
    every rule; the defaults are for a UR5e-class arm doing a slow insertion.
    """

    NESTED_PARAMETERS: typing.ClassVar[tuple[str, ...]] = ('joint_limits',)

    control_rate_hz: float = 100.0  # command rate; the limits hold per period at this rate [Hz]
    joint_names: tuple[str, ...] = (  # arm joints in command order, keys of joint_limits
        'joint_1', 'joint_2', 'joint_3', 'joint_4', 'joint_5', 'joint_6')
    # 20 ms = transport (< 1 ms on a cell LAN) + the robot's own interpolation over about one
    # 8 ms (125 Hz) or 2 ms (500 Hz) servo cycle + margin; measure it on the cell and set it.
    actuator_lead_s: float = 0.02  # command now the state wanted this long from now [s]
    merge: str = 'blend'           # latest, temporal_ensemble, blend, prefix (docs/executor.md)
    ensemble_k: float = 0.01       # temporal_ensemble: weight exp(-k i), i=0 oldest (ACT's m) [1]
    # A quintic blend over tau of a disagreement d peaks at 5.77 d / tau^2: two chunk periods
    # keep 10 mrad between chunks at 1.4 rad/s^2, inside the 4 rad/s^2 default limits.
    blend_s: float = 0.2           # blend/prefix: blend into a new chunk over this long [s]
    prefix_tolerance: float = 0.01  # prefix: a chunk continues the prefix within this [rad, 1]
    prefix_quantile: float = 0.9   # prefix: committed steps = this delay quantile / dt [0..1]
    lookahead_s: float = 0.5       # JointTrajectory: future points this far ahead, at rest [s]
    trajectory_dt_s: float = 0.05  # JointTrajectory: time between points [s]
    # Chunks come at 10 Hz: 0.5 s is five missed chunks, before the 0.8 s chunk runs out.
    chunk_timeout_s: float = 0.5   # watchdog: no accepted chunk for this long -> hold [s]
    # Longer than a whole chunk (8 x 0.1 s) so the last action of a fresh chunk can run.
    max_chunk_age_s: float = 1.0   # refuse or stop following actions planned this long ago [s]
    max_clock_skew_s: float = 0.05  # refuse chunks stamped further than this in the future [s]
    max_robot_age_s: float = 0.1   # hold when the newest joint state is older (10 at 100 Hz) [s]
    max_sensor_age_s: float = 0.1  # hold when the newest force window is older than this [s]
    require_sensor: bool = True    # hold without a fresh sensor window (forces unchecked)
    position_margin_rad: float = 0.05  # stay this far inside each joint's position limits [rad]
    # LeRobot's max_relative_target, on by default: above the tracking lag at full speed
    # (1 rad/s x ~0.1 s), small enough that no single bad target moves a joint far.
    max_distance_from_measured_rad: float = 0.15  # targets at most this far from measured [rad]
    # Contact forces of a guided peg insertion are a few N; the UR5e's payload is 50 N.
    force_soft_n: float = 15.0     # |F| above this scales the motion down [N]
    force_hard_n: float = 40.0     # |F| at or above this holds and latches a fault [N]
    torque_soft_nm: float = 1.5    # |tau| above this scales the motion down [N m]
    torque_hard_nm: float = 4.0    # |tau| at or above this holds and latches a fault [N m]
    # Never 0, so the policy can still back out of a contact near the hard limit.
    min_speed_scale: float = 0.1   # speed scale just below the hard limits (1 at the soft) [1]
    command_timeout_s: float = 0.1  # command_v1 timeout: the robot holds without a newer one [s]
    start_armed: bool = False      # arm at the first chunk that arm() accepts, not on enable
    delay_window: int = 100        # chunks in the delay statistics [chunks]
    outputs: tuple[str, ...] = ('command_v1',)  # command_v1 and/or joint_trajectory
    robot_ip: str = '127.0.0.1'    # host of the robot PC's command_v1 PULL socket
    command_port: int = 5557       # TCP port the robot PC binds for command_v1
    # Arming rules and the cell's safety inputs (core/executor/safety.py, docs/safety.md). An
    # untrained expert is never armed; no field allows it.
    allow_untrained_vlm: bool = False  # arm on features of a random-weight VLM (sim, demo only)
    estop_input: bool = False      # safety/estop is wired: arming needs a known, released state
    deadman_timeout_s: float = 0.0  # > 0: stop without a true safety/heartbeat this long [s]
    workspace_min_m: tuple[float, ...] = ()  # tool box corner in the base frame; () none [m]
    workspace_max_m: tuple[float, ...] = ()  # the opposite corner [m]
    # What the arm surely brakes the tool at under the joint limits; measure it (docs/safety.md).
    workspace_decel_mps2: float = 0.5  # tool deceleration assumed for the stopping distance
    # Above the arm's fastest tool speed (its safety configuration's TCP limit): a measured pose
    # implying more is a jump (re-homed, a sim reset), a `pose_jump` stop, not a velocity
    max_tool_speed_mps: float = 2.0  # faster measured tool motion is a pose jump [m/s]
    # ros2_control cells (docs/bringup.md): the joint states, and the gripper as a joint
    joint_state_source: str = 'robot_bridge'  # robot_bridge, or joint_states from ros2_control
    gripper_joint: str = 'gripper'  # the gripper joint's ros2_control name, '' = none (reads 0)
    gripper_open_position: float = 0.0  # that joint when open [controller units]
    gripper_closed_position: float = 1.0  # that joint when closed [controller units]
    gripper_output: str = 'none'   # ros2_control gripper: none, trajectory_joint, forward_command
    curve_keys_dir: str = ''       # CURVE keys folder (cell_keys), '' = plain TCP (docs/wire.md)

    def __post_init__(self) -> None:
        require_positive('control_rate_hz', self.control_rate_hz)
        require_keys_dir('curve_keys_dir', self.curve_keys_dir)
        require(self.control_rate_hz <= 1000.0,
                f'control_rate_hz must be <= 1000 Hz, got {self.control_rate_hz!r}')
        require_unique_names('joint_names', self.joint_names)
        require(len(self.joint_names) == 6,
                f'joint_names must name the 6 joints, got {list(self.joint_names)}')
        require('gripper' not in self.joint_names,
                "joint_names must not contain 'gripper' (the gripper has its own limits)")
        require(isinstance(self.actuator_lead_s, (int, float))
                and 0.0 <= self.actuator_lead_s <= 1.0,  # command_v1 refuses a lead above 1 s
                f'actuator_lead_s must be in 0..1 s, got {self.actuator_lead_s!r}')
        require_one_of('merge', self.merge, EXECUTOR_MERGES)
        require(isinstance(self.ensemble_k, (int, float)) and math.isfinite(self.ensemble_k)
                and abs(self.ensemble_k) <= 10.0,
                f'ensemble_k must be a finite number in -10..10, got {self.ensemble_k!r}')
        for name in ('blend_s', 'prefix_tolerance', 'lookahead_s', 'trajectory_dt_s',
                     'chunk_timeout_s', 'max_chunk_age_s', 'max_robot_age_s',
                     'max_sensor_age_s', 'max_distance_from_measured_rad', 'force_soft_n',
                     'force_hard_n', 'torque_soft_nm', 'torque_hard_nm'):
            require_positive(name, getattr(self, name))
        require(isinstance(self.prefix_quantile, (int, float))
                and 0.0 < self.prefix_quantile <= 1.0,
                f'prefix_quantile must be in (0, 1], got {self.prefix_quantile!r}')
        require(self.trajectory_dt_s >= 1.0 / self.control_rate_hz,
                f'trajectory_dt_s must be at least one control period '
                f'({1.0 / self.control_rate_hz} s), got {self.trajectory_dt_s!r}')
        require_non_negative('max_clock_skew_s', self.max_clock_skew_s)
        require_non_negative('position_margin_rad', self.position_margin_rad)
        require(self.force_soft_n < self.force_hard_n,
                f'force_soft_n ({self.force_soft_n}) must be below force_hard_n '
                f'({self.force_hard_n})')
        require(self.torque_soft_nm < self.torque_hard_nm,
                f'torque_soft_nm ({self.torque_soft_nm}) must be below torque_hard_nm '
                f'({self.torque_hard_nm})')
        require(isinstance(self.min_speed_scale, (int, float))
                and 0.0 < self.min_speed_scale <= 1.0,
                f'min_speed_scale must be in (0, 1], got {self.min_speed_scale!r}')
        require(isinstance(self.command_timeout_s, (int, float))
                and 0.0 < self.command_timeout_s <= 10.0,  # command_v1's range
                f'command_timeout_s must be in (0, 10] s, got {self.command_timeout_s!r}')
        require(self.command_timeout_s >= 1.0 / self.control_rate_hz,
                f'command_timeout_s must be at least one control period, got '
                f'{self.command_timeout_s!r}')
        for name in ('require_sensor', 'start_armed', 'allow_untrained_vlm', 'estop_input'):
            require(isinstance(getattr(self, name), bool),
                    f'{name} must be a bool, got {getattr(self, name)!r}')
        require_non_negative('deadman_timeout_s', self.deadman_timeout_s)
        require(len(self.workspace_min_m) == len(self.workspace_max_m) in (0, 3),
                f'workspace_min_m and workspace_max_m must both be [x, y, z] or both empty, got '
                f'{list(self.workspace_min_m)} and {list(self.workspace_max_m)}')
        require(all(isinstance(v, (int, float)) and math.isfinite(v) and lo < hi
                    for lo, hi in zip(self.workspace_min_m, self.workspace_max_m)
                    for v in (lo, hi)),
                f'workspace_min_m must be finite and below workspace_max_m on every axis, got '
                f'{list(self.workspace_min_m)} and {list(self.workspace_max_m)}')
        require_positive('workspace_decel_mps2', self.workspace_decel_mps2)
        require_positive('max_tool_speed_mps', self.max_tool_speed_mps)
        require_int_range('delay_window', self.delay_window, 1, 100_000, ' chunks')
        require(len(self.outputs) > 0 and set(self.outputs) <= set(EXECUTOR_OUTPUTS)
                and len(set(self.outputs)) == len(self.outputs),
                f'outputs must be a non-empty subset of {list(EXECUTOR_OUTPUTS)}, got '
                f'{list(self.outputs)}')
        require_host('robot_ip', self.robot_ip)
        require_port('command_port', self.command_port)
        require_joint_state_map(self)
        require_one_of('gripper_output', self.gripper_output, GRIPPER_OUTPUTS)
        require(self.gripper_output == 'none' or bool(self.gripper_joint),
                f"gripper_output {self.gripper_output} needs gripper_joint, got ''")
        require(self.gripper_output != 'trajectory_joint' or 'joint_trajectory' in self.outputs,
                f'gripper_output trajectory_joint needs joint_trajectory in outputs, got '
                f'{list(self.outputs)}')

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate_hz


@dataclasses.dataclass(frozen=True)
class ReferencePolicyConfig:
    """reference_policy: the simulated cell's scripted demonstrator as a chunk publisher."""

    rate_hz: float = 10.0          # chunks per second, as the action expert [Hz]
    episode_host: str = '127.0.0.1'  # where sim_cell publishes its episode reports
    episode_port: int = 5558       # sim_cell's episode_port

    def __post_init__(self) -> None:
        require_positive('rate_hz', self.rate_hz)
        require(self.rate_hz <= 1000.0, f'rate_hz must be <= 1000, got {self.rate_hz!r}')
        require_host('episode_host', self.episode_host)
        require_port('episode_port', self.episode_port)


# --- remote policy servers (core/remote/) -------------------------------------------------

POLICY_PROTOCOLS = ('openpi', 'gr00t')
IMAGE_RESIZES = ('pad', 'stretch')
IMAGE_LAYOUTS = ('hwc', 'chw')
ACTION_MODES = ('absolute', 'delta')


@dataclasses.dataclass(frozen=True)
class PolicyClientConfig:
    """policy_client: a remote policy server (openpi, GR00T) in the action expert's place.

    The observation and action mappings are docs/remote_policy.md's (core/remote/mapping.py);
    the defaults talk to `serve_policy`, the scripted demonstrator served on the sim cell.
    """

    protocol: str = 'openpi'       # openpi (websocket, msgpack) or gr00t (ZMQ REQ/REP, msgpack)
    server_host: str = '127.0.0.1'  # the policy server's host
    # openpi serves on 8000 by default; GR00T's default 5555 is our camera port: move one
    server_port: int = 8000        # the policy server's port
    api_token: str = ''            # openpi: 'Authorization: Api-Key' header; gr00t: api_token
    rate_hz: float = 10.0          # requests (chunks) per second [Hz]
    max_feature_age_s: float = 1.0  # refuse when the oldest mapped camera view is older [s]
    max_sensor_age_s: float = 0.1  # refuse sensor windows whose newest sample is older [s]
    max_robot_age_s: float = 0.2   # refuse robot joint states or poses older than this [s]
    require_complete_window: bool = True  # refuse sensor windows with missing (NaN) rows
    reply_timeout_s: float = 1.0   # no reply this long after a request: refuse, reconnect [s]
    connect_timeout_s: float = 2.0  # longest connect + handshake (openpi metadata, GR00T ping) [s]
    reconnect_min_s: float = 0.2   # first wait before a reconnect; doubles per failure [s]
    reconnect_max_s: float = 5.0   # longest wait between reconnect attempts [s]
    max_reply_bytes: int = 16000000  # larger replies are refused [bytes]
    image_views: tuple[str, ...] = ('oak',)  # our camera views sent, in image_keys order
    image_keys: tuple[str, ...] = ('wrist',)  # the server's image key of each view
    image_width: int = 224         # every image sent is this wide [pixels]
    image_height: int = 224        # every image sent is this high [pixels]
    image_resize: str = 'pad'      # pad (aspect kept, black bars, openpi's) or stretch
    image_layout: str = 'hwc'      # uint8 (H, W, 3) 'hwc' or (3, H, W) 'chw' (ALOHA-style)
    state_keys: tuple[str, ...] = (  # 'server key=part+part', parts: core/remote/mapping.py
        'joints=joints', 'gripper=gripper', 'tool=tool_position+tool_orientation')
    prompt: str = 'Insert the needle into the target.'  # the task instruction sent
    prompt_key: str = 'task'       # the server's key of the prompt (openpi's 'prompt')
    action_keys: tuple[str, ...] = ('joints', 'gripper')  # reply arrays, concatenated (H, D)
    action_indices: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)  # server dim of joint_1..6, gripper
    action_scale: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # ours = server x this
    action_offset: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # ... + this [rad, 1]
    action_mode: str = 'absolute'  # absolute joint targets, or delta: added to the joints sent
    action_horizon: int = 0        # actions kept of each reply [actions], 0 = all
    chunk_dt_s: float = 0.1        # time between the server's actions [s]
    send_prefix: bool = False      # gr00t: send the committed prefix as previous actions (RTC)
    rtc_ramp_rate: float = 6.0     # gr00t, send_prefix: the RTC option rtc_ramp_rate [1]

    def __post_init__(self) -> None:
        from vla_insertion.core.remote.mapping import parse_state_keys  # imports no config
        require_one_of('protocol', self.protocol, POLICY_PROTOCOLS)
        require_host('server_host', self.server_host)
        require_port('server_port', self.server_port)
        require_string('api_token', self.api_token)
        require_positive('rate_hz', self.rate_hz)
        require(self.rate_hz <= 1000.0, f'rate_hz must be <= 1000, got {self.rate_hz!r}')
        for name in ('max_feature_age_s', 'max_sensor_age_s', 'max_robot_age_s',
                     'reply_timeout_s', 'connect_timeout_s', 'reconnect_min_s',
                     'reconnect_max_s', 'chunk_dt_s', 'rtc_ramp_rate'):
            require_positive(name, getattr(self, name))
        require(self.reconnect_min_s <= self.reconnect_max_s,
                f'reconnect_min_s ({self.reconnect_min_s}) must not exceed reconnect_max_s '
                f'({self.reconnect_max_s})')
        for name in ('require_complete_window', 'send_prefix'):
            require(isinstance(getattr(self, name), bool),
                    f'{name} must be a bool, got {getattr(self, name)!r}')
        require_int_range('max_reply_bytes', self.max_reply_bytes, 1024, 1 << 30, ' bytes')
        require_unique_names('image_views', self.image_views)
        require_unique_names('image_keys', self.image_keys)
        require(len(self.image_keys) == len(self.image_views),
                f'image_keys must name one key per view of image_views '
                f'({len(self.image_views)}), got {list(self.image_keys)}')
        for name in ('image_width', 'image_height'):
            require_int_range(name, getattr(self, name), 8, 4096, ' pixels')
        require_one_of('image_resize', self.image_resize, IMAGE_RESIZES)
        require_one_of('image_layout', self.image_layout, IMAGE_LAYOUTS)
        require(self.protocol != 'gr00t' or self.image_layout == 'hwc',
                'image_layout must be hwc for gr00t (its video arrays are (B, T, H, W, 3))')
        try:
            state = parse_state_keys(self.state_keys)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        require(isinstance(self.prompt, str) and isinstance(self.prompt_key, str)
                and bool(self.prompt_key), 'prompt must be a string and prompt_key a '
                f'non-empty string, got {self.prompt!r}, {self.prompt_key!r}')
        keys = [*self.image_keys, *(k for k, _ in state), self.prompt_key]
        require(len(set(keys)) == len(keys), f'image, state and prompt keys must differ, got '
                                             f'{keys}')
        require_unique_names('action_keys', self.action_keys)
        for name in ('action_indices', 'action_scale', 'action_offset'):
            require(len(getattr(self, name)) == 7,
                    f'{name} must have 7 entries (joint_1..joint_6, gripper), got '
                    f'{list(getattr(self, name))}')
        require(all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 4096
                    for i in self.action_indices),
                f'action_indices must be server dims 0..4095, got {list(self.action_indices)}')
        require(all(isinstance(v, (int, float)) and math.isfinite(v) and v != 0
                    for v in self.action_scale),
                f'action_scale must be finite and non-zero, got {list(self.action_scale)}')
        require(all(isinstance(v, (int, float)) and math.isfinite(v)
                    for v in self.action_offset),
                f'action_offset must be finite, got {list(self.action_offset)}')
        require_one_of('action_mode', self.action_mode, ACTION_MODES)
        require_int_range('action_horizon', self.action_horizon, 0, 10000, ' actions')
        require(not self.send_prefix or self.protocol == 'gr00t',
                'send_prefix needs protocol gr00t (openpi has no input for a prefix)')


@dataclasses.dataclass(frozen=True)
class ServePolicyConfig:
    """serve_policy: the sim cell's demonstrator served over openpi's or GR00T's protocol."""

    protocol: str = 'openpi'       # openpi (websocket) or gr00t (ZMQ REP)
    bind: str = '127.0.0.1'        # interface the server listens on
    port: int = 8000               # port the server listens on
    api_token: str = ''            # refuse requests without this token ('' = no token)
    episode_host: str = '127.0.0.1'  # where sim_cell publishes its episode reports
    episode_port: int = 5558       # sim_cell's episode_port

    def __post_init__(self) -> None:
        require_one_of('protocol', self.protocol, POLICY_PROTOCOLS)
        require_host('bind', self.bind)
        require_port('port', self.port)
        require_string('api_token', self.api_token)
        require_host('episode_host', self.episode_host)
        require_port('episode_port', self.episode_port)
