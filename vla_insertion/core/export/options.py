"""What an export writes: the dataset's format, frame rate, streams and video settings."""
from __future__ import annotations

from dataclasses import dataclass

from vla_insertion.core.config import require

FORMATS = ('v3.0', 'v2.1')          # LeRobotDataset codebase versions written
ACTIONS = ('command', 'chunk')      # what `action` holds (see ExportOptions.action)
WRENCH_MODES = ('newest', 'summary')
# codec name -> (PyAV / FFmpeg encoder, its options, default constant rate factor); both ship
# in PyAV's wheel. h264 decodes everywhere (torchvision, torchcodec, browsers); av1 is what
# LeRobot's own recorder writes (smaller files, slower to encode).
CODECS = {'h264': ('libx264', {'preset': 'veryfast'}, 23),
          'av1': ('libsvtav1', {}, 30)}
PIX_FMT = 'yuv420p'                 # every video's pixel format (even widths and heights)


class ExportError(Exception):
    """A bag cannot be exported as asked (a stream missing, a shape that changes, ...)."""


@dataclass(frozen=True)
class ExportOptions:
    """One export's settings (tools/export_lerobot.py builds them from its arguments)."""

    task: str                                   # the task string of every episode
    version: str = 'v3.0'                       # LeRobotDataset codebase version (FORMATS)
    fps: int = 10                               # frames per second on the capture-stamp grid [Hz]
    views: tuple[str, ...] | None = None        # views to export (None: every recorded one)
    action: str = 'command'                     # 'command' executed, 'chunk' its first action
    wrench: str = 'newest'                      # 'newest' rows of the window, or a 'summary'
    wrench_samples: int = 10                    # rows per frame with wrench 'newest' [samples]
    vcodec: str = 'h264'                        # video codec (CODECS), pixel format yuv420p
    crf: int | None = None                      # constant rate factor (None: the codec's) [1]
    gop: int = 2                                # a keyframe every gop frames [frames]
    robot_type: str | None = None               # info.json robot_type (None: null)
    chunks_size: int = 1000                     # files per chunk-XXX folder [files]
    data_files_size_in_mb: int = 100            # v3.0: next data file beyond this size [MB]
    video_files_size_in_mb: int = 200           # v3.0: next video file beyond this size [MB]

    def __post_init__(self) -> None:
        require(isinstance(self.task, str) and bool(self.task.strip()),
                f'task must be a non-empty string, got {self.task!r}')
        require(self.version in FORMATS, f'version must be one of {FORMATS}, got '
                f'{self.version!r}')
        require(isinstance(self.fps, int) and 1 <= self.fps <= 1000,
                f'fps must be an integer in 1..1000 (LeRobot stores one), got {self.fps!r}')
        require(self.views is None or (len(self.views) > 0 and all(
            isinstance(v, str) and v and '/' not in v for v in self.views)
            and len(set(self.views)) == len(self.views)),
            f'views must be distinct view names, got {self.views!r}')
        require(self.action in ACTIONS, f'action must be one of {ACTIONS}, got {self.action!r}')
        require(self.wrench in WRENCH_MODES,
                f'wrench must be one of {WRENCH_MODES}, got {self.wrench!r}')
        require(isinstance(self.wrench_samples, int) and self.wrench_samples >= 1,
                f'wrench_samples must be an integer >= 1, got {self.wrench_samples!r}')
        require(self.vcodec in CODECS, f'vcodec must be one of {tuple(CODECS)}, got '
                f'{self.vcodec!r}')
        require(self.crf is None or (isinstance(self.crf, int) and 0 <= self.crf <= 63),
                f'crf must be an integer in 0..63 or None, got {self.crf!r}')
        require(isinstance(self.gop, int) and self.gop >= 1,
                f'gop must be an integer >= 1, got {self.gop!r}')
        for name in ('chunks_size', 'data_files_size_in_mb', 'video_files_size_in_mb'):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1,
                    f'{name} must be an integer >= 1, got {value!r}')

    @property
    def encoder(self) -> tuple[str, dict[str, str]]:
        """Return the FFmpeg encoder and its options (crf and gop included)."""
        name, options, crf = CODECS[self.vcodec]
        return name, {**options, 'crf': str(crf if self.crf is None else self.crf),
                      'g': str(self.gop)}
