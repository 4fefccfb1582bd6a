"""Monitor node: the pipeline's status line in a terminal (`ros2 run vla_insertion monitor`).

The node itself is `vla_insertion.ros.monitor.MonitorNode`, which the demo runs in-process too.
"""
import sys

from vla_insertion.ros.monitor import MonitorNode
from vla_insertion.ros.run import run_node


def main(args=None) -> int:
    return run_node(lambda: MonitorNode(print_status=True), args, threads=2)


if __name__ == '__main__':
    sys.exit(main())
