"""Shared fixtures: ROS domain isolation, an rclpy context per module, bounded waits."""
from __future__ import annotations

import contextlib
import io
import os
import time
import zlib

import numpy as np
import pytest

from vla_insertion.core.distro import localhost_discovery

# One torch thread in the tests and the programs they start: two OpenMP threads on a busy
# 2-core machine spin against each other (a 4 s test took 356 s); tests measure no speed.
os.environ.setdefault('OMP_NUM_THREADS', '1')

_USED_DOMAINS: set[int] = set()
# ROS domains the test modules may use: 'FIRST:COUNT'. The default 120..219 keeps clear of the
# default 0 and of the demo (77); two suites running at once on one host (two checkouts) give
# each its own range so their graphs never meet.
_DOMAINS = os.environ.get('VLA_TEST_DOMAINS', '120:100')


def _domain_for(module_name: str) -> int:
    # Stable per module, unique within one pytest run.
    first, count = (int(v) for v in _DOMAINS.split(':'))
    if len(_USED_DOMAINS) >= count:
        raise RuntimeError(f'VLA_TEST_DOMAINS={_DOMAINS} has no free ROS domain left')
    domain = first + zlib.crc32(module_name.encode()) % count
    while domain in _USED_DOMAINS:
        domain = first + (domain - first + 1) % count
    _USED_DOMAINS.add(domain)
    return domain


# Tests that are slow by definition (the `slow` marker, setup.cfg) without saying so: those
# that use the tiny VLM (built once, run by every test that asks for it, through any fixture)
# or the environment of child processes (they start programs), and launch tests (they start
# the cell). Other slow tests carry the marker themselves.
SLOW_FIXTURES = ('tiny_vlm_dir', 'ros_env')


@pytest.hookimpl(tryfirst=True)     # before `-m` deselects: it must see these markers
def pytest_collection_modifyitems(items) -> None:
    try:
        from launch_testing.pytest.hooks import LaunchTestItem
    except ImportError:             # no launch_testing: its tests are skipped anyway
        LaunchTestItem = ()
    for item in items:
        if isinstance(item, LaunchTestItem) or any(
                name in SLOW_FIXTURES for name in getattr(item, 'fixturenames', ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope='module')
def ros_domain_id(request) -> int:
    return _domain_for(request.module.__name__)


@pytest.fixture(scope='module')
def ros_env(ros_domain_id) -> dict:
    """Return the environment for child processes that join this module's ROS domain."""
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(ros_domain_id)
    localhost_discovery(env)             # the variable of this distribution
    env['PYTHONUNBUFFERED'] = '1'
    return env


@pytest.fixture(scope='module')
def rclpy_context(ros_domain_id):
    """Yield an initialised rclpy context on this module's own domain."""
    rclpy = pytest.importorskip('rclpy')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    yield context
    rclpy.try_shutdown(context=context)


def _spin_until(executor, predicate, timeout_s: float, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=step_s)
    return predicate()


@pytest.fixture(scope='session')
def tiny_vlm_dir(tmp_path_factory):
    """Write the untrained tiny Qwen2.5-VL once per test session and return its folder."""
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    from vla_insertion.core.vlm.model import write_tiny_model
    return write_tiny_model(tmp_path_factory.mktemp('vlm') / 'tiny-qwen2.5-vl', seed=0)


def write_cell_bag(path, duration_s: float = 3.0, views=('zed_1', 'oak'),
                   joints=lambda t: 0.3 * np.sin(2 * np.pi * 0.5 * t + np.arange(6)),
                   gripper=lambda t: 1.0, sensor_gap=None, t0_ns: int = 1_700_000_000 * 10**9,
                   seed: int = 0) -> None:
    """Write a bag as the bridges publish: cameras 10 FPS, robot 100 Hz, windows 65 Hz.

    `joints(t)` (6,) [rad] and `gripper(t)` of the time since the start [s]; `sensor_gap`
    (start, end) [s]: no sensor window in between. Log times trail the stamps by the small
    delays a recorder sees.
    """
    from PIL import Image
    from vla_insertion.core import bag
    from vla_insertion.core.data import DEFAULT_SENSOR_CHANNELS

    rng = np.random.default_rng(seed)
    events = [(k * 10_000_000, 'robot', k) for k in range(int(duration_s * 100))]
    events += [(k * 15_384_615, 'sensor', k) for k in range(int(duration_s * 65))
               if sensor_gap is None or not sensor_gap[0] <= k * 15_384_615e-9 <= sensor_gap[1]]
    events += [(k * 100_000_000 + 3_000_000, v, k) for k in range(int(duration_s * 10))
               for v in views]
    events.sort()
    jpegs = []
    for _ in range(4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (36, 64, 3), dtype=np.uint8)).save(buf, 'JPEG')
        jpegs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    with bag.BagWriter(path) as w:
        for v in views:
            w.add_topic(f'/cameras/{v}/image/compressed', 'sensor_msgs/msg/CompressedImage')
        w.add_topic('/robot/joint_states', 'sensor_msgs/msg/JointState')
        w.add_topic('/robot/pose', 'geometry_msgs/msg/PoseStamped')
        w.add_topic('/sensor/window', 'vla_insertion/msg/SensorWindow')
        for offset, kind, k in events:
            t, h = t0_ns + offset, bag.header(t0_ns + offset)
            if kind == 'robot':
                w.write_msg('/robot/joint_states', t + 500_000, bag.make_message(
                    'sensor_msgs/msg/JointState', header=h,
                    name=[f'joint_{j + 1}' for j in range(6)] + ['gripper'],
                    position=np.r_[joints(offset * 1e-9), gripper(offset * 1e-9)]))
                pose = bag.make_message('geometry_msgs/msg/Pose')
                pose.orientation.w = 1.0
                w.write_msg('/robot/pose', t + 500_000, bag.make_message(
                    'geometry_msgs/msg/PoseStamped', header=h, pose=pose))
            elif kind == 'sensor':
                w.write_msg('/sensor/window', t + 200_000, bag.make_message(
                    'vla_insertion/msg/SensorWindow', header=h, sample_rate_hz=650.0,
                    num_samples=65, num_channels=7, channel_names=list(DEFAULT_SENSOR_CHANNELS),
                    data=rng.standard_normal(65 * 7).astype(np.float32), valid_samples=65,
                    clock_calibrated=True))
            else:
                w.write_msg(f'/cameras/{kind}/image/compressed', t + 2_000_000,
                            bag.make_message('sensor_msgs/msg/CompressedImage', header=h,
                                             format='jpeg', data=jpegs[k % 4]))


@pytest.fixture(scope='session')
def cell_bag_writer():
    """Return `write_cell_bag(path, ...)`: a short recorded session of the cell's inputs."""
    return write_cell_bag


def _expert_observation(contract, now_s: float, rng, feature_age_s: float, prefix=None):
    """Return an ExpertObservation for a checkpoint of `contract`.

    Random features and window (drawn in that order from `rng`), the robot at rest at the
    origin, the views taken at its current state.
    """
    from vla_insertion.core.data import RobotState, SensorWindowData, VLFeatureData
    from vla_insertion.core.interfaces import ExpertObservation
    shape = (contract.num_tokens, contract.feature_dim)
    features = VLFeatureData(stamp_s=now_s - feature_age_s, sequence=1, model_id='test',
                             features=rng.normal(size=shape).astype(np.float32),
                             contract_hash=contract.digest)
    window = SensorWindowData(stamp_s=now_s, samples=rng.normal(size=(65, 7)).astype(np.float32),
                              valid_samples=65, sample_rate_hz=650.0)
    robot = RobotState(stamp_s=now_s, joint_positions_rad=np.zeros(6),
                       tool_position_m=np.zeros(3), tool_orientation_xyzw=np.array([0, 0, 0, 1.0]))
    return ExpertObservation(features=features, window=window, robot=robot, now_s=now_s,
                             prefix=prefix, capture_robot=robot)


@pytest.fixture(scope='session')
def expert_observation():
    """Return `make(contract, now_s, rng, feature_age_s, prefix=None)`: an ExpertObservation."""
    return _expert_observation


def _paired_dataset(features, windows, states, actions, feature_index=None):
    """Return a `PairedDataset` of in-memory samples with a fixed pairing.

    Sample i: windows[i] (W, C), states[i] (S,), actions[i] (H, A) physical, and the features
    features[feature_index[i]] (T, F) (default: i), taken at the tick (no motion since the
    capture). Each sample ticks 0.5 s after a VLM update of its own, the only one young enough.
    """
    from vla_insertion.core.train.dataset import FeatureBank, PairedDataset
    from vla_insertion.core.train.feature_age import load_age_model
    from vla_insertion.core.train.feature_cache import CachedBag, VlUpdate
    from vla_insertion.core.train.split import Episode
    states = np.asarray(states, dtype=np.float32)
    n = states.shape[0]
    index = np.arange(n) if feature_index is None else np.asarray(feature_index)
    updates = [VlUpdate(run_s=float(i), stamp_s=float(i), view_stamps_s=()) for i in range(n)]
    bank = FeatureBank([CachedBag('memory', updates,
                                  np.asarray(features, dtype=np.float32)[index])])
    bank.captures = states                                        # (N, S): at the tick
    ticks = [{'tick_s': list(np.arange(n) + 0.5),
              'windows': list(np.asarray(windows, dtype=np.float32)), 'states': list(states),
              'actions': list(np.asarray(actions, dtype=np.float32))}]
    return PairedDataset(bank, ticks, [0], [Episode('memory')], load_age_model('newest', 0.9),
                         0.9)


@pytest.fixture(scope='session')
def paired_dataset():
    """Return `make(features, windows, states, actions, feature_index=None)`: a PairedDataset."""
    return _paired_dataset


@pytest.fixture
def spin(rclpy_context):
    """Return `start(*nodes)`: spin them in the background until the test ends (support.py)."""
    from support import spinning
    with contextlib.ExitStack() as stack:
        yield lambda *nodes: stack.enter_context(spinning(rclpy_context, *nodes))


@pytest.fixture
def spin_until():
    """Return a function that spins an executor until a predicate holds or a timeout passes."""
    return _spin_until


TRAIN_VIEWS = ('zed_1', 'oak')


@pytest.fixture(scope='session')
def cached_bags(tmp_path_factory, tiny_vlm_dir):
    """Three 4 s recorded sessions, a params file and their VL-feature cache (tiny VLM).

    Returns a dict: bags (folders), params (file), cache (folder), vlm_config. The cache runs
    the VLM on every new set of views (`vl_period_s` 0).
    """
    from vla_insertion.core.config import VlmConfig
    from vla_insertion.core.train.feature_cache import build_cache
    folder = tmp_path_factory.mktemp('cached')
    bags = []
    for i in range(3):
        bags.append(str(folder / f'bag{i}'))
        write_cell_bag(bags[-1], 4.0, TRAIN_VIEWS, seed=i,
                       joints=lambda t, i=i: 0.3 * np.sin(np.pi * t + np.arange(6) + i),
                       gripper=lambda t, i=i: 0.2 + 0.3 * i)
    params = folder / 'params.yaml'
    params.write_text(f'/**/vlm_node:\n  ros__parameters:\n    model: {tiny_vlm_dir}\n'
                      f'    view_names: [{", ".join(TRAIN_VIEWS)}]\n    image_width: 112\n'
                      '    image_height: 56\n    torch_threads: 1\n')
    vlm_config = VlmConfig(model=str(tiny_vlm_dir), view_names=TRAIN_VIEWS, image_width=112,
                           image_height=56, torch_threads=1)
    cache = folder / 'cache'
    build_cache(bags, vlm_config, cache, 0.0)
    return {'bags': bags, 'params': str(params), 'cache': str(cache), 'vlm_config': vlm_config}


def _call_service(node, srv_type, name: str, request, timeout_s: float = 30.0):
    """Call a service from `node` (spun by a background executor); None if it did not answer.

    For the ROS interfaces a person uses from ros2cli (parameters, lifecycle), which is not
    installed here: the tests call the same services.
    """
    client = node.create_client(srv_type, name)
    try:
        if not client.wait_for_service(timeout_sec=timeout_s):
            return None
        future = client.call_async(request)
        deadline = time.monotonic() + timeout_s
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        return future.result() if future.done() else None
    finally:
        node.destroy_client(client)


@pytest.fixture
def call_service():
    """Return `call(node, srv_type, name, request, timeout_s=30)` -> response or None."""
    return _call_service
