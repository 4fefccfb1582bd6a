"""Demonstrations recorded in-process, as the bags a live recording gives, faster.

The reference policy drives the sim cell through the real chunk executor in the in-process
loop.
`record_demonstrations --backend ros` records the real nodes in real time (about 8 s of wall
time per episode, the cameras at 30 FPS); this writes the same topics with the same message
contents from the in-process closed loop (core/sim/loop.py: the demonstrator's chunks, the
real ChunkExecutor, the sim cell), one bag per episode, so data for training costs about a
second per episode and the feature cache and train_expert read it unchanged:

    cameras/<view>/image/compressed   rendered JPEGs at camera_fps, stamped with the capture
    robot/joint_states, robot/pose    the measured arm at 100 Hz (joints, gripper, tool pose)
    sensor/window                     the newest 65 samples at 650 Hz, one window per batch
    vla/action_chunk                  the demonstrator's chunks (what the expert imitates), before
                                      the DART offset the executed commands carry
    vla/command                       the executor's command of every control step (100 Hz), as
                                      chunk_executor publishes it: what was executed, noise and all

With a `LearnedDriver` (DAgger) the learned policy drives instead and the demonstrator only
labels: `vla/action_chunk` holds its answer to the observation of every tick of the learned
policy, so the bags show the states the policy itself visits (a peg a millimetre off over the
hole, pressed on the block top, wedged in the rim) with what the demonstrator would do there.
It answers any observation (a function of what it sees, the sensor window included): it lifts
a wedged peg out and searches beside the hole (core/sim/reference.py), so every tick gets a
label (the manifest counts the wedged ones, `jammed_ticks`).

Times are the cell's clock shifted to a fixed epoch; the log time of every message is its
stamp (what the live recorder sees within milliseconds). ROS-free.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
import functools
from pathlib import Path

import numpy as np

from vla_insertion.core import bag, topics
from vla_insertion.core.bag.messages import GRIPPER_JOINT
from vla_insertion.core.config import DEFAULT_WRIST_VIEWS, ExpertConfig, VlmConfig
from vla_insertion.core.data import DEFAULT_SENSOR_CHANNELS
from vla_insertion.core.orchestration.builders import (
    executor_settings, ExecutorSettings, learned_loop, SIM_EXECUTOR)
from vla_insertion.core.sim.cell import CellParams, SimCell
from vla_insertion.core.sim.contact import JAMMED
from vla_insertion.core.sim.loop import PipelineLoop, PipelineTiming
from vla_insertion.core.sim.reference import APPROACH, DESCEND, felt_force, ReferencePolicy
from vla_insertion.core.sim.render import SceneRenderer

EPOCH_NS = 1_700_000_000 * 10**9        # the cell's t = 0 in the bags' time
JOINT_NAMES = tuple(f'joint_{i}' for i in range(1, 7))


@dataclass(frozen=True)
class DemoStreams:
    """What goes into each bag, at which rates."""

    views: tuple[str, ...]
    wrist_views: tuple[str, ...] = DEFAULT_WRIST_VIEWS   # of views: the hand-eye cameras
    width: int = 640                # rendered image size [px]
    height: int = 360
    camera_fps: float = 10.0        # frames per view per second (the VLM runs at ~2.6 Hz) [Hz]
    robot_rate_hz: float = 100.0    # joint states and poses [Hz]
    window_rate_hz: float = 65.0    # sensor windows (batches of 10 samples at 650 Hz) [Hz]
    jpeg_quality: int = 80


@dataclass(frozen=True)
class LearnedDriver:
    """The learned policy that drives while the demonstrator labels (DAgger)."""

    vlm: VlmConfig                  # the VLM it runs on
    expert: ExpertConfig            # its checkpoint, staleness limits and precision


class PerturbedReference:
    """The demonstrator with a smooth random joint offset added to what it commands (DART).

    Demonstrations that only ever show the nominal path teach a policy to continue whatever
    path it is on (the current pose alone predicts the next one there), so it cannot recover
    once off it. An Ornstein-Uhlenbeck offset of `sigma_rad` per joint (correlation time
    `tau_s`) pushes the arm off the path; the demonstrator replans from the measured state at
    every tick, so the recordings show the corrections back to the hole. The offset fades out
    within `fade_m` of the point above the hole the approach heads for and within `fade_m` of
    1 cm over the block top.

    In the descent over the hole it is `descent_fraction` of its size, fading out from
    5 x `descent_floor_m` to `descent_floor_m` over the block. A learned policy arrives over
    the hole a millimetre or two off; demonstrations whose descent is always aligned never show
    such a peg pulled back over the axis, and the policy cloned from them went straight down
    beside the hole. Near the rim the demonstrator must align to 0.5 mm to insert: with the
    noise on down to the rim 2 of 30 episodes succeeded, with the fade 30 of 30. The insertion
    itself is clean (noise in the hole wedges the peg, which the demonstrator cannot undo).

    Misled descents (`misled_fraction` of the episodes): the commands come from a demonstrator
    that believes the hole `misled_range_m` off (a random direction), as a learned policy with
    a wrong estimate from the wrist camera would, until the sensor feels the block top or a
    wedge (`contact_force_n`); from there the demonstrator drives: it searches or lifts and
    inserts. The recordings then show what a policy meets at the rim and what to do there.
    The labels are always the demonstrator's answers to what it sees (`clean`).
    """

    def __init__(self, reference: ReferencePolicy, sigma_rad: float, tau_s: float = 0.5,
                 fade_m: float = 0.04, descent_fraction: float = 0.0,
                 descent_floor_m: float = 0.004, misled_fraction: float = 0.0,
                 misled_range_m: tuple[float, float] = (0.0012, 0.003), seed: int = 0) -> None:
        self.reference, self.sigma, self.tau, self.fade_m = reference, sigma_rad, tau_s, fade_m
        self.descent_fraction, self.descent_floor_m = descent_fraction, descent_floor_m
        self.misled_fraction, self.misled_range_m = misled_fraction, misled_range_m
        # centring on its wrong hole precisely: it touches or wedges as far off as it is misled
        self._misled = ReferencePolicy(replace(reference.params, align_m=0.0002))
        self._shift: np.ndarray | None = None   # (3,) where it believes the hole is, off [m]
        self._rng = np.random.default_rng(seed)
        self._offset = np.zeros(6)
        self._clean: dict[int, object] = {}     # sequence -> the chunk before the offset

    @property
    def misled(self) -> bool:
        """Whether the commands still come from the misled demonstrator."""
        return self._shift is not None

    def reset(self) -> None:
        self.reference.reset()
        self._misled.reset()
        self._offset = np.zeros(6)
        self._clean.clear()
        self._shift = None
        if self.misled_fraction > 0.0 and self._rng.random() < self.misled_fraction:
            size, angle = self._rng.uniform(*self.misled_range_m), self._rng.uniform(0, 2 * np.pi)
            self._shift = np.array([size * np.cos(angle), size * np.sin(angle), 0.0])

    def clean(self, chunk):
        """Return the demonstrator's chunk before the offset for a chunk `infer` returned."""
        return self._clean.get(chunk.sequence, chunk)

    def infer(self, obs):
        chunk = self.reference.infer(obs)            # the label, whoever drives
        driving, phase = chunk, self.reference.phase
        if self._shift is not None:
            params = self.reference.params
            if felt_force(obs.window, params.force_samples)[2] >= params.contact_force_n:
                self._shift = None                   # it felt the block: the demonstrator on
            else:
                driving = replace(self._misled.infer(replace(
                    obs, hole_top_m=obs.hole_top_m + self._shift,
                    approach_offset_m=np.zeros(2))), sequence=chunk.sequence)
                phase = self._misled.phase
        decay = np.exp(-chunk.dt_s / self.tau)
        self._offset = decay * self._offset + self.sigma * np.sqrt(1.0 - decay ** 2) * \
            self._rng.standard_normal(6)
        above = obs.hole_top_m + np.r_[obs.approach_offset_m, self.reference.params.above_m]
        distance = float(np.linalg.norm(obs.robot.tool_position_m - above))
        scale = float(np.clip((distance - 0.01) / self.fade_m, 0.0, 1.0))
        # and near the block: an offset of a few centimetres at the tip pushes a peg that is
        # low beside the hole into the block top (over-force), which shows nothing to learn
        height = float(obs.robot.tool_position_m[2] - obs.hole_top_m[2])
        scale *= float(np.clip((height - 0.01) / self.fade_m, 0.0, 1.0))
        if phase == DESCEND:
            scale = self.descent_fraction * float(np.clip(
                (height - self.descent_floor_m) / (4 * self.descent_floor_m), 0.0, 1.0))
        elif phase != APPROACH:
            scale = 0.0
        actions = np.array(driving.actions, dtype=np.float32)
        actions[:, :6] += (scale * self._offset).astype(np.float32)
        self._clean = {k: v for k, v in self._clean.items() if k > chunk.sequence - 16}
        self._clean[chunk.sequence] = chunk
        return replace(driving, actions=actions)


class _BagSink:
    """Write one episode's messages as the bridges and the expert would publish them."""

    def __init__(self, path: Path, streams: DemoStreams,
                 joint_names: tuple[str, ...] = JOINT_NAMES) -> None:
        self.writer = bag.BagWriter(path)
        self.streams = streams
        self.joint_names = joint_names              # of the executor's commands
        self._commands = 0
        for view in streams.views:
            self.writer.add_topic('/' + topics.camera_topic(view), topics.CAMERAS.msgtype)
        for entry in (topics.JOINT_STATES, topics.POSE, topics.SENSOR_WINDOW,
                      topics.ACTION_CHUNK, topics.COMMAND):
            self.writer.add_topic('/' + entry.name, entry.msgtype)

    def write(self, topic: str, t_s: float, msg) -> None:
        self.writer.write_msg('/' + topic, EPOCH_NS + int(round(t_s * 1e9)), msg)

    def frame(self, view: str, t_s: float, jpeg: bytes) -> None:
        self.write(topics.camera_topic(view), t_s, bag.make_message(
            topics.CAMERAS.msgtype, header=self._header(t_s, view), format='jpeg',
            data=np.frombuffer(jpeg, dtype=np.uint8)))

    def robot(self, t_s: float, state) -> None:
        robot = state.robot_state(t_s)
        self.write(topics.JOINT_STATES.name, t_s, bag.make_message(
            topics.JOINT_STATES.msgtype, header=self._header(t_s),
            name=list(JOINT_NAMES) + [GRIPPER_JOINT],
            position=np.r_[robot.joint_positions_rad, robot.gripper].astype(np.float64)))
        pose = bag.make_message('geometry_msgs/msg/Pose')
        (pose.position.x, pose.position.y, pose.position.z) = map(float, robot.tool_position_m)
        (pose.orientation.x, pose.orientation.y, pose.orientation.z,
         pose.orientation.w) = map(float, robot.tool_orientation_xyzw)
        self.write(topics.POSE.name, t_s, bag.make_message(
            topics.POSE.msgtype, header=self._header(t_s, 'base_link'), pose=pose))

    def window(self, window) -> None:
        rows, cols = window.samples.shape
        self.write(topics.SENSOR_WINDOW.name, window.stamp_s, bag.make_message(
            topics.SENSOR_WINDOW.msgtype, header=self._header(window.stamp_s),
            sample_rate_hz=float(window.sample_rate_hz), num_samples=rows, num_channels=cols,
            channel_names=list(DEFAULT_SENSOR_CHANNELS),
            data=np.ascontiguousarray(window.samples, dtype=np.float32).ravel(),
            valid_samples=int(window.valid_samples), clock_calibrated=True))

    def chunk(self, t_s: float, chunk) -> None:
        horizon, dim = chunk.actions.shape
        self.write(topics.ACTION_CHUNK.name, t_s, bag.make_message(
            topics.ACTION_CHUNK.msgtype, header=self._header(chunk.stamp_s),
            dt_s=float(chunk.dt_s), horizon=horizon, action_dim=dim,
            actions=np.ascontiguousarray(chunk.actions, dtype=np.float32).ravel(),
            sequence=int(chunk.sequence)))

    def command(self, t_s: float, command, chunk_delay_s: float) -> None:
        """One control step's JointCommand, with the fields chunk_executor publishes.

        `sent` is what the node sends to a connected robot (armed, or a stop in force).
        """
        self._commands += 1
        self.write(topics.COMMAND.name, t_s, bag.make_message(
            topics.COMMAND.msgtype, header=self._header(command.stamp_s),
            joint_names=list(self.joint_names),
            positions=np.asarray(command.positions, dtype=np.float64),
            velocities=np.asarray(command.velocities, dtype=np.float64),
            gripper=float(command.gripper), target_lead_s=float(command.lead_s),
            chunk_sequence=int(command.chunk_sequence),
            action_index=float(command.action_index), chunk_delay_s=float(chunk_delay_s),
            armed=bool(command.armed), sent=bool(command.to_robot), hold=bool(command.hold),
            fault=command.fault, state=command.state, interventions=list(command.interventions),
            sequence=self._commands))

    @staticmethod
    def _header(t_s: float, frame_id: str = ''):
        return bag.header(EPOCH_NS + int(round(t_s * 1e9)), frame_id)

    def close(self) -> None:
        self.writer.close()


class _Recorder:
    """Observe the in-process loop every physics step and write at the streams' rates."""

    def __init__(self, loop: PipelineLoop, sink: _BagSink, renderer: SceneRenderer) -> None:
        self.loop, self.sink, self.renderer = loop, sink, renderer
        s = sink.streams
        self._next = {'camera': 0.0, 'robot': 0.0, 'window': 0.0}
        self._period = {'camera': 1.0 / s.camera_fps, 'robot': 1.0 / s.robot_rate_hz,
                        'window': 1.0 / s.window_rate_hz}

    def __call__(self, t_s: float) -> None:
        for stream in ('camera', 'robot', 'window'):
            if t_s < self._next[stream] - 1e-12:
                continue
            self._next[stream] = t_s + self._period[stream] - 1e-9
            state = self.loop.cell.state()
            if stream == 'camera':
                for i, view in enumerate(self.sink.streams.views):
                    self.sink.frame(view, t_s, self.renderer.render_jpeg(
                        i, state, self.sink.streams.jpeg_quality))
            elif stream == 'robot':
                self.sink.robot(t_s, state)
            else:
                self.sink.window(self.loop.window(t_s))


def _write_command(sink: _BagSink, executor, t_s: float, command) -> None:
    sink.command(t_s, command, executor.last_delay_s)


def record_episodes(out_dir: str | Path, episodes: int, streams: DemoStreams, *, seed: int = 0,
                    first_episode: int = 0, executor: ExecutorSettings | None = None,
                    timing: PipelineTiming = PipelineTiming(), keep_failures: bool = False,
                    start_range_rad: float = 0.0, noise_rad: float = 0.0,
                    descent_noise: float = 0.0, misled_fraction: float = 0.0,
                    driver: LearnedDriver | None = None, on_episode=None) -> list[dict]:
    """Record `episodes` demonstration episodes, one bag each (episode_<index>); the manifest.

    `start_range_rad`: each episode starts from home + U(+- this) per joint; `noise_rad`: the
    demonstrator's commands carry a smooth random offset of this size (PerturbedReference), in
    the descent over the hole `descent_noise` of it; `misled_fraction` of the episodes descend
    on a hole believed 1.2-3 mm off until the sensor feels the block. Failed episodes (rare for the
    demonstrator) are deleted unless keep_failures. With `driver` the learned policy drives
    (no noise: its own errors are the perturbation) and the demonstrator labels every tick;
    its failed episodes are kept, they hold the states it most needs labels for. `executor`:
    the cell's (builders.executor_settings of its params file, joint limits included), so that
    the data is recorded under the limits the policy runs with; None: the defaults, armed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = replace(CellParams(), episode=replace(CellParams().episode,
                                                   start_range_rad=start_range_rad))
    cell = SimCell(params, seed=seed, first_episode=first_episode)
    settings = executor if executor is not None else executor_settings(
        None, overrides=SIM_EXECUTOR)
    chunk_executor = settings.build()
    reference = ReferencePolicy()
    if driver is not None:
        loop = learned_loop(cell, chunk_executor, timing, driver.expert.checkpoint, driver.vlm,
                            driver.expert, seed=seed, labeller=reference)
        keep_failures = True
    else:
        if noise_rad > 0 or misled_fraction > 0:
            # seeded by the first episode too: recorders of disjoint episode ranges (workers)
            # must not all draw the same noise
            reference = PerturbedReference(reference, noise_rad, descent_fraction=descent_noise,
                                           misled_fraction=misled_fraction,
                                           seed=seed * 100_003 + first_episode)
        loop = PipelineLoop(cell, chunk_executor, timing, reference=reference, seed=seed)
    renderer = SceneRenderer(streams.views, streams.width, streams.height, streams.wrist_views)
    manifest = []
    for _ in range(episodes):
        index = cell.spec.index
        path = out / f'episode_{index:04d}'
        sink = _BagSink(path, streams, tuple(chunk_executor.config.joint_names))
        loop.observer = _Recorder(loop, sink, renderer)
        loop.on_command = functools.partial(_write_command, sink, chunk_executor)
        jammed, labels = [0], [0]
        if driver is not None:
            def label(t: float, chunk) -> None:
                jammed[0] += cell.state().contact == JAMMED   # labelled too: lift it out
                labels[0] += 1
                sink.chunk(t, chunk)
            loop.on_label = label
        elif isinstance(reference, PerturbedReference):
            # the label is what the demonstrator meant, the executed command carries the noise
            # (the recorded joints show it)
            loop.on_chunk = lambda t, chunk: sink.chunk(t, reference.clean(chunk))
        else:
            loop.on_chunk = sink.chunk
        try:
            metrics = loop.run_episode()
        finally:
            sink.close()
            loop.observer = loop.on_chunk = loop.on_label = loop.on_command = None
        record = metrics.record
        entry = {'bag': path.name, 'seed': seed, 'episode': index,
                 'hole_m': list(record.hole_top_m), 'success': record.success,
                 'reason': record.reason, 'duration_s': record.duration_s,
                 'messages': bag.bag_info(path).message_count}
        if driver is not None:
            entry.update(labels=labels[0], jammed_ticks=jammed[0])
        if record.success or keep_failures:
            manifest.append(entry)
        else:
            import shutil
            shutil.rmtree(path)
        if on_episode is not None:
            on_episode(entry)
    return manifest


def _record_range(job: tuple) -> list[dict]:
    """One worker: `record_episodes(out, count, streams, first_episode=first, **kwargs)`."""
    out, first, count, streams, kwargs, log_prefix = job
    if kwargs.get('driver') is not None:
        import torch
        torch.set_num_threads(1)            # the workers share the cores
    if log_prefix is not None:
        import logging
        logging.basicConfig(level=logging.INFO, format=f'{log_prefix}%(message)s')
        kwargs = {**kwargs, 'on_episode': lambda e: logging.getLogger('demos').info(
            f'episode {e["episode"]}: {e["reason"]} in {e["duration_s"]:.1f} s')}
    return record_episodes(out, count, streams, first_episode=first, **kwargs)


def record_parallel(out_dir: str | Path, episodes: int, streams: DemoStreams, *,
                    workers: int = 1, first_episode: int = 0, log_prefix: str | None = None,
                    **kwargs) -> list[dict]:
    """`record_episodes` over `workers` processes, each a disjoint range of the episodes.

    The manifest in episode order. `kwargs`: record_episodes' (seed, driver, noise, ...).
    Workers are spawned, not forked (a parent that has run torch must not fork its thread
    pools); `log_prefix`: each worker logs its episodes with it (None: quiet).
    """
    workers = max(1, min(workers, episodes))
    bounds = [first_episode + episodes * k // workers for k in range(workers + 1)]
    jobs = [(out_dir, lo, hi - lo, streams, kwargs, log_prefix)
            for lo, hi in zip(bounds, bounds[1:])]
    if workers == 1:
        return record_episodes(out_dir, episodes, streams, first_episode=first_episode,
                               **kwargs) if log_prefix is None else _record_range(jobs[0])
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn')) as pool:
        return [e for part in pool.map(_record_range, jobs) for e in part]
