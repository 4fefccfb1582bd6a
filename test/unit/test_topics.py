"""The topic table: lookups under namespaces, camera patterns, the recorded set, the docs."""
from pathlib import Path

import pytest

from vla_insertion.core import topics

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('name,entry', [
    ('/robot/joint_states', topics.JOINT_STATES),
    ('/cell_a/robot/joint_states', topics.JOINT_STATES),
    ('vla/action_chunk', topics.ACTION_CHUNK),
    ('/cameras/side_left/image/compressed', topics.CAMERAS),
    ('/cell_a/cameras/zed_1/image/compressed', topics.CAMERAS),
    ('/diagnostics', topics.DIAGNOSTICS),
    ('/cell_a/diagnostics', None),                 # /diagnostics is absolute
    ('/robot/other', None),
])
def test_find(name, entry):
    assert topics.find(name) is entry


def test_recorded_set_holds_every_view():
    assert 'robot/joint_states' in topics.RECORDED and '/clock' not in topics.RECORDED
    assert topics.CAMERA_PATTERN in topics.RECORDED     # the recorder's default: any view
    assert topics.matches('/cell_a/cameras/left/image/compressed', topics.CAMERA_PATTERN)
    assert not topics.matches('/cameras/left/image/raw', topics.CAMERA_PATTERN)
    assert topics.view_of('/x/cameras/left/image/compressed') == 'left'


def test_every_topic_has_a_known_qos_and_type():
    for entry in topics.TOPICS:
        assert entry.qos in topics.QOS and entry.msgtype.count('/msg/') == 1


def test_docs_show_the_table():
    doc = (ROOT / 'docs' / 'development.md').read_text()
    assert topics.markdown_table() in doc, 'regenerate the table: core.topics.markdown_table()'
