"""Which camera frames the VLM runs on: the newest of each view, complete, fresh and in sync.

Subscriptions `put` every received frame; only the newest per view is kept (see `put` for how
a view recovers when a sender restarts or its stamps go back). The inference worker
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

# Why a frame was not stored; the node counts refused frames by these causes.
KEPT = ''
UNKNOWN_VIEW = 'unknown_view'        # not one of the configured views
FUTURE_STAMP = 'future_stamp'        # stamped after now (+ FUTURE_TOLERANCE_S): cannot be right
OUT_OF_ORDER = 'out_of_order'        # not newer than the frame held, which is still fresh
REFUSALS = (UNKNOWN_VIEW, FUTURE_STAMP, OUT_OF_ORDER)
# A stamp this far after the node's clock is refused; covers bridges on another host with a
# synchronised clock and /clock published at 100 Hz in replay [s]
FUTURE_TOLERANCE_S = 0.1


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

    def __init__(self, view_names: tuple[str, ...], max_view_age_s: float = 0.5,
                 future_tolerance_s: float = FUTURE_TOLERANCE_S) -> None:
        self._views = tuple(view_names)
        self._max_view_age_s = max_view_age_s
        self._future_tolerance_s = future_tolerance_s
        self._frames: dict[str, CameraFrame] = {}
        self._stored_s: dict[str, float] = {}  # local time each held frame was stored [s]
        self._used: dict[str, float] = {}  # capture stamps of the last set handed out
        self._version = 0                  # counts accepted frames
        self._seen_version = 0             # _version at the last select()
        self._cond = threading.Condition()

    @property
    def view_names(self) -> tuple[str, ...]:
        return self._views

    def put(self, frame: CameraFrame, now_s: float) -> str:
        """Keep `frame` if it is the newest of a configured view; return KEPT or why not.

        `now_s` is the node's clock. A frame stamped more than the future tolerance after now
        cannot be right and is refused, so it can never hold a view. A frame not newer than the
        held one (a duplicate or an out-of-order delivery) is refused while the held frame is
        fresh; once the held frame was stored more than `max_view_age_s` ago, or lies in the
        future (the clock went back, e.g. a replay restarted), the newer arrival replaces it:
        a sender that restarted or re-based its clock publishes stamps older than the last
        ones, and must not be blocked longer than the view's own staleness limit.
        """
        if frame.view not in self._views:
            return UNKNOWN_VIEW
        if frame.stamp_s > now_s + self._future_tolerance_s:
            return FUTURE_STAMP
        with self._cond:
            current = self._frames.get(frame.view)
            if (current is not None and frame.stamp_s <= current.stamp_s
                    and current.stamp_s <= now_s + self._future_tolerance_s
                    and now_s - self._stored_s[frame.view] <= self._max_view_age_s):
                return OUT_OF_ORDER
            self._frames[frame.view] = frame
            self._stored_s[frame.view] = now_s
            self._version += 1
            self._cond.notify_all()
        return KEPT

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
            self._stored_s.clear()
            self._used = {}
            self._version += 1
            self._seen_version = self._version
