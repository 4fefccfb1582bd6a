"""core.distro: the running distribution and the discovery variable each one reads."""
from __future__ import annotations

import pytest

from vla_insertion.core.distro import localhost_discovery, ros_distro


@pytest.mark.parametrize('env, distro', [({}, 'kilted'), ({'ROS_DISTRO': ''}, 'kilted'),
                                         ({'ROS_DISTRO': 'jazzy'}, 'jazzy'),
                                         ({'ROS_DISTRO': 'humble'}, 'humble')])
def test_ros_distro_is_the_variable_else_kilted(env, distro):
    assert ros_distro(env) == distro


@pytest.mark.parametrize('distro', ['humble', 'galactic'])
def test_humble_keeps_discovery_local_with_ros_localhost_only(distro):
    env = localhost_discovery({'ROS_DISTRO': distro})
    assert env == {'ROS_DISTRO': distro, 'ROS_LOCALHOST_ONLY': '1'}


@pytest.mark.parametrize('distro', [None, 'iron', 'jazzy', 'kilted', 'rolling'])
def test_jazzy_and_later_use_the_discovery_range(distro):
    env = {} if distro is None else {'ROS_DISTRO': distro}
    localhost_discovery(env)
    assert env.pop('ROS_AUTOMATIC_DISCOVERY_RANGE') == 'LOCALHOST'
    assert 'ROS_LOCALHOST_ONLY' not in env


def test_a_value_already_set_stands():
    env = {'ROS_DISTRO': 'jazzy', 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}
    assert localhost_discovery(env)['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'SUBNET'
    env = {'ROS_DISTRO': 'humble', 'ROS_LOCALHOST_ONLY': '0'}
    assert localhost_discovery(env)['ROS_LOCALHOST_ONLY'] == '0'
