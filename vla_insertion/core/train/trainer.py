"""The one training loop of the action expert: stage 1 and stage 2, one process or data-parallel.

    draw (global batch, on every rank alike) -> this rank's shard -> features (cache rows, or the
    VLM with LoRA adapters) -> ActionExpert.loss -> backward (DDP averages the gradients) ->
    clip -> AdamW step -> LR schedule -> metrics.csv, validation, checkpoints

Every random choice of a step is drawn from one generator seeded with `seed`, for the whole
global batch, in a fixed order: sample indices, the uniforms that pick each sample's VL update
(its feature age), prefix lengths (prefix-conditioned flow head), the flow noise and times,
and the wrench offsets (`wrench_jitter_n`).

Wrench jitter: with `wrench_jitter_n` N > 0, half the training windows (never the
validation's) get a constant offset on their force channels (uniform in +-N newtons per axis)
and torque channels (+-N x 0.1 m); the targets stay. The sensor window's first six channels
are fx fy fz tx ty tz (DEFAULT_SENSOR_CHANNELS). For a demonstrator that decides from geometry
alone, as the sim's does: the contact forces a learned policy meets and the demonstrations
never showed (a peg rubbing the hole's wall a millimetre off the axis) say nothing about the
answer, and an expert that reads them far outside its training range extrapolates. Measured
on 10 held-out episodes: the same expert inserted 6 with its force and torque inputs zeroed
and 1 with them (docs/training.md). Do not use it on demonstrations that react to force
(a person teleoperating).
Each of the N processes then takes its contiguous 1/N of the batch. The model has no batch
statistics (LayerNorm only), so N processes with a global batch B compute the same mean
gradient as one process with batch B, up to the order of float sums.

Resuming (`resume`) restores the model, the optimizer, the LR schedule, the step, the best
validation loss and the generator, so N steps, a stop, and M more steps give the run that
N + M steps without a stop give. Learning rates: AdamW with one group per part, each with its
own peak (`lr` for the action expert, `sensor_lr` for the sensor encoder, `vl_lr` for the VLM
adapters), a linear warm-up and a cosine down to `min_lr_ratio` of the peak; matrices decay,
biases and norms do not.

Files under `out`: the best checkpoint by validation loss (the last one without validation
data), `last/` (checkpoint + `train_state.pt`, to resume), `metrics.csv` (one row per step),
`tb/` (TensorBoard, only when the tensorboard package is installed).
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
import datetime
import logging
import math
import os
from pathlib import Path
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from vla_insertion.core.config import ConfigError, require, require_non_negative, require_positive
from vla_insertion.core.expert.model import ActionExpert, FlowHead

log = logging.getLogger(__name__)

LAST = 'last'
WRENCH_LEVER_M = 0.1    # torque offsets of the wrench jitter: its force offsets at this lever
STATE_FILE = 'train_state.pt'
METRICS_FILE = 'metrics.csv'
CSV_FIELDS = ('step', 'lr', 'loss', 'grad_norm', 'val_loss', 'feature_age_s', 'elapsed_s',
              'samples_per_s')
# A resumed run must share these with the run it continues.
RESUME_FIELDS = ('steps', 'batch_size', 'lr', 'sensor_lr', 'vl_lr', 'weight_decay',
                 'warmup_steps', 'min_lr_ratio', 'grad_clip', 'seed', 'max_prefix',
                 'wrench_jitter_n')


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one training run."""

    steps: int = 2000              # optimizer steps of the whole run [steps]
    batch_size: int = 64           # global batch, over every process [samples]
    lr: float = 1e-3               # peak learning rate of the action expert (all but the sensor)
    sensor_lr: float = 0.0         # peak learning rate of the sensor encoder, 0 = lr
    vl_lr: float = 1e-5            # peak learning rate of the VLM's LoRA adapters (stage 2)
    weight_decay: float = 1e-4     # AdamW weight decay of matrices (biases and norms: none)
    warmup_steps: int = 100        # linear warm-up from 0 to the peak learning rates [steps]
    min_lr_ratio: float = 0.05     # the cosine ends at this fraction of each peak [1]
    grad_clip: float = 1.0         # largest global gradient norm, 0 = no clipping
    seed: int = 0                  # batches, feature draws, prefixes and flow noise
    max_prefix: int = 0            # prefix-conditioned flow head: prefixes of 0..N [actions]
    wrench_jitter_n: float = 0.0   # half the training windows get a wrench offset: +-N [N] ...
    val_every: int = 100           # validation every N steps and at the end, 0 = never [steps]
    save_every: int = 500          # resumable state every N steps and at the end, 0 = at the end
    stop_after: int = 0            # end this run after N steps (resumable), 0 = run to `steps`
    time_budget_s: float = 0.0     # end this run after this long (resumable), 0 = no limit [s]

    def __post_init__(self) -> None:
        for name in ('steps', 'batch_size'):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f'{name} must be >= 1, got {value!r}')
        for name in ('warmup_steps', 'max_prefix', 'val_every', 'save_every', 'stop_after'):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 0, f'{name} must be >= 0, got {value!r}')
        for name in ('lr', 'vl_lr'):
            require_positive(name, getattr(self, name))
        for name in ('sensor_lr', 'weight_decay', 'grad_clip', 'time_budget_s',
                     'wrench_jitter_n'):
            require_non_negative(name, getattr(self, name))
        require(0.0 <= self.min_lr_ratio <= 1.0,
                f'min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}')


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str = 'cpu', timeout_s: float = 300.0) -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group('nccl' if device_type == 'cuda' else 'gloo',
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get('LOCAL_RANK', '0')))


class WarmupCosine:
    """LR factor of a step: linear warm-up, then a cosine to `min_ratio` (LambdaLR saves it)."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(expert: ActionExpert, vl: nn.Module | None, cfg: TrainConfig) -> list[dict]:
    """Return the AdamW groups: sensor, action, vl; matrices decay, biases and norms do not."""
    groups: dict[str, dict] = {}

    def add(part: str, lr: float, named) -> None:
        for _name, p in named:
            if not p.requires_grad:
                continue
            decay = p.ndim >= 2
            key = part if decay else f'{part}_no_decay'
            groups.setdefault(key, {'name': key, 'params': [], 'lr': lr,
                                    'weight_decay': cfg.weight_decay if decay else 0.0})
            groups[key]['params'].append(p)
    add('sensor', cfg.sensor_lr or cfg.lr, expert.sensor_encoder.named_parameters())
    add('action', cfg.lr, [(n, p) for n, p in expert.named_parameters()
                           if not n.startswith('sensor_encoder.')])
    if vl is not None:
        add('vl', cfg.vl_lr, vl.named_parameters())
    return list(groups.values())


class Objective(nn.Module):
    """The loss of a batch shard: what DDP wraps, so VLM adapters and expert sync together."""

    def __init__(self, expert: ActionExpert, vl: nn.Module | None = None) -> None:
        super().__init__()
        self.expert = expert
        self.vl = vl

    def forward(self, rows: np.ndarray, features: torch.Tensor | None, windows: torch.Tensor,
                states: torch.Tensor, actions: torch.Tensor, captures: torch.Tensor | None,
                noise: torch.Tensor | None, t: torch.Tensor | None,
                prefix_len: torch.Tensor | None) -> torch.Tensor:
        if self.vl is not None:
            features = self.vl(rows)                              # (B, T, F) with gradients
        return self.expert.loss(features, windows, states, actions, capture=captures,
                                noise=noise, t=t, prefix_len=prefix_len)


@dataclass
class Draws:
    """The random choices of a batch: samples, feature-draw uniforms, prefixes, flow noise."""

    index: torch.Tensor                       # (B,) int64 sample indices
    uniforms: torch.Tensor                    # (B,) float64 in [0, 1): which VL update
    prefix_len: torch.Tensor | None = None    # (B,) int64 given actions (prefix conditioning)
    noise: torch.Tensor | None = None         # (B, H * A) flow head's noise
    t: torch.Tensor | None = None             # (B,) flow times
    wrench: torch.Tensor | None = None        # (B, 6) offsets of fx fy fz [N], tx ty tz [N m]

    def part(self, lo: int, hi: int) -> Draws:
        return Draws(*(None if v is None else v[lo:hi] for v in
                       (self.index, self.uniforms, self.prefix_len, self.noise, self.t,
                        self.wrench)))


def draw(generator: torch.Generator, n_data: int, batch: int, model: ActionExpert,
         max_prefix: int, index: torch.Tensor | None = None, wrench_jitter_n: float = 0.0
         ) -> Draws:
    """Draw a global batch in the fixed order.

    Indices (unless given), uniforms, prefixes, flow noise, then the wrench offsets: drawn only
    when used, so a run without them draws what it drew before they existed.
    """
    if index is None:
        index = torch.randint(n_data, (batch,), generator=generator)
    uniforms = torch.rand(batch, generator=generator, dtype=torch.float64)
    prefix = torch.randint(0, max_prefix + 1, (batch,), generator=generator) \
        if max_prefix > 0 else None
    noise = t = None
    if isinstance(model.head, FlowHead):
        cfg = model.cfg
        noise = torch.randn((batch, cfg.horizon * cfg.action_dim), generator=generator)
        t = torch.rand(batch, generator=generator)
    wrench = None
    if wrench_jitter_n > 0:
        scale = torch.tensor([wrench_jitter_n] * 3 + [wrench_jitter_n * WRENCH_LEVER_M] * 3)
        wrench = (2 * torch.rand((batch, 6), generator=generator) - 1) * scale
        wrench *= (torch.rand(batch, generator=generator) < 0.5).unsqueeze(1)   # half of them
    return Draws(index, uniforms, prefix, noise, t, wrench)


@dataclass
class TrainResult:
    """What one call of `Trainer.run` did."""

    losses: list[float] = field(default_factory=list)   # training loss of each step run now
    step: int = 0                                       # optimizer steps done in the whole run
    best_val: float = math.inf                          # best validation loss so far
    best_step: int = 0
    last_val: float = math.nan
    stopped: str = ''                                   # '', 'stop_after' or 'time_budget'


class Trainer:
    """Fit an ActionExpert on a dataset (see the module docstring).

    `data` / `val_data`: a `core.train.dataset.PairedDataset` (`pair`, `inputs`, `features_of`,
    `captures_of`, `__len__`). `vl`: stage 2's differentiable feature module (rows ->
    (B, T, F)), None when the features come from the data. `save(folder, model, info)` writes
    a checkpoint (rank 0). `on_step(info)` is called after every step with step, steps, loss,
    lr, grad_norm, val_loss, feature_age_s, elapsed_s.
    """

    def __init__(self, model: ActionExpert, data, cfg: TrainConfig, *, val_data=None,
                 out: str | Path | None = None,
                 save: Callable[[Path, ActionExpert, dict], None] | None = None,
                 vl: nn.Module | None = None, device: str | torch.device = 'cpu',
                 dist_ctx: DistContext = DistContext(),
                 on_step: Callable[[dict], None] | None = None, progress_bar: bool = True
                 ) -> None:
        if cfg.max_prefix and not model.cfg.prefix_conditioning:
            raise ConfigError('max_prefix > 0 needs a model with prefix_conditioning')
        if cfg.max_prefix >= model.cfg.horizon:
            raise ConfigError(f'max_prefix {cfg.max_prefix} must be below the horizon '
                              f'{model.cfg.horizon}')
        if cfg.batch_size % dist_ctx.world:
            raise ConfigError(f'batch_size {cfg.batch_size} must divide among '
                              f'{dist_ctx.world} processes')
        if (out is None) != (save is None):
            raise ValueError('give both `out` and `save`, or neither')
        self.model, self.data, self.val_data, self.cfg, self.vl = model, data, val_data, cfg, vl
        self.device = torch.device(device)
        self.dist = dist_ctx
        self.out = Path(out) if out is not None else None
        self.save = save
        self.on_step = on_step
        self.progress_bar = progress_bar and dist_ctx.main
        self.model.to(self.device)
        self.objective = Objective(model, vl)
        self.module: nn.Module = self.objective
        if dist_ctx.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            self.module = DistributedDataParallel(
                self.objective, device_ids=[self.device] if self.device.type == 'cuda' else None)
        self.optimizer = torch.optim.AdamW(param_groups(model, vl, cfg), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.best_val, self.best_step = math.inf, 0
        self._val_draws = self.fixed_draws(val_data, 1) if val_data is not None else None
        self._tb = None

    # --- pieces -----------------------------------------------------------------------------

    def _params(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g['params']]

    def _shard(self, n: int) -> tuple[int, int]:
        per = n // self.dist.world if n % self.dist.world == 0 else -(-n // self.dist.world)
        lo = min(n, self.dist.rank * per)
        return lo, min(n, lo + per)

    def _batch(self, data, d: Draws) -> tuple:
        rows, ages = data.pair(d.index.numpy(), d.uniforms.numpy())
        windows, states, actions = (x.to(self.device) for x in data.inputs(d.index))
        if d.wrench is not None:          # NaN rows (missing samples) stay NaN
            windows = windows.clone()
            windows[..., :6] += d.wrench.to(windows).unsqueeze(1)
        features = None if self.vl is not None else data.features_of(rows).to(self.device)
        captures = data.captures_of(d.index, rows).to(self.device) \
            if self.model.cfg.capture_motion else None
        extra = tuple(None if v is None else v.to(self.device)
                      for v in (d.noise, d.t, d.prefix_len))
        return (rows, features, windows, states, actions, captures) + extra, ages

    def _all_reduce(self, values: list[float]) -> list[float]:
        if self.dist.world == 1:
            return values
        import torch.distributed as dist
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device
                              if self.device.type == 'cuda' else 'cpu')
        dist.all_reduce(tensor)
        return tensor.tolist()

    def fixed_draws(self, data, salt: int) -> Draws:
        """Draws over every sample of `data` in order, the same at every evaluation."""
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + salt)
        n = len(data)
        return draw(generator, n, n, self.model, self.cfg.max_prefix, torch.arange(n))

    def evaluate(self, data, draws: Draws | None = None, limit: int = 0) -> float:
        """Return the mean loss over `data` (the first `limit` samples when > 0), no gradient."""
        draws = draws if draws is not None else self.fixed_draws(data, 2)
        n = len(data) if limit <= 0 else min(limit, len(data))
        lo, hi = self._shard(n)
        modules = [m for m in (self.model, self.vl) if m is not None]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        total = 0.0
        step = max(1, self.cfg.batch_size // self.dist.world)
        with torch.no_grad():
            for start in range(lo, hi, step):
                args, _ = self._batch(data, draws.part(start, min(hi, start + step)))
                total += float(self.objective(*args)) * (min(hi, start + step) - start)
        for m, mode in zip(modules, modes):
            m.train(mode)
        total, count = self._all_reduce([total, float(hi - lo)])
        return total / count

    def _train_step(self) -> dict:
        cfg = self.cfg
        started = time.perf_counter()
        d = draw(self.generator, len(self.data), cfg.batch_size, self.model, cfg.max_prefix,
                 wrench_jitter_n=cfg.wrench_jitter_n)
        local = cfg.batch_size // self.dist.world
        args, ages = self._batch(self.data, d.part(self.dist.rank * local,
                                                   (self.dist.rank + 1) * local))
        loss = self.module(*args)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = self._params()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 \
            else torch.nn.utils.clip_grad_norm_(params, math.inf)
        lr = next((g['lr'] for g in self.optimizer.param_groups if g['name'] == 'action'),
                  self.optimizer.param_groups[0]['lr'])          # the action expert's
        self.optimizer.step()
        self.scheduler.step()
        finite = ages[np.isfinite(ages)]
        total, age_sum, age_n = self._all_reduce([float(loss.detach()), float(finite.sum()),
                                                  float(finite.size)])
        loss_value = total / self.dist.world
        if not math.isfinite(loss_value):
            raise FloatingPointError(f'training loss is {loss_value} at step {self.step + 1}')
        return {'loss': loss_value, 'lr': lr, 'grad_norm': float(grad_norm),
                'feature_age_s': age_sum / age_n if age_n else math.nan,
                'samples_per_s': cfg.batch_size / (time.perf_counter() - started)}

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train from the current step to `steps`, or until `stop_after` / the time budget."""
        from tqdm import tqdm
        cfg = self.cfg
        result = TrainResult()
        first, started = self.step, time.monotonic()
        writer = self._open_metrics()
        bar = tqdm(total=cfg.steps, initial=self.step, desc='training', unit='step',
                   disable=not self.progress_bar)
        self.model.train()
        if self.vl is not None:
            self.vl.train()
        try:
            while self.step < cfg.steps:
                info = self._train_step()
                self.step += 1
                result.losses.append(info['loss'])
                info.update(step=self.step, steps=cfg.steps, val_loss=math.nan,
                            elapsed_s=time.monotonic() - started)
                if cfg.stop_after and self.step - first >= cfg.stop_after:
                    result.stopped = 'stop_after'
                elif cfg.time_budget_s and info['elapsed_s'] >= cfg.time_budget_s:
                    result.stopped = 'time_budget'
                end = result.stopped or self.step == cfg.steps
                if self._val_draws is not None and (
                        end or (cfg.val_every and self.step % cfg.val_every == 0)):
                    info['val_loss'] = result.last_val = self.evaluate(self.val_data,
                                                                       self._val_draws)
                    if info['val_loss'] < self.best_val:
                        self.best_val, self.best_step = info['val_loss'], self.step
                        self._save(self.out, info)
                if not end and cfg.save_every and self.step % cfg.save_every == 0:
                    self._save_last(info)
                self._record(writer, info)
                bar.update(1)
                bar.set_postfix(loss=f'{info["loss"]:.4f}', refresh=False)
                if self.on_step is not None:
                    self.on_step(info)
                if end:
                    break
        except KeyboardInterrupt:
            self._save_last({'step': self.step, 'interrupted': True})
            raise
        finally:
            bar.close()
            if writer is not None:
                writer[0].close()
            if self._tb is not None:
                self._tb.close()
        final = {'step': self.step, 'stopped': result.stopped}
        self._save_last(final)
        if self._val_draws is None:
            self._save(self.out, final)       # no validation data: the last model is the best
        self.model.eval()
        result.step, result.best_val, result.best_step = self.step, self.best_val, self.best_step
        return result

    # --- files ------------------------------------------------------------------------------

    def _save(self, folder: Path | None, info: dict) -> None:
        if folder is None or not self.dist.main:
            return
        self.save(folder, self.model, {**info, 'step': self.step, 'best_val': self.best_val,
                                       'best_step': self.best_step})

    def _save_last(self, info: dict) -> None:
        if self.out is None or not self.dist.main:
            return
        folder = self.out / LAST
        self._save(folder, info)
        state = {'step': self.step, 'optimizer': self.optimizer.state_dict(),
                 'scheduler': self.scheduler.state_dict(),
                 'generator': self.generator.get_state(), 'torch_rng': torch.get_rng_state(),
                 'best_val': self.best_val, 'best_step': self.best_step,
                 'config': asdict(self.cfg), 'vl': self._vl_state()}
        tmp = folder / f'.{STATE_FILE}.tmp'
        torch.save(state, tmp)
        os.replace(tmp, folder / STATE_FILE)

    def _vl_state(self) -> dict | None:
        if self.vl is None:
            return None
        return {n: p.detach().cpu().clone() for n, p in self.vl.named_parameters()
                if p.requires_grad}

    def resume(self, folder: str | Path) -> None:
        """Continue the run saved in `folder` (an `out/last` folder, or `out` itself)."""
        from vla_insertion.core.expert.checkpoint import load_checkpoint
        folder = Path(folder)
        if (folder / LAST / STATE_FILE).is_file():
            folder = folder / LAST
        path = folder / STATE_FILE
        if not path.is_file():
            raise ConfigError(f'cannot resume: {path} not found')
        state = torch.load(path, map_location='cpu', weights_only=True)
        differ = [f'{k} was {state["config"].get(k)!r}, now {getattr(self.cfg, k)!r}'
                  for k in RESUME_FIELDS if state['config'].get(k) != getattr(self.cfg, k)]
        if differ:
            raise ConfigError(f'cannot resume {folder}: {"; ".join(differ)}')
        weights = load_checkpoint(folder).model.state_dict()
        self.model.load_state_dict(weights)
        self.model.to(self.device)
        if self.vl is not None:
            saved = state.get('vl') or {}
            for name, p in self.vl.named_parameters():
                if p.requires_grad:
                    with torch.no_grad():
                        p.copy_(saved[name])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        self.generator.set_state(state['generator'])
        torch.set_rng_state(state['torch_rng'])
        self.step, self.best_val, self.best_step = \
            int(state['step']), float(state['best_val']), int(state['best_step'])
        log.info(f'resumed {folder} at step {self.step} (best validation loss '
                 f'{self.best_val:.5f} at step {self.best_step})')

    def _open_metrics(self):
        if self.out is None or not self.dist.main:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / METRICS_FILE
        rows = []
        if self.step > 0 and path.is_file():  # resumed: keep the rows up to this step
            with open(path, newline='', encoding='utf-8') as f:
                rows = [r for r in csv.DictReader(f) if int(r['step']) <= self.step]
        f = open(path, 'w', newline='', encoding='utf-8')
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        try:  # TensorBoard only when it is already installed
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(self.out / 'tb'))
        except ImportError:
            self._tb = None
        return f, writer

    def _record(self, writer, info: dict) -> None:
        if writer is None:
            return
        f, w = writer
        w.writerow({k: (f'{info[k]:.6g}' if isinstance(info[k], float) else info[k])
                    for k in CSV_FIELDS})
        f.flush()
        if self._tb is not None:
            for k in CSV_FIELDS[1:]:
                if math.isfinite(info[k]):
                    self._tb.add_scalar(k, info[k], info['step'])
