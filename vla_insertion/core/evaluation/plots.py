"""Evaluation plots (matplotlib, Agg backend): joints, errors, horizon, latency.

Each function writes one PNG; `write_outputs` writes metrics.json and all four plots for a set
of runs scored by `core.evaluation.score`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vla_insertion.core.evaluation import metrics


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_joints(path: Path, traj: metrics.Trajectory, runs: dict[str, metrics.ChunkSeries]
                ) -> None:
    """Plot the executed action of each run against the recorded joint, one panel a joint."""
    plt = _pyplot()
    joints = traj.num_joints
    fig, axes = plt.subplots(joints, 1, figsize=(10, 2.0 * joints), sharex=True)
    axes = np.atleast_1d(axes)
    t0 = traj.times_s[0]
    for j, ax in enumerate(axes):
        ax.plot(traj.times_s - t0, np.degrees(traj.positions[:, j]), 'k-', lw=1.5,
                label='recorded')
        for label, series in runs.items():
            ticks = metrics.control_ticks(series, traj)
            ex = metrics.executed(series, ticks)
            ax.plot(ticks - t0, np.degrees(ex.actions[:, j]), lw=1.0, label=label,
                    drawstyle='steps-post')
        ax.set_ylabel(f'{(traj.joint_names or [f"j{k + 1}" for k in range(joints)])[j]} [deg]')
    axes[0].legend(loc='upper right', fontsize=8)
    axes[-1].set_xlabel('time [s]')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_error_bars(path: Path, results: dict[str, dict], key: str = 'executed') -> None:
    """Plot MAE and RMSE per joint [deg], one bar group per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = list(results)
    joints = list(next(iter(results.values()))[key]['per_joint'])
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(joints))
    for ax, metric in zip(axes, ('mae_deg', 'rmse_deg')):
        for i, label in enumerate(labels):
            values = [results[label][key]['per_joint'][j][metric] or 0.0 for j in joints]
            ax.bar(x + i * width, values, width, label=label)
        ax.set_xticks(x + width * (len(labels) - 1) / 2, joints, rotation=30)
        ax.set_ylabel(f'{metric.split("_")[0].upper()} [deg]')
        ax.set_title(f'{metric.split("_")[0].upper()} per joint ({key} actions)')
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_horizon(path: Path, results: dict[str, dict]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, r in results.items():
        steps = r['horizon_steps']
        ax.plot([s['step'] for s in steps],
                [np.degrees(s['mae_rad']) if s['mae_rad'] is not None else np.nan
                 for s in steps], 'o-', label=label)
    ax.set_xlabel('horizon step k')
    ax.set_ylabel('MAE over joints [deg]')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_latency(path: Path, runs: dict[str, metrics.ChunkSeries]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, series in runs.items():
        values = series.latency_ms[np.isfinite(series.latency_ms)]
        if values.size:
            ax.hist(values, bins=30, alpha=0.6, label=label)
    ax.set_xlabel('latency observation -> chunk available [ms]')
    ax.set_ylabel('chunks')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(out_dir: Path, rec, results: dict[str, dict],
                  runs: dict[str, metrics.ChunkSeries], name: str = 'metrics.json') -> None:
    """Write metrics.json (every run's metrics) and joints, errors, horizon, latency PNGs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / name).write_text(json.dumps(
        {'bag': str(rec.path), 'trajectory_s': [rec.start_s, rec.end_s], 'runs': results},
        indent=2, default=float))
    plot_joints(out_dir / 'joints.png', rec.trajectory, runs)
    plot_error_bars(out_dir / 'errors.png', results)
    plot_horizon(out_dir / 'horizon.png', results)
    plot_latency(out_dir / 'latency.png', runs)
