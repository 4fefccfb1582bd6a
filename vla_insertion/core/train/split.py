"""Episodes and the train/validation split: held-out episodes, never held-out samples.

Neighbouring ticks of one episode are nearly the same sample (10 Hz, same scene, same
demonstration), so a split by sample would measure memory, not generalisation. The unit of the
split is the episode:

- a bag is one episode (a demonstrations recorder writes one bag per episode);
- a bag cut by marked boundaries holds several: `intervals_from_episode_log` reads the start
  and end reports that sim_cell appends to its `episode_log` (docs/wire.md, `episode_v1`); any
  other source of (start, end) stamps can produce the same intervals.

A sample belongs to the episode that contains its tick and its whole chunk of targets, and
only draws VL features computed inside that episode. `split_episodes` decides each episode's
side by a seeded hash of its key (bag path and index), so adding a bag does not move another
episode to the other side.
"""
from __future__ import annotations

from dataclasses import dataclass
import hashlib
import json
import math
from pathlib import Path

from vla_insertion.core.config import ConfigError


@dataclass(frozen=True)
class Episode:
    """One episode: a stretch of one bag on its header-stamp clock."""

    bag: str                       # bag folder
    index: int = 0                 # episode within the bag, from 0
    start_s: float = -math.inf     # first stamp of the episode [s]
    end_s: float = math.inf        # last stamp of the episode [s]

    @property
    def key(self) -> str:
        return f'{Path(self.bag).resolve()}#{self.index}'

    @property
    def name(self) -> str:
        return f'{Path(self.bag).name}#{self.index}'

    def contains(self, t0_s: float, t1_s: float) -> bool:
        """Return True if [t0_s, t1_s] lies inside the episode."""
        return self.start_s <= t0_s and t1_s <= self.end_s


def bag_episodes(bag: str, intervals: list[tuple[float, float]] | None = None,
                 span: tuple[float, float] | None = None) -> list[Episode]:
    """Return the episodes of a bag: one, or one per (start, end) interval [s].

    `span`: the bag's (first, last) stamp [s]; only the intervals that overlap it are its
    episodes (an episode log covers every bag of a session). A bag that none overlaps is one
    episode.
    """
    if intervals and span is not None:
        intervals = [(a, z) for a, z in intervals if z > span[0] and a < span[1]]
    if not intervals:
        return [Episode(str(bag))]
    return [Episode(str(bag), i, float(a), float(b))
            for i, (a, b) in enumerate(sorted(intervals))]


def intervals_from_episode_log(path: str | Path) -> list[tuple[float, float]]:
    """Return (start, end) times [s] of the completed episodes in a sim_cell episode log.

    The times are `sender_time_s` on sim_cell's clock: the recorded stamps share it when the
    cell runs with `clock_offset_s: 0` (the bridges remove the calibrated offset).
    """
    starts: dict[int, float] = {}
    intervals = []
    try:
        lines = Path(path).read_text(encoding='utf-8').splitlines()
    except OSError as exc:
        raise ConfigError(f'episode log {path}: {exc}') from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            event, episode, t = record['event'], int(record['episode']), \
                float(record['sender_time_s'])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f'episode log {path} line {n}: {exc!r}') from None
        if event == 'start':
            starts[episode] = t
        elif event == 'end' and episode in starts:
            intervals.append((starts.pop(episode), t))
    return intervals


def split_episodes(episodes: list[Episode], val_fraction: float, seed: int = 0,
                   val_bags: tuple[str, ...] = ()) -> tuple[list[Episode], list[Episode]]:
    """Split episodes into (train, validation).

    With `val_bags`, every episode of those bags is held out. Otherwise an episode is held out
    when a seeded hash of its key, read as a number in [0, 1), is below `val_fraction`: its side
    never depends on the other episodes, except that with 2 or more episodes and a fraction
    > 0 each side gets at least one (the lowest hash is held out, the highest kept).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f'val_fraction must be in [0, 1), got {val_fraction}')
    keys = [e.key for e in episodes]
    if len(set(keys)) != len(keys):
        raise ConfigError('an episode is listed twice (the same bag given twice?)')
    if val_bags:
        held = {str(Path(b).resolve()) for b in val_bags}
        val = [e for e in episodes if str(Path(e.bag).resolve()) in held]
        missing = held - {str(Path(e.bag).resolve()) for e in val}
        if missing:
            raise ConfigError(f'validation bag(s) not among the training bags: {sorted(missing)}')
        if len(val) == len(episodes):
            raise ConfigError('every episode is a validation episode; none is left to train on')
        return [e for e in episodes if e not in val], val
    if val_fraction == 0 or len(episodes) < 2:
        return list(episodes), []
    draw = {e.key: int(hashlib.sha256(f'{seed}:{e.key}'.encode()).hexdigest(), 16) / 2 ** 256
            for e in episodes}
    held = {k for k, u in draw.items() if u < val_fraction}
    if not held:
        held = {min(draw, key=draw.get)}
    if len(held) == len(episodes):
        held.discard(max(draw, key=draw.get))
    return [e for e in episodes if e.key not in held], [e for e in episodes if e.key in held]
