"""Recorded bags to the datasets other trainers read: LeRobotDataset v3.0 and v2.1 (ROS-free).

    report = export_dataset(['artifacts/demos/episode_0000'], 'artifacts/lerobot/insertion',
                            ExportOptions(task='Insert the needle into the target.'))

Modules (docs/evaluation.md, "Export to LeRobotDataset"):
    options   what an export writes: format, fps, views, action and wrench choices, video codec
    sampling  a bag sampled on the frame grid: every stream's newest value at each frame stamp
    video     recorded JPEGs decoded and encoded per view into MP4 with PyAV
    stats     the feature statistics LeRobot stores (min, max, mean, std, count, quantiles)
    lerobot   the two on-disk layouts: data parquet, videos, meta (info, stats, tasks, episodes)
    convert   bags -> episodes -> the writer, with a record of sources and of what was left out
"""
from vla_insertion.core.export.convert import (  # noqa: F401 - the package interface
    export_dataset, ExportReport, RECORD)
from vla_insertion.core.export.options import (  # noqa: F401 - the package interface
    ACTIONS, CODECS, ExportError, ExportOptions, FORMATS, WRENCH_MODES)
