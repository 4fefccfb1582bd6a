"""Config dataclasses: valid defaults, a described unit per field, every bad value refused."""
import dataclasses
import math

import pytest

from vla_insertion.core import config as cfg
from vla_insertion.core.config import config_from_dict, ConfigError, field_docs

CLASSES = [cfg.VlmConfig, cfg.ExpertConfig, cfg.CameraBridgeConfig, cfg.RobotBridgeConfig,
           cfg.SensorBridgeConfig, cfg.SimCellConfig, cfg.BagRecorderConfig,
           cfg.BagPlayerConfig, cfg.ExecutorConfig]


@pytest.mark.parametrize('cls', CLASSES, ids=lambda c: c.__name__)
def test_defaults_are_valid_frozen_and_loopback(cls):
    config = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, dataclasses.fields(cls)[0].name, None)
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        if f.name.endswith(('_ip', '_host', '_bind', 'bind_address')):
            assert value == '127.0.0.1', f'{cls.__name__}.{f.name} must default to loopback'


@pytest.mark.parametrize('cls', CLASSES, ids=lambda c: c.__name__)
def test_every_field_has_a_description(cls):
    docs = field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
    assert not missing, f'{cls.__name__}: fields without a comment: {missing}'


BAD = [
    (cfg.VlmConfig, 'device', 'gpu'), (cfg.VlmConfig, 'dtype', 'float8'),
    (cfg.VlmConfig, 'image_width', 10), (cfg.VlmConfig, 'view_names', ('a', 'a')),
    (cfg.VlmConfig, 'max_view_age_s', 0.0), (cfg.VlmConfig, 'mode', 'batch'),
    (cfg.VlmConfig, 'instruction', '  '), (cfg.VlmConfig, 'revision', 'main'),
    (cfg.VlmConfig, 'hub_download', True),
    (cfg.ExpertConfig, 'rate_hz', -1.0), (cfg.ExpertConfig, 'rate_hz', math.nan),
    (cfg.ExpertConfig, 'rate_hz', 5000.0), (cfg.ExpertConfig, 'max_feature_age_s', 0.0),
    (cfg.ExpertConfig, 'checkpoint', ''), (cfg.ExpertConfig, 'seed', -2),
    (cfg.ExpertConfig, 'scheduler', 'cron'), (cfg.ExpertConfig, 'realtime_priority', 100),
    (cfg.CameraBridgeConfig, 'port', 0), (cfg.CameraBridgeConfig, 'port', 70000),
    (cfg.CameraBridgeConfig, 'bind_address', 'tcp://x'),
    (cfg.CameraBridgeConfig, 'wire_format', 'robot_v1'),
    (cfg.RobotBridgeConfig, 'joint_names', ('a', 'b')),
    (cfg.RobotBridgeConfig, 'max_message_bytes', 10),
    (cfg.SensorBridgeConfig, 'window_size', 0), (cfg.SensorBridgeConfig, 'min_fill', 100),
    (cfg.SensorBridgeConfig, 'max_datagram_bytes', 70000),
    (cfg.SensorBridgeConfig, 'allowed_sources', ()),
    (cfg.SensorBridgeConfig, 'allowed_sources', ('sensor-pc.local',)),
    (cfg.SimCellConfig, 'streams', ('video',)),
    (cfg.SimCellConfig, 'clock_offset_s', math.inf), (cfg.SimCellConfig, 'faults', 'yes'),
    (cfg.BagRecorderConfig, 'storage', 'db3'), (cfg.BagRecorderConfig, 'bag_name', 'a/b'),
    (cfg.BagPlayerConfig, 'rate', 0.0), (cfg.BagPlayerConfig, 'loop', 1),
    (cfg.ExecutorConfig, 'merge', 'average'), (cfg.ExecutorConfig, 'control_rate_hz', 0.0),
    (cfg.ExecutorConfig, 'actuator_lead_s', 2.0), (cfg.ExecutorConfig, 'force_hard_n', -1.0),
]


@pytest.mark.parametrize('cls,name,value', BAD,
                         ids=[f'{c.__name__}.{n}={v!r}' for c, n, v in BAD])
def test_bad_values_are_refused_naming_the_field(cls, name, value):
    with pytest.raises(ConfigError) as info:
        cls(**{name: value})
    assert name in str(info.value) or name.rstrip('s') in str(info.value)


def test_config_from_dict_coerces_and_refuses_unknown_keys():
    config = config_from_dict(cfg.ExpertConfig, {'rate_hz': 5, 'checkpoint': 'c'})
    assert config.rate_hz == 5.0 and isinstance(config.rate_hz, float)
    config = config_from_dict(cfg.VlmConfig, {'view_names': ['a', 'b']})
    assert config.view_names == ('a', 'b')
    with pytest.raises(ConfigError, match='rate_hzz'):
        config_from_dict(cfg.ExpertConfig, {'rate_hzz': 5.0})
    with pytest.raises(ConfigError, match='expected a list'):
        config_from_dict(cfg.VlmConfig, {'view_names': 'a'})


@pytest.mark.parametrize('cls', CLASSES, ids=lambda c: c.__name__)
def test_live_and_ranged_parameters_are_fields(cls):
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(getattr(cls, 'LIVE', ())) <= fields
    assert set(getattr(cls, 'RANGES', {})) <= fields
    assert not {'LIVE', 'RANGES'} & fields        # class attributes, never parameters


RANGED = [(cls, name) for cls in CLASSES for name in getattr(cls, 'RANGES', {})]


@pytest.mark.parametrize('cls,name', RANGED, ids=[f'{c.__name__}.{n}' for c, n in RANGED])
def test_a_descriptor_range_never_admits_what_the_config_refuses(cls, name):
    # ROS refuses values outside the range before the config sees them: the range must hold
    # every valid value (its bounds are the config's), the default included
    low, high = cls.RANGES[name]
    kind = type(getattr(cls(), name))
    assert kind in (int, float) and type(low) is type(high) is kind
    assert low <= getattr(cls(), name) <= high
    step = 1 if kind is int else 1e-6 * max(1.0, abs(high))
    for outside in (low - step, high + step):
        with pytest.raises(ConfigError):
            config_from_dict(cls, {name: outside})
    if kind is int:      # integer bounds are the config's own, inclusive
        for bound in (low, high):
            try:
                config_from_dict(cls, {name: bound})
            except ConfigError as exc:
                assert 'min_fill' in str(exc), exc   # a cross-field rule, not this range
