"""What differs between the ROS 2 distributions the package runs on (Humble, Jazzy, Kilted).

- The distribution's name: `$ROS_DISTRO`, which apt ROS's setup.bash and `scripts/env.sh` set;
  Kilted where it is unset (the development wheels set nothing). Bags are stamped with it.
- Keeping DDS discovery on this host: Jazzy and later read `ROS_AUTOMATIC_DISCOVERY_RANGE`
  (`LOCALHOST`); Humble has no such variable and reads `ROS_LOCALHOST_ONLY=1` instead (Jazzy
  still reads that one too, deprecated). The demo and the tests' programs stay on loopback
  through `localhost_discovery`.

The executor differs too (rclpy's EventsExecutor exists from Jazzy on): `ros/run.py` decides.

ROS-free: reads and writes environment mappings only.
"""
from __future__ import annotations

from collections.abc import MutableMapping
import os


DEFAULT_DISTRO = 'kilted'             # the distribution the development wheels are

# Distributions without ROS_AUTOMATIC_DISCOVERY_RANGE (added in Iron): ROS_LOCALHOST_ONLY.
LOCALHOST_ONLY_DISTROS = ('foxy', 'galactic', 'humble')


def ros_distro(env: MutableMapping[str, str] | None = None) -> str:
    """Return the running ROS distribution: $ROS_DISTRO in `env` (os.environ), else kilted."""
    return (os.environ if env is None else env).get('ROS_DISTRO') or DEFAULT_DISTRO


def localhost_discovery(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Keep DDS discovery on this host in `env`, with the variable its distribution reads.

    Sets `ROS_LOCALHOST_ONLY=1` on Humble (and older), `ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`
    on Jazzy and later, unless `env` already sets that variable (a person's choice stands).
    Returns `env`.
    """
    if ros_distro(env) in LOCALHOST_ONLY_DISTROS:
        env.setdefault('ROS_LOCALHOST_ONLY', '1')
    else:
        env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    return env
