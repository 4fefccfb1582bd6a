"""Which camera frames the VLM runs on: the newest of each view, complete, fresh and in sync.

Subscriptions `put` every received frame; only the newest per view is kept. The inference worker
`select`s: the set of newest frames is run when every view is present, none is older than
`max_view_age_s`, their capture stamps lie within `sync_tolerance_s` of each other, and at least
one frame is new since the last set that was run, so an old set is never run twice unless asked
for explicitly (sync mode). Otherwise the selection says why, naming the views at fault.
No ROS and no torch here: times are float seconds on the local clock.
"""
from __future__ import annotations

from dataclasses import dataclass
import threading

from vla_insertion.core.data import CameraFrame

# Why a set of views was not run; the node counts skips by these causes.
READY = ''
NO_NEW_FRAMES = 'no_new_frames'      # nothing arrived since the last set (waiting, not a skip)
MISSING_VIEWS = 'missing_views'      # a view has never been received
STALE_VIEWS = 'stale_views'          # a view's newest frame is older than max_view_age_s
OUT_OF_SYNC = 'out_of_sync'          # capture stamps spread wider than sync_tolerance_s


@dataclass(frozen=True)
class ViewSelection:
    """The outcome of one selection: a set to run, or the reason there is none."""

    frames: dict[str, CameraFrame]   # view -> frame, in view order; empty unless ready
    cause: str = READY               # READY or one of the causes above
    missing: tuple[str, ...] = ()    # views never received
    stale: tuple[str, ...] = ()      # views older than max_view_age_s
    lagging: tuple[str, ...] = ()    # views more than sync_tolerance_s behind the newest
    spread_s: float = 0.0            # newest minus oldest capture stamp of the set [s]
    repeated: bool = False           # True when the set was run before (sync mode only)

    @property
    def ready(self) -> bool:
        return self.cause == READY

    def describe(self) -> str:
        """Return a one-line reason, naming the views at fault."""
        if self.cause == MISSING_VIEWS:
            return f'missing views: {", ".join(self.missing)}'
        if self.cause == STALE_VIEWS:
            return f'stale views: {", ".join(self.stale)}'
        if self.cause == OUT_OF_SYNC:
            return (f'views out of sync by {self.spread_s * 1e3:.0f} ms, lagging: '
                    f'{", ".join(self.lagging)}')
        if self.cause == NO_NEW_FRAMES:
            return 'no new frames since the last set'
        return 'ready'


class LatestFrames:
    """The newest frame of each configured view, shared by subscriptions and one worker."""

    def __init__(self, view_names: tuple[str, ...]) -> None:
        self._views = tuple(view_names)
        self._frames: dict[str, CameraFrame] = {}
        self._used: dict[str, float] = {}  # capture stamps of the last set handed out
        self._version = 0                  # counts accepted frames
        self._seen_version = 0             # _version at the last select()
        self._cond = threading.Condition()

    @property
    def view_names(self) -> tuple[str, ...]:
        return self._views

    def put(self, frame: CameraFrame) -> bool:
        """Keep `frame` if it is the newest of a configured view; return whether it was kept.

        A frame of an unknown view, or one not newer than the stored frame (a duplicate or an
        out-of-order delivery), is refused.
        """
        if frame.view not in self._views:
            return False
        with self._cond:
            current = self._frames.get(frame.view)
            if current is not None and frame.stamp_s <= current.stamp_s:
                return False
            self._frames[frame.view] = frame
            self._version += 1
            self._cond.notify_all()
        return True

    def wait_for_new(self, timeout_s: float) -> bool:
        """Block until a frame arrived since the last select(), or the timeout passes."""
        with self._cond:
            return self._cond.wait_for(lambda: self._version != self._seen_version, timeout_s)

    def newest(self) -> dict[str, CameraFrame]:
        """Return a copy of the newest frame per view (views never received are absent)."""
        with self._cond:
            return dict(self._frames)

    def select(self, now_s: float, sync_tolerance_s: float, max_view_age_s: float,
               require_new: bool = True) -> ViewSelection:
        """Return the newest complete, fresh, in-sync set and mark it used, or why there is none.

        With `require_new` False (sync mode: a request asks for features now), a set that was
        already run is run again and flagged `repeated`, never silently.
        """
        with self._cond:
            self._seen_version = self._version
            frames = {v: self._frames[v] for v in self._views if v in self._frames}
            missing = tuple(v for v in self._views if v not in frames)
            if missing:
                return ViewSelection({}, MISSING_VIEWS, missing=missing)
            stamps = {v: f.stamp_s for v, f in frames.items()}
            repeated = stamps == self._used
            if repeated and require_new:
                return ViewSelection({}, NO_NEW_FRAMES)
            stale = tuple(v for v, t in stamps.items() if now_s - t > max_view_age_s)
            if stale:
                return ViewSelection({}, STALE_VIEWS, stale=stale)
            newest, oldest = max(stamps.values()), min(stamps.values())
            spread = newest - oldest
            if spread > sync_tolerance_s:
                lagging = tuple(v for v, t in stamps.items() if newest - t > sync_tolerance_s)
                return ViewSelection({}, OUT_OF_SYNC, lagging=lagging, spread_s=spread)
            self._used = stamps
            return ViewSelection(frames, READY, spread_s=spread, repeated=repeated)

    def reset(self) -> None:
        """Forget every frame and the last used set (new episode)."""
        with self._cond:
            self._frames.clear()
            self._used = {}
            self._version += 1
            self._seen_version = self._version
