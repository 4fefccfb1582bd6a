"""What a run of the pipeline did, in numbers: the demo's status lines and final summary.

Fed with what a monitor receives (chunks, features, frames, windows, diagnostics); ROS-free so
it is tested on synthetic runs with known answers.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
import math
import threading

import numpy as np

from vla_insertion.core import health
from vla_insertion.core.data import ActionChunkData, SensorWindowData, VLFeatureData
from vla_insertion.core.evaluation.summary import success_text, summarize_outcomes


@dataclass
class _Timed:
    recv_s: float
    value: object


@dataclass
class RunRecorder:
    """Collects what the monitor receives; thread-safe appends."""

    chunks: list[_Timed] = field(default_factory=list)
    features: list[_Timed] = field(default_factory=list)
    frames: Counter = field(default_factory=Counter)
    last_window: SensorWindowData | None = None
    last_joints_rad: np.ndarray | None = None
    # node -> cause -> count (the newest value reported in /diagnostics)
    drops: dict[str, dict[str, int]] = field(default_factory=dict)
    untrained: bool = False        # the VLM's features say its weights are random
    expert_untrained: bool | None = None   # from the action expert's /diagnostics; None: unknown
    executor: dict[str, str] = field(default_factory=dict)  # chunk_executor's newest values
    episodes: list[dict] = field(default_factory=list)      # sim episodes' end reports
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_chunk(self, recv_s: float, chunk: ActionChunkData) -> None:
        with self._lock:
            self.chunks.append(_Timed(recv_s, chunk))

    def add_features(self, recv_s: float, feat: VLFeatureData) -> None:
        with self._lock:
            self.features.append(_Timed(recv_s, feat))
            self.untrained = self.untrained or feat.untrained

    def set_frames(self, view: str, count: int) -> None:
        """Set a view's frame count as reported by the camera bridge."""
        with self._lock:
            self.frames[view] = count

    def set_window(self, window: SensorWindowData) -> None:
        self.last_window = window

    def set_joints(self, joints_rad: np.ndarray) -> None:
        self.last_joints_rad = joints_rad

    def set_drops(self, node: str, causes: dict[str, int]) -> None:
        with self._lock:
            self.drops[node] = dict(causes)

    def set_expert(self, values: dict[str, str]) -> None:
        """Take the action expert's /diagnostics values (`untrained`)."""
        flag = health.untrained_flag(values)
        if flag is not None:
            with self._lock:
                self.expert_untrained = flag

    def set_executor(self, values: dict[str, str]) -> None:
        with self._lock:
            self.executor = dict(values)

    def add_diagnostics(self, name: str, values: dict[str, str]) -> None:
        """Take the values of one DiagnosticStatus (the keys are read in core/health.py).

        Drop counters and frame counts, whoever sends them; the chunk executor's and the
        action expert's own values, by the node's name.
        """
        drops = health.drop_counts(values)
        if drops:
            self.set_drops(name, drops)
        for view, count in health.frame_counts(values).items():
            self.set_frames(view, count)
        node = name.split('/')[-1]
        if node == 'chunk_executor':
            self.set_executor(values)
        elif node == 'action_expert':
            self.set_expert(values)

    def add_episode(self, report: dict) -> None:
        """Keep an episode's end report (success, reason, time_to_insert_s, peak_force_n)."""
        with self._lock:
            self.episodes.append(dict(report))

    def episode_reports(self) -> list[dict]:
        with self._lock:
            return list(self.episodes)

    def snapshot(self) -> tuple[list[_Timed], list[_Timed]]:
        with self._lock:
            return list(self.chunks), list(self.features)


def _rate(times: list[float]) -> float:
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def _stats(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(np.percentile(arr, 99))


def summarize(rec: RunRecorder, since_s: float = -math.inf,
              held_out: dict | None = None) -> dict:
    """Summarise everything received at or after `since_s` (receive time, seconds).

    `held_out`: the policy's held-out evaluation (summary.held_out_evaluation), carried as
    `held_out` beside the live episodes; None: none known.
    """
    chunks, features = rec.snapshot()
    chunks = [c for c in chunks if c.recv_s >= since_s]
    features = [f for f in features if f.recv_s >= since_s]
    action_ms_mean, action_ms_p99 = _stats([c.value.inference_ms for c in chunks])
    vl_ms_mean, vl_ms_p99 = _stats([f.value.inference_ms for f in features])
    reuse = [c.value.reuse_index for c in chunks]
    # how many chunks each feature set served: the highest reuse index seen per sequence
    served: dict[int, int] = {}
    for c in chunks:
        served[c.value.feature_sequence] = max(served.get(c.value.feature_sequence, 0),
                                               c.value.reuse_index)
    # jitter of the expert's tick grid: chunk stamps are tick times, one period apart
    stamps = np.array([c.value.stamp_s for c in chunks], dtype=np.float64)
    period = float(np.median(np.diff(stamps))) if stamps.size > 2 else math.nan
    period_err = (np.abs(np.diff(stamps) - period) * 1e3).tolist() if stamps.size > 2 else []
    drops = {f'{node}.{cause}': n for node, causes in sorted(rec.drops.items())
             for cause, n in sorted(causes.items()) if n}
    return {
        'actions': len(chunks),
        'action_rate_hz': _rate([c.recv_s for c in chunks]),
        'action_ms_mean': action_ms_mean,
        'action_period_ms': period * 1e3,
        'action_period_err_p99_ms': (float(np.percentile(period_err, 99)) if period_err
                                     else math.nan),
        'action_period_err_max_ms': max(period_err) if period_err else math.nan,
        'action_ms_p99': action_ms_p99,
        'vl_updates': len(features),
        'vl_rate_hz': _rate([f.recv_s for f in features]),
        'vl_ms_mean': vl_ms_mean,
        'vl_ms_p99': vl_ms_p99,
        'reuse_index_mean': float(np.mean(reuse)) if reuse else math.nan,
        'chunks_per_feature_mean': float(np.mean(list(served.values()))) if served else math.nan,
        'feature_age_s_mean': _stats([c.value.feature_age_s for c in chunks])[0],
        'feature_age_s_p99': _stats([c.value.feature_age_s for c in chunks])[1],
        'frames_per_view': dict(sorted(rec.frames.items())),
        'drops': drops,
        'untrained': rec.untrained,
        'expert_untrained': rec.expert_untrained,
        'executor': health.executor_state(rec.executor),
        # the scored episodes, in the keys of every episode summary (episodes, successes, ...)
        **summarize_outcomes(rec.episode_reports()),
        'held_out': held_out,
    }


def status_line(rec: RunRecorder, window_s: float, now_s: float) -> str:
    """One line like the original system's periodic status, over the last `window_s`."""
    s = summarize(rec, since_s=now_s - window_s)
    views = ', '.join(f'{v}:{n}' for v, n in s['frames_per_view'].items()) or 'none'
    window = rec.last_window
    fill = (f'{window.valid_samples}/{window.samples.shape[0]}' if window is not None
            else 'none')
    joints = rec.last_joints_rad
    robot = (f'J1={math.degrees(joints[0]):.2f} deg' if joints is not None and len(joints)
             else 'none')
    label = _models_label(rec.untrained, rec.expert_untrained)
    label = f' ({label})' if label else ''
    return (f'VL updates: {s["vl_updates"]} | VL avg: {s["vl_ms_mean"]:.0f} ms | '
            f'Actions: {s["actions"]} ({s["action_rate_hz"]:.2f} Hz) | '
            f'Action avg: {s["action_ms_mean"]:.1f} ms | Images recv: {views} | '
            f'Sensor: {fill} | Robot: {robot}{label}')


def _models_label(vlm_untrained: bool, expert_untrained: bool | None) -> str:
    # a trained expert on the random tiny VLM's features is the demo's trained policy: its
    # actions mean something (it learned them on those features), so say which part is random
    if expert_untrained is False:
        return 'untrained VLM, trained expert' if vlm_untrained else ''
    return 'untrained models' if vlm_untrained or expert_untrained else ''


def _models_row(vlm_untrained: bool, expert_untrained: bool | None) -> str:
    if expert_untrained is False:
        return ('expert trained on the features of the UNTRAINED tiny VLM (random weights)'
                if vlm_untrained else 'trained')
    if vlm_untrained or expert_untrained:
        return 'UNTRAINED (random weights): actions are not meaningful'
    return 'trained'


def _float(value: float | None, spec: str) -> str:
    return format(math.nan if value is None else value, spec)


def format_summary(s: dict, duration_s: float) -> str:
    """Render the final summary as an aligned text block."""
    drops = ', '.join(f'{k}={v}' for k, v in s['drops'].items()) or 'none'
    rows = [
        ('measured for', f'{duration_s:.1f} s'),
        ('actions published', f'{s["actions"]} at {s["action_rate_hz"]:.2f} Hz'),
        ('action inference', f'avg {s["action_ms_mean"]:.1f} ms, p99 {s["action_ms_p99"]:.1f} ms'),
        ('action period', f'{s["action_period_ms"]:.1f} ms, error p99 '
                          f'{s["action_period_err_p99_ms"]:.2f} ms, max '
                          f'{s["action_period_err_max_ms"]:.1f} ms'),
        ('VL updates', f'{s["vl_updates"]} at {s["vl_rate_hz"]:.2f} Hz'),
        ('VL inference', f'avg {s["vl_ms_mean"]:.0f} ms, p99 {s["vl_ms_p99"]:.0f} ms'),
        ('feature reuse', f'{s["chunks_per_feature_mean"]:.2f} chunks per VL update'),
        ('feature age at use', f'avg {s["feature_age_s_mean"]:.3f} s, '
                               f'p99 {s["feature_age_s_p99"]:.3f} s'),
        ('frames per view', ', '.join(f'{v}={n}' for v, n in s['frames_per_view'].items())),
        ('drops by cause', drops),
        ('models', _models_row(s['untrained'], s.get('expert_untrained'))),
    ]
    ex = s.get('executor') or {}
    if ex:
        mode = ('ARMED: commands sent to the robot' if ex['armed'] else
                'DISARMED: commands computed for preview, none sent to the robot')
        gate = ', '.join(f'{k}={v}' for k, v in sorted(ex['gate'].items())) or 'none'
        fault = f', fault {ex["fault"]}' if ex['fault'] else ''
        rows += [('executor', f'{ex["commands"]} commands ({ex["sent"]} sent), {mode}'),
                 ('executor state', f'{ex["state"]}{fault}, starved {ex["starved"]}, chunk '
                                    f'delay p50 {ex["chunk_delay_s_p50"] * 1e3:.0f} ms'),
                 ('gate interventions', gate)]
    if s.get('episodes'):
        rows.append(('episodes', f'{s["successes"]}/{s["episodes"]} succeeded '
                     f'({s["success_rate"]:.0%}), outcomes '
                     + ', '.join(f'{k}={v}' for k, v in sorted(s['outcomes'].items()))
                     + f', time to insert avg {_float(s["time_to_insert_s_mean"], ".1f")} s, '
                     f'peak force {_float(s["peak_force_n_max"], ".1f")} N'))
    held = s.get('held_out')
    if held:
        rows.append(('held-out holes', f'{success_text(held)} ({held["where"]}, seed '
                     f'{held["seed"]}, episodes {held["first_episode"]}..'
                     f'{held["first_episode"] + held["episodes"] - 1}), outcomes '
                     + ', '.join(f'{k}={v}' for k, v in sorted(held['outcomes'].items()))))
    width = max(len(k) for k, _ in rows)
    return '\n'.join(f'  {k.ljust(width)}  {v}' for k, v in rows)
