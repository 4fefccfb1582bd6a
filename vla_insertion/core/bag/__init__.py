"""rosbag2 bags without rosbag2: our message types, a crash-tolerant writer and a reader.

Built on the pure-Python `rosbags` library, so bags are written and read on machines that have
no rosbag2 (this one, a training box). The bags are ordinary rosbag2 bags (metadata.yaml +
MCAP or sqlite3 files) that `ros2 bag info/play` and `rosbags` open; every file stores the full
message definitions and type hashes (RIHS01) of its topics, our own `vla_insertion/msg/*`
types included, so no build of this package is needed to read them.

Crash tolerance (see docs/evaluation.md): a bag is written as a sequence of split files. The
split being written lives in a hidden folder `.active_<i>/`, already under its final name
(`.active_<i>/<bag>_<i>/<bag>_<i>.mcap`, so the metadata record inside the file names the file
it ends up as); when it is complete it is moved beside metadata.yaml, and metadata.yaml is
rewritten atomically (temporary file + rename). A
recorder that is killed or hits a full disk therefore leaves a bag that opens with everything up
to the last completed split. The active split is flushed every `flush_period_s` (MCAP chunk
closed, sqlite3 transaction committed), and `recover_bag` salvages its flushed part.

As rosbag2 writes them: `ros_distro` is the running distribution ($ROS_DISTRO, else
kilted), inside metadata.yaml and inside each file; a topic's offered QoS profiles are the
caller's (bag_recorder: one per publisher) and the same in every file, since readers match a
file's channels to metadata.yaml by them; log times are what the caller passes (bag_recorder:
the time DDS received the message, as rosbag2 records it).

ROS-free: imports rosbags and numpy, never rclpy or generated messages.

Modules: `typestore` (message types, QoS, stamps), `writer` (BagWriter, split_by_time),
`reader` (bag_info, read_raw, read_messages), `salvage` (recover_bag), `recording` (a bag as
timelines the pipeline saw) and `messages` (message -> core data). The names below are the
package's interface: `from vla_insertion.core import bag; bag.read_messages(...)`.
"""
from vla_insertion.core.bag.reader import (  # noqa: F401 - the package interface
    bag_info, BagInfo, read_messages, read_raw, TopicSummary)
from vla_insertion.core.bag.salvage import (  # noqa: F401 - the package interface
    recover_bag)
from vla_insertion.core.bag.typestore import (  # noqa: F401 - the package interface
    ACTIVE_PREFIX, BAG_VERSION, BagError, cdr_header_stamp_ns, cdr_restamp, find_msg_dir,
    get_typestore, header, header_stamp_ns, make_message, MCAP_MAGIC, METADATA, PACKAGE, qos,
    stamp, STORAGES, TYPESTORE_DISTRO)
from vla_insertion.core.bag.writer import (  # noqa: F401 - the package interface
    BagWriter, split_by_time, write_metadata)
from vla_insertion.core.distro import (  # noqa: F401 - the package interface
    DEFAULT_DISTRO, ros_distro)
