"""The launch file brings the whole cell up on the simulated cell (launch_testing).

Runs where launch_testing and launch_ros are installed (a ROS machine); skipped elsewhere,
where test/integration/test_demo.py starts the same node table without launch.
"""
import os
from pathlib import Path
import tempfile
import unittest

import pytest

launch_testing = pytest.importorskip('launch_testing')
pytest.importorskip('launch_ros')

# the rest exists only where launch_testing does, hence imported after the skips
from ament_index_python.packages import get_package_share_directory  # noqa: E402, I100
from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch_testing_ros import WaitForTopics  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

from vla_insertion.core.orchestration.launch_table import params_on_free_ports  # noqa: E402
from vla_insertion.core.vlm.model import write_tiny_model  # noqa: E402
from vla_insertion.msg import ActionChunk, SensorWindow, VLFeatures  # noqa: E402
from vla_insertion.tools import make_untrained_checkpoint  # noqa: E402


def _prepare(folder: Path) -> dict:
    """Write the tiny models and a params file on free ports; return the launch arguments."""
    share = Path(get_package_share_directory('vla_insertion'))
    params = folder / 'params.yaml'
    params_on_free_ports(share / 'config' / 'vla_insertion.yaml', params)
    vlm = write_tiny_model(folder / 'vlm', seed=0)
    checkpoint = folder / 'expert'
    make_untrained_checkpoint.main(['--vlm-model', str(vlm), '--params-file', str(params),
                                    '--out', str(checkpoint)])
    return {'sim': 'true', 'params_file': str(params), 'vlm_model': str(vlm),
            'checkpoint': str(checkpoint)}


@pytest.mark.launch_test
def generate_test_description():
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    arguments = _prepare(Path(tempfile.mkdtemp(prefix='vla_launch_test_')))
    launch_file = (Path(get_package_share_directory('vla_insertion')) / 'launch'
                   / 'vla_insertion.launch.py')
    bringup = IncludeLaunchDescription(PythonLaunchDescriptionSource(str(launch_file)),
                                       launch_arguments=arguments.items())
    return LaunchDescription([bringup, launch_testing.actions.ReadyToTest()]), {}


class TestBringup(unittest.TestCase):

    def test_every_stage_publishes(self):
        topics = [('robot/joint_states', JointState), ('sensor/window', SensorWindow),
                  ('vla/features', VLFeatures), ('vla/action_chunk', ActionChunk)]
        with WaitForTopics(topics, timeout=180.0) as waiter:
            self.assertEqual(waiter.topics_not_received(), set())


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_every_process_exits_cleanly(self, proc_info):
        # SIGINT from launch: every node stops its threads and exits 0
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
