"""Two hosts on one machine: two network namespaces joined by a veth, made without root.

    with TwoHosts() as net:                   # GPU host 10.21.0.1, robot host 10.21.0.2
        gpu = CellRun(out_gpu, arguments={'role': 'gpu_host', ...}, prefix=net.prefix(GPU))
        net.set_loss(0.01)                    # 1 % of the UDP datagrams, each way
        net.partition()                       # every UDP datagram, until heal()

For the two-host test and benchmark (docs/bringup.md "Two hosts"). The namespaces:

    unshare -rn -m     user namespace (this uid is root in it) + the GPU host's network and
                       mounts (its own /dev/shm)
      veth_gpu 10.21.0.1/24 ─────── veth_robot 10.21.0.2/24
      unshare -n -m    the robot host's network and mounts, in the same user namespace

A program runs on a host under `prefix(host)`: nsenter into those namespaces, which the user
who made them may do (no root, no setuid helper). Everything else is shared with the
machine: files but /dev/shm, the clock, the process table.

Loss and partitions, without netem (not in every kernel): each veth end's egress goes through
an HTB qdisc whose class 1:20 drops everything (a pfifo of length 0); a classic BPF filter
sends a random `fraction` of the UDP datagrams there (`udp_drop_program`). Only UDP, that is
DDS: the camera wire (ZMQ over TCP) crosses the same veth in the test only because one sim cell
plays every device, while on a cell the cameras' own link to the GPU host is not the hosts'.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import re
import shlex
import shutil
import signal
import subprocess
import threading

GPU, ROBOT = 'gpu_host', 'robot_host'
DEVICES = {GPU: 'veth_gpu', ROBOT: 'veth_robot'}
TOOLS = ('unshare', 'nsenter', 'setpriv', 'ip', 'tc')
DROP_CLASS = '1:20'                # the HTB class whose leaf qdisc drops every packet

# classic BPF (linux/filter.h): opcodes and the ancillary offsets of `ld`
_LD_W_ABS, _LD_B_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x30, 0x15, 0x35, 0x06
_AD_PROTOCOL = 0xFFFFF000          # SKF_AD_OFF + SKF_AD_PROTOCOL: skb->protocol (EtherType)
_AD_RANDOM = 0xFFFFF038            # SKF_AD_OFF + SKF_AD_RANDOM: a uniform 32-bit number
_NET_OFF = 0xFFF00000              # SKF_NET_OFF: offsets from the network (IP) header
ETH_P_IP, IPPROTO_UDP = 0x0800, 17

# Made inside `unshare -rn --mount --fork` (the GPU host's namespaces). Each host gets its own
# /dev/shm, as two machines have: Fast DDS names its shared-memory ports after the UDP port
# numbers, which the two hosts' participants number alike. Prints `ready <gpu pid> <robot pid>`
# once both veth ends are up, then holds the namespaces until its process group dies.
_HOLDER = r"""
set -eu
mount -t tmpfs -o mode=1777 vla_gpu_host /dev/shm
ip link set lo up
setpriv --pdeathsig KILL unshare -n -m --fork --kill-child sh -c \
    'mount -t tmpfs -o mode=1777 vla_robot_host /dev/shm && : > /dev/shm/.host &&
     exec sleep infinity' &
robot=$!
n=0
until nsenter -t $robot -m test -e /dev/shm/.host 2> /dev/null; do
  n=$((n + 1)); [ $n -lt 1000 ] || {{ echo "no robot host namespaces" >&2; exit 1; }}
  sleep 0.01
done
ip link add {gpu_dev} type veth peer name {robot_dev}
ip link set {robot_dev} netns $robot
ip addr add {gpu_ip}/24 dev {gpu_dev}
ip link set {gpu_dev} up
nsenter -t $robot -n sh -c 'ip link set lo up && ip addr add {robot_ip}/24 dev {robot_dev} &&
                            ip link set {robot_dev} up'
for dev in {gpu_dev} {robot_dev}; do
  here=""; [ $dev = {robot_dev} ] && here="nsenter -t $robot -n"
  $here tc qdisc add dev $dev root handle 1: htb default 10
  $here tc class add dev $dev parent 1: classid 1:10 htb rate 1gbit quantum 60000
  $here tc class add dev $dev parent 1: classid {drop} htb rate 1gbit quantum 60000
  $here tc qdisc add dev $dev parent {drop} handle 20: pfifo limit 0
done
up() {{ $2 ip -o link show dev $1 | grep -q 'state UP'; }}
n=0
until up {gpu_dev} "" && up {robot_dev} "nsenter -t $robot -n"; do
  n=$((n + 1)); [ $n -lt 500 ] || {{ echo "the veth did not come up" >&2; exit 1; }}
  sleep 0.01
done
echo "ready $$ $robot"
wait
"""


class TwoHostsError(RuntimeError):
    """The namespaces could not be made or changed (the reason is in the message)."""


def unavailable_reason() -> str:
    """Return why two hosts cannot be made here ('' when they can): tools, user namespaces."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f'missing {", ".join(missing)} (util-linux, iproute2)'
    try:
        done = subprocess.run(['unshare', '-rn', 'true'], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f'unshare -rn: {exc}'
    if done.returncode != 0:
        return f'unshare -rn (user namespaces) refused: {done.stderr.strip()}'
    return ''


def udp_drop_program(fraction: float) -> str:
    """Return tc's `bpf bytecode` text of a filter that matches `fraction` of the UDP packets.

    IPv4 UDP only (EtherType, then the IP protocol byte, read from the network header so it
    works on either direction of any device), each with probability `fraction` (0 < f <= 1):
    a uniform 32-bit random number at or above (1 - f) * 2^32.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f'fraction must be in (0, 1], got {fraction}')
    threshold = min(int(round((1.0 - fraction) * 2**32)), 2**32 - 1)
    program = [(_LD_W_ABS, 0, 0, _AD_PROTOCOL),
               (_JEQ_K, 0, 5, ETH_P_IP),             # not IPv4: to `ret 0`
               (_LD_B_ABS, 0, 0, _NET_OFF + 9),      # the IP header's protocol
               (_JEQ_K, 0, 3, IPPROTO_UDP),          # not UDP: to `ret 0`
               (_LD_W_ABS, 0, 0, _AD_RANDOM),
               (_JGE_K, 0, 1, threshold),
               (_RET_K, 0, 0, 0xFFFFFFFF),           # match: the filter's classid (drop)
               (_RET_K, 0, 0, 0)]                    # no match: the default class
    return ','.join([str(len(program))] + [f'{c} {jt} {jf} {k}' for c, jt, jf, k in program])


class TwoHosts:
    """A GPU host and a robot host, each a network namespace, joined by one veth.

    Start and stop it as a context manager; `prefix(host)` runs a program on a host. The
    namespaces and every program the holder started end with `stop()`, or with this process
    (the holder gets SIGKILL when its parent dies).
    """

    def __init__(self, gpu_ip: str = '10.21.0.1', robot_ip: str = '10.21.0.2',
                 start_timeout_s: float = 30.0) -> None:
        self.address = {GPU: gpu_ip, ROBOT: robot_ip}
        self._timeout_s = start_timeout_s
        self._holder: subprocess.Popen | None = None
        self._pids: dict[str, int] = {}
        self._loss = 0.0

    def __enter__(self) -> TwoHosts:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Make the namespaces and the veth; return once both ends are up."""
        script = _HOLDER.format(gpu_dev=DEVICES[GPU], robot_dev=DEVICES[ROBOT],
                                gpu_ip=self.address[GPU], robot_ip=self.address[ROBOT],
                                drop=DROP_CLASS)
        self._holder = subprocess.Popen(
            ['setpriv', '--pdeathsig', 'KILL', 'unshare', '-rn', '--mount', '--fork',
             '--kill-child', 'sh', '-c', script], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self._holder.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(self._timeout_s)
        words = ready[0].split() if ready else []
        if len(words) != 3 or words[0] != 'ready':
            self.stop()
            raise TwoHostsError(f'the two-host namespaces did not come up: {" ".join(words)} '
                                f'{self._holder.stderr.read().strip()}')
        self._pids = {GPU: int(words[1]), ROBOT: int(words[2])}

    def stop(self) -> None:
        """End the holder's process group: the namespaces go with their last program."""
        if self._holder is None:
            return
        try:
            os.killpg(self._holder.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._holder.wait(timeout=10)
        for stream in (self._holder.stdout, self._holder.stderr):
            stream.close()
        self._holder = None
        self._pids = {}

    def prefix(self, host: str) -> tuple[str, ...]:
        """Return the command prefix that runs a program on `host` (GPU or ROBOT).

        In this process's working directory of now (entering a mount namespace would start
        it in /).
        """
        if host not in self._pids:
            raise TwoHostsError(f'no host {host!r} (started: {sorted(self._pids)})')
        return ('nsenter', f'--target={self._pids[host]}', '--user', '--net', '--mount',
                f'--wd={os.getcwd()}', '--preserve-credentials', '--')

    def run(self, host: str, *cmd: str, check: bool = True) -> str:
        """Run a command on `host`; return its stdout (TwoHostsError if it fails and check)."""
        done = subprocess.run([*self.prefix(host), *cmd], capture_output=True, text=True,
                              timeout=30)
        if check and done.returncode != 0:
            raise TwoHostsError(f'{host}: {shlex.join(cmd)}: {done.stderr.strip()}')
        return done.stdout

    # --- the link ------------------------------------------------------------------------

    @property
    def loss(self) -> float:
        """The fraction of UDP datagrams dropped each way now (1.0: partitioned)."""
        return self._loss

    def set_loss(self, fraction: float) -> None:
        """Drop `fraction` of the UDP datagrams leaving each host (0: none).

        Checked: TwoHostsError unless each end then has exactly the filter asked for.
        """
        program = udp_drop_program(fraction) if fraction > 0.0 else ''
        for host in DEVICES:
            if self.drop_filter(host):
                self.run(host, 'tc', 'filter', 'del', 'dev', DEVICES[host], 'parent', '1:',
                         'prio', '1')
            if program:
                self.run(host, 'tc', 'filter', 'add', 'dev', DEVICES[host], 'parent', '1:',
                         'prio', '1', 'bpf', 'bytecode', program, 'classid', DROP_CLASS)
            if self.drop_filter(host) != program:
                raise TwoHostsError(f'{host}: the drop filter is {self.drop_filter(host)!r}, '
                                    f'not {program!r}')
        self._loss = fraction

    def drop_filter(self, host: str) -> str:
        """Return the drop filter's program on the host's veth end ('' when none)."""
        listing = self.run(host, 'tc', 'filter', 'show', 'dev', DEVICES[host], 'parent', '1:')
        found = re.search(r"bytecode '([^']*)'", listing)
        return found.group(1) if found else ''

    def partition(self) -> None:
        """Drop every UDP datagram between the hosts (DDS stops; TCP goes on)."""
        self.set_loss(1.0)

    def heal(self, loss: float = 0.0) -> None:
        """End a partition; `loss` is the loss from then on."""
        self.set_loss(loss)

    def dropped(self) -> dict[str, int]:
        """Return the datagrams dropped so far, per host it was leaving."""
        out = {}
        for host, device in DEVICES.items():
            qdiscs = json.loads(self.run(host, 'tc', '-s', '-j', 'qdisc', 'show', 'dev', device))
            out[host] = sum(int(q.get('drops', 0)) for q in qdiscs if q.get('kind') == 'pfifo')
        return out

    def sent_bytes(self) -> dict[str, int]:
        """Return the bytes each host's veth end has sent (what crossed the link)."""
        out = {}
        for host, device in DEVICES.items():
            link = json.loads(self.run(host, 'ip', '-s', '-j', 'link', 'show', 'dev', device))
            out[host] = int(link[0]['stats64']['tx']['bytes'])
        return out


def env_for_hosts(env: dict[str, str], domain_id: int) -> dict[str, str]:
    """Return `env` for programs on the two hosts: their own domain, discovery over the veth.

    A LOCALHOST discovery range (the test suite's default) would keep DDS off the veth.
    """
    out = {k: v for k, v in env.items() if k not in ('ROS_LOCALHOST_ONLY', 'ROS_STATIC_PEERS')}
    out.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE='SUBNET')
    return out


class Probe:
    """`link_probe` (tools/link_probe.py) on one host, its JSON lines collected by a thread.

    `command`: the program and its arguments, e.g. [lib_dir / 'link_probe', 'listen'].
    """

    def __init__(self, net: TwoHosts, host: str, command: list[str | Path],
                 env: dict[str, str]) -> None:
        self._lock = threading.Lock()
        self._records: list[dict] = []
        self._popen = subprocess.Popen([*net.prefix(host), *map(str, command)], env=env,
                                       stdout=subprocess.PIPE, text=True,
                                       start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._popen.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self._records.append(record)

    def records(self, topic: str | None = None) -> list[dict]:
        """Return the lines so far (those of one topic)."""
        with self._lock:
            return [r for r in self._records if topic is None or r.get('topic') == topic]

    def newest_values(self, node: str) -> dict:
        """Return the newest /diagnostics values of `node` ({} before its first)."""
        with self._lock:
            for record in reversed(self._records):
                if record.get('topic') == '/diagnostics' and record.get('node') == node:
                    return dict(record['values'])
        return {}

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGINT, then SIGKILL after timeout_s; return the exit status."""
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGINT)
            try:
                self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self._popen.pid, signal.SIGKILL)
                self._popen.wait()
        self._reader.join(timeout=timeout_s)
        self._popen.stdout.close()
        return self._popen.returncode

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
