"""sim_cell with control=commands over loopback: follows command_v1, holds, reports episodes.

sim_cell runs as a subprocess on free ports with only its robot stream (the cheapest); the test
speaks the wire formats with ZMQ: it pushes command_v1, subscribes to robot_v1 and episode_v1.
Waits are bounded and on conditions; nothing here asserts a timing.
"""
import json
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from vla_insertion.core.sim.kinematics import solve_ik
from vla_insertion.core.wire import (
    CommandCodecV1, CommandMessage, EpisodeCodecV1, FLAG_ARMED, RobotCodecV1)

ROOT = Path(__file__).resolve().parents[3]
SESSION = 0x5EED


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Cell:
    """The test's side of the sockets: robot and episode subscribers, a command pusher."""

    def __init__(self, ports: dict) -> None:
        self.context = zmq.Context(1)
        self.robot = self._sub(ports['robot'])
        self.episodes = self._sub(ports['episode'])
        self.push = self.context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(f'tcp://127.0.0.1:{ports["command"]}')
        self.states: list[np.ndarray] = []                 # joints [rad], in arrival order
        self.reports = []
        self.sequence = 0

    def _sub(self, port: int) -> zmq.Socket:
        sub = self.context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b'')
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(f'tcp://127.0.0.1:{port}')
        return sub

    def receive(self, wait_s: float = 0.01) -> None:
        """Take whatever arrived within wait_s."""
        poller = zmq.Poller()
        poller.register(self.robot, zmq.POLLIN)
        poller.register(self.episodes, zmq.POLLIN)
        ready = dict(poller.poll(int(wait_s * 1000)))
        while self.robot in ready and self.robot.poll(0):
            msg = RobotCodecV1().decode(self.robot.recv())
            self.states.append(np.radians(msg.joints_deg))
        while self.episodes in ready and self.episodes.poll(0):
            self.reports.append(EpisodeCodecV1().decode(self.episodes.recv()))

    def wait_for(self, condition, timeout_s: float, each=None) -> bool:
        """Receive until condition() holds; call each() every ~10 ms (to stream commands)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            if each is not None:
                each()
            self.receive(0.01)
        return condition()

    def send(self, positions, velocities=None, lead_s=0.05, timeout_s=0.1, flags=FLAG_ARMED,
             sequence=None) -> None:
        velocities = np.zeros(6) if velocities is None else velocities
        seq = self.sequence if sequence is None else sequence
        self.push.send(CommandCodecV1().encode(CommandMessage(
            sender_time_s=time.time(), positions_rad=tuple(map(float, positions)),
            velocities_rad_s=tuple(map(float, velocities)), gripper=1.0, lead_s=lead_s,
            timeout_s=timeout_s, flags=flags, session=SESSION, sequence=seq)))
        if sequence is None:
            self.sequence += 1

    def close(self) -> None:
        self.context.destroy(linger=0)


@pytest.fixture(scope='module')
def sim(tmp_path_factory):
    ports = {name: free_port() for name in ('robot', 'command', 'episode', 'camera')}
    ports['sensor'] = free_port(socket.SOCK_DGRAM)
    log = tmp_path_factory.mktemp('sim_cell') / 'episodes.jsonl'
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
    proc = subprocess.Popen(
        [sys.executable, '-m', 'vla_insertion.tools.sim_cell', '--control', 'commands',
         '--streams', 'robot', '--robot-port', str(ports['robot']), '--command-port',
         str(ports['command']), '--episode-port', str(ports['episode']), '--camera-port',
         str(ports['camera']), '--sensor-port', str(ports['sensor']), '--episode-period-s',
         '0.2', '--settle-s', '0.3', '--episode-log', str(log)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cell = Cell(ports)
    try:
        yield cell, proc, log
    finally:
        cell.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15.0)
            except subprocess.TimeoutExpired:
                proc.kill()
        print(proc.stdout.read())


def stable(states: list, n: int = 20, tolerance: float = 2e-4) -> bool:
    """Return True if the last n states agree within tolerance [rad] (noise ~4e-5 rad)."""
    return len(states) >= n and np.ptp(np.array(states[-n:]), axis=0).max() < tolerance


@pytest.mark.slow
def test_robot_state_follows_commands_and_holds_when_they_stop(sim):
    cell, proc, _ = sim
    assert cell.wait_for(lambda: stable(cell.states), 60.0), proc.poll()
    home = np.mean(cell.states[-20:], axis=0)
    start = time.monotonic()
    w, lead = 0.5, 0.05                                     # joint 1 at 0.5 rad/s

    def ramp():
        t = time.monotonic() - start + lead
        cell.send(home + [w * t, 0, 0, 0, 0, 0], [w, 0, 0, 0, 0, 0], lead_s=lead)
    n = len(cell.states)
    assert cell.wait_for(lambda: cell.states[-1][0] > home[0] + 0.15, 20.0, each=ramp)
    last_target = home[0] + w * (time.monotonic() - start + lead)
    moving = np.array(cell.states[n:])
    assert (np.diff(moving[:, 0]) > -1e-3).all()            # followed forward
    np.testing.assert_allclose(moving[:, 1:], np.tile(home[1:], (len(moving), 1)), atol=1e-3)

    # commands stop mid-motion: the arm stops within its limits near the last target and stays
    assert cell.wait_for(lambda: stable(cell.states), 10.0)
    held = np.mean(cell.states[-20:], axis=0)
    assert home[0] + 0.15 < held[0] < last_target + 0.1
    # a stale command (older sequence, aiming home) and junk are dropped: nothing moves
    cell.send(home, sequence=0)
    cell.push.send(b'JUNK' + bytes(140))
    count = len(cell.states)
    assert cell.wait_for(lambda: len(cell.states) >= count + 50, 10.0)
    after = np.array(cell.states[count:])
    assert np.abs(after - held).max() < 2e-4


@pytest.mark.slow
def test_episode_reports_arrive_and_pushing_into_the_block_fails_the_episode(sim):
    cell, proc, log = sim
    assert cell.wait_for(lambda: any(r.event == 'status' for r in cell.reports), 30.0)
    status = [r for r in cell.reports if r.event == 'status'][-1]
    assert (status.control, status.state, status.success, status.reason) == (
        'commands', 'running', None, None)
    episode = status.episode
    hole = np.array(status.hole_m)
    assert cell.wait_for(lambda: stable(cell.states), 10.0)
    here = np.mean(cell.states[-20:], axis=0)
    above = hole + [0.02, 0.01, 0.02]
    path = above + np.linspace(0.0, 1.0, 101)[:, None] * np.array([0.0, 0.0, -0.03])
    q_above = solve_ik(above[None], here)[0]
    q_down = solve_ik(path, q_above)                        # ends 1 cm into the block top
    assert cell.wait_for(lambda: np.abs(cell.states[-1] - q_above).max() < 1e-3, 20.0,
                         each=lambda: cell.send(q_above, lead_s=0.0, timeout_s=0.2))
    step = [0]

    def down():
        cell.send(q_down[min(step[0], 100)], lead_s=0.01, timeout_s=0.2)
        step[0] += 1

    def ended():
        return any(r.event == 'end' and r.episode == episode for r in cell.reports)
    assert cell.wait_for(ended, 20.0, each=down)
    end = next(r for r in cell.reports if r.event == 'end' and r.episode == episode)
    assert (end.success, end.reason, end.state) == (False, 'over_force', 'settling')
    assert end.peak_force_n > 50.0 and end.time_to_insert_s is None
    # after the settle time the next episode starts, the arm back at home
    assert cell.wait_for(lambda: any(r.event == 'start' and r.episode == episode + 1
                                     for r in cell.reports), 10.0)
    assert cell.wait_for(lambda: stable(cell.states), 10.0)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    logged = [x for x in lines if x['event'] == 'end' and x['episode'] == episode]
    assert logged and logged[0]['reason'] == 'over_force' and logged[0]['success'] is False
    assert not [x for x in lines if x['event'] == 'status']


@pytest.mark.slow
@pytest.mark.parametrize('busy', ['command', 'episode'])
def test_a_busy_port_is_a_start_up_error(busy):
    with socket.socket() as holder:
        holder.bind(('127.0.0.1', 0))
        holder.listen()
        ports = {name: free_port() for name in ('robot', 'command', 'episode', 'camera')}
        ports[busy] = holder.getsockname()[1]
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
        result = subprocess.run(
            [sys.executable, '-m', 'vla_insertion.tools.sim_cell', '--streams', 'robot',
             *[f'--{name}-port={port}' for name, port in ports.items()],
             '--sensor-port', str(free_port(socket.SOCK_DGRAM)), '--duration-s', '5'],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'cannot' in result.stderr and str(ports[busy]) in result.stderr
