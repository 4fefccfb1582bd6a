"""fit(): train the action expert on recorded bags, in one call (the tool, the demo, torchrun).

    bags ──> VL updates + features: the cache (`cache`: no VLM loaded), or the VLM in memory,
             or (stage 2) the VLM with LoRA adapters at every step
         ──> episodes (a bag, or cut by an episode log) ──> train / validation by episode
         ──> ticks the robot would act on (ExpertRunner rules) ──> PairedDataset per split
         ──> ActionExpert (a preset, or `init_checkpoint`), normalisation from the train split
         ──> Trainer.run: AdamW, warm-up + cosine, clipping, DDP, resume, best by validation
         ──> <out>: best checkpoint, last/ (resumable), metrics.csv[, vlm/ after stage 2]

`on_step(info)` is called after every step (step, steps, loss, lr, val_loss, elapsed_s, ...)
and `TrainConfig.time_budget_s` ends a run early, resumably: the demo trains in-process within
a budget and shows progress. ROS-free.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
import json
import logging
import math
import os
from pathlib import Path
from typing import Callable

import torch

from vla_insertion.core import artifacts
from vla_insertion.core.bag.recording import load_recording
from vla_insertion.core.config import (
    ConfigError, require, require_one_of, require_positive, VlmConfig)
from vla_insertion.core.expert.checkpoint import (
    CheckpointMeta, CONFIG_FILE, load_checkpoint, pin_weights, save_checkpoint)
from vla_insertion.core.expert.model import ActionExpert, count_parameters, HEADS
from vla_insertion.core.expert.presets import model_config, PRESETS
from vla_insertion.core.expert.runner import ExpertRunner
from vla_insertion.core.expert.staleness import StalenessLimits
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.train.dataset import build_split, FeatureBank, TARGETS
from vla_insertion.core.train.feature_age import (
    DEFAULT_AGE_SPEC, load_age_model, REFERENCE_VLM_LATENCY_S)
from vla_insertion.core.train.feature_cache import (
    CachedBag, compute_features, FeatureCache, FeatureCacheError, identity_differences,
    vlm_schedule)
from vla_insertion.core.train.split import bag_episodes, intervals_from_episode_log, split_episodes
from vla_insertion.core.train.trainer import (
    DistContext, init_distributed, LAST, TrainConfig, Trainer, TrainResult)

log = logging.getLogger(__name__)

FINETUNE = ('none', 'lora')
EVAL_LIMIT = 4096        # samples of the training split in the start and end losses


@dataclass(frozen=True)
class FitConfig:
    """Data, model and stage of one training run (the optimisation is `train`)."""

    bags: tuple[str, ...]          # bag folders: one episode each unless an episode log cuts them
    out: str = str(artifacts.TRAINED_CHECKPOINT)  # output folder (best checkpoint, last/, csv)
    cache: str = ''                # feature cache folder (cache_features); '' = run the VLM here
    preset: str = 'small'          # expert size: a PRESETS name ('default': ~19.4M parameters)
    head: str = 'regression'       # 'regression' or 'flow'
    flow_steps: int = 10           # Euler steps of the flow head at inference [steps]
    prefix_conditioning: bool = False  # flow head learns to continue committed prefixes (RTC)
    action_frame: str = 'delta'    # joint targets relative to the measured joints, or absolute
    horizon: int = 8               # actions per chunk
    dt_s: float = 0.1              # time between actions [s]
    rate_hz: float = 10.0          # tick rate over the bags: one sample per accepted tick [Hz]
    targets: str = 'measured'      # 'measured' (what the robot did) or 'chunks' (recorded ones)
    feature_age: str = DEFAULT_AGE_SPEC  # feature-age model (core/train/feature_age.py)
    vl_period_s: float = REFERENCE_VLM_LATENCY_S  # without a cache: emulated VLM period [s]
    val_fraction: float = 0.2      # share of episodes held out for validation [1]
    val_bags: tuple[str, ...] = ()  # hold out these bags instead of a fraction
    episode_log: str = ''          # sim_cell episode log (JSON lines) cutting bags into episodes
    resume: bool = False           # continue the run saved in <out>/last
    init_checkpoint: str = ''      # start from this checkpoint's weights (stage 2: stage 1's)
    finetune_vl: str = 'none'      # 'none' (stage 1) or 'lora' (stage 2)
    lora_rank: int = 16            # stage 2: rank of the adapters [1]
    lora_alpha: float = 32.0       # stage 2: adapter scale alpha / rank [1]
    lora_dropout: float = 0.05     # stage 2: dropout on the adapters' input [1]
    gradient_checkpointing: bool = True  # stage 2: recompute the language model's layers
    device: str = 'cpu'            # 'cpu', 'cuda' (this process's LOCAL_RANK GPU) or 'auto'
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'bags', tuple(str(b) for b in self.bags))  # Paths welcome
        object.__setattr__(self, 'val_bags', tuple(str(b) for b in self.val_bags))
        require(len(self.bags) > 0, 'at least one bag is needed')
        require(self.preset in PRESETS, f'preset must be one of {sorted(PRESETS)}, got '
                f'{self.preset!r}')
        require_one_of('head', self.head, HEADS)
        require_one_of('finetune_vl', self.finetune_vl, FINETUNE)
        require_one_of('targets', self.targets, TARGETS)
        require(self.device in ('cpu', 'cuda', 'auto'),
                f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        for name in ('dt_s', 'rate_hz', 'lora_alpha'):
            require_positive(name, getattr(self, name))
        require(self.vl_period_s >= 0, f'vl_period_s must be >= 0, got {self.vl_period_s}')
        require(0 <= self.lora_dropout < 1, f'lora_dropout must be in [0, 1), got '
                f'{self.lora_dropout}')
        require(isinstance(self.lora_rank, int) and self.lora_rank >= 1,
                f'lora_rank must be >= 1, got {self.lora_rank!r}')


@dataclass
class FitResult:
    """What a fit did: where the checkpoint is and the numbers of the run."""

    checkpoint: Path
    samples: int
    val_samples: int
    start_loss: float
    final_loss: float
    train: TrainResult
    report: dict


def _device(name: str, ctx: DistContext) -> torch.device:
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda':
        if not torch.cuda.is_available():
            raise ConfigError('device cuda requested but no CUDA device is available')
        return torch.device(f'cuda:{ctx.local_rank}')
    return torch.device('cpu')


def _update_extra(folder: Path, extra: dict) -> None:
    """Add numbers known only after training to a saved checkpoint's `extra`."""
    path = folder / 'config.json'
    if not path.is_file():
        return
    doc = json.loads(path.read_text(encoding='utf-8'))
    doc['extra'].update(extra)
    tmp = path.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(doc, indent=2) + '\n', encoding='utf-8')
    os.replace(tmp, path)


@dataclass
class PreparedData:
    """The samples of a run and what they were made from (see `prepare_data`)."""

    contract: FeatureContract      # of the features the samples use (the base VLM's)
    extractor: object | None       # the loaded VLM, None when the cache was used
    bank: FeatureBank              # VL updates (and features) of every bag
    recordings: dict               # bag -> Recording
    age_model: object              # feature_age.AgeModel
    train: object                  # PairedDataset
    val: object | None             # PairedDataset, None without validation episodes
    train_episodes: list
    val_episodes: list
    train_report: dict
    val_report: dict


def prepare_data(cfg: FitConfig, vlm_config: VlmConfig | None, limits: StalenessLimits,
                 expected_contract: FeatureContract | None = None, progress_bar: bool = False,
                 say: Callable[[str], None] = log.info, vlm_device: str = '') -> PreparedData:
    """Load or compute the VL updates of every bag, split the episodes, collect the samples.

    `vlm_device`: where the VLM runs when it is loaded ('' = `vlm_config.device`); under
    torchrun on GPUs each process's own.
    """
    age_model = load_age_model(cfg.feature_age, limits.max_feature_age_s)
    stage2 = cfg.finetune_vl == 'lora'

    # 1. VL updates of every bag, and their features unless stage 2 computes them per step
    extractor = None
    recordings, bags = {}, []
    if cfg.cache and not stage2:
        cache = FeatureCache.load(cfg.cache)
        contract = cache.contract
        if expected_contract is not None and expected_contract.digest != contract.digest:
            diff = identity_differences({'contract': contract.to_dict()},
                                        {'contract': expected_contract.to_dict()})
            raise FeatureCacheError(f'the cache {cfg.cache} was made under another contract '
                                    f'than the VLM configuration given: {"; ".join(diff)}')
        for b in cfg.bags:
            bags.append(cache.bag(b))
            recordings[b] = load_recording(b, views=())
        say(f'features: cache {cfg.cache} ({len(FeatureBank(bags))} VL updates, contract '
            f'{contract.digest}); the VLM is not loaded')
    else:
        if vlm_config is None:
            raise ConfigError('without a feature cache (and for stage 2) the VLM configuration '
                              'is needed')
        from vla_insertion.core.vlm.extractor import VlmFeatureExtractor
        torch.manual_seed(cfg.train.seed)
        if vlm_device:
            vlm_config = dataclasses.replace(vlm_config, device=vlm_device)
        extractor = VlmFeatureExtractor(vlm_config, download=False)
        contract = extractor.contract
        views = tuple(vlm_config.view_names)
        for b in cfg.bags:
            rec = load_recording(b, views=views, progress=progress_bar)
            updates = vlm_schedule(rec.frames, views, cfg.vl_period_s,
                                   vlm_config.sync_tolerance_s, vlm_config.max_view_age_s)
            if stage2:
                bags.append(CachedBag(b, updates, None))
            else:
                kept, features, _ = compute_features(rec, extractor, views, updates,
                                                     contract.digest, progress_bar)
                bags.append(CachedBag(b, kept, features))
            recordings[b] = rec
        say(f'features: VLM {contract.model_id} over {len(cfg.bags)} bag(s), '
            f'{len(FeatureBank(bags))} VL updates every {cfg.vl_period_s} s')
        if not stage2:
            extractor = None                      # stage 1 needs no VLM from here on
    bank = FeatureBank(bags, recordings)

    # 2. episodes, split by episode
    intervals = intervals_from_episode_log(cfg.episode_log) if cfg.episode_log else None
    episodes = []
    for b in cfg.bags:
        episodes += bag_episodes(b, intervals, (recordings[b].start_s, recordings[b].end_s))
    train_eps, val_eps = split_episodes(episodes, cfg.val_fraction, cfg.train.seed,
                                        cfg.val_bags)

    # 3. samples: the ticks the robot would act on, with their candidate VL updates
    shape = (contract.num_tokens, contract.feature_dim)

    def runner() -> ExpertRunner:
        return ExpertRunner(None, limits, contract_digest=contract.digest, feature_shape=shape)
    split_args = (runner, contract, age_model, limits.max_feature_age_s, cfg.horizon, cfg.dt_s,
                  cfg.rate_hz, cfg.targets)
    train_data, train_rep = build_split(recordings, bank, train_eps, *split_args)
    val_data, val_rep = build_split(recordings, bank, val_eps, *split_args) if val_eps \
        else (None, {'episodes': 0, 'samples': 0})
    for name, rep in (('train', train_rep), ('validation', val_rep)):
        if rep['episodes']:
            say(f'{name}: {rep["samples"]} samples from {rep["episodes"]} episode(s), '
                f'{rep["ticks"]} ticks; refused as the robot would: {rep["refused"] or "none"}'
                + (f'; {rep["fallbacks"]} without an update in the age model (nearest used)'
                   if rep.get('fallbacks') else ''))
    if not val_eps:
        say('validation: none (needs 2 or more episodes and val_fraction > 0); the last '
            'checkpoint is kept')
    if train_data is None:
        raise ValueError(f'no training sample: {train_rep}')
    say(f'feature ages: {age_model.describe()}')

    return PreparedData(contract, extractor, bank, recordings, age_model, train_data, val_data,
                        train_eps, val_eps, train_rep, val_rep)


def fit(cfg: FitConfig, *, vlm_config: VlmConfig | None = None,
        limits: StalenessLimits = StalenessLimits(),
        expected_contract: FeatureContract | None = None,
        on_step: Callable[[dict], None] | None = None, progress_bar: bool = True,
        report: Callable[[str], None] = log.info, dist_ctx: DistContext | None = None
        ) -> FitResult:
    """Train as `cfg` says and write the checkpoints; see the module docstring.

    `vlm_config`: the VLM node's config, needed without a cache and for stage 2 (the VLM is then
    loaded); with a cache it is not loaded at all. `expected_contract`: refuse a cache made
    under another contract (a params file given next to the cache). `limits`: the staleness
    rules of the node, applied to every tick.
    """
    cuda = cfg.device == 'cuda' or (cfg.device == 'auto' and torch.cuda.is_available())
    dist_ctx = dist_ctx or init_distributed('cuda' if cuda else 'cpu')
    device = _device(cfg.device, dist_ctx)
    quiet = not dist_ctx.main
    say = (lambda _msg: None) if quiet else report
    stage2 = cfg.finetune_vl == 'lora'
    data = prepare_data(cfg, vlm_config, limits, expected_contract, progress_bar and not quiet,
                        say, vlm_device=str(device) if device.type == 'cuda' else '')
    contract, extractor, bank, recordings = \
        data.contract, data.extractor, data.bank, data.recordings
    train_data, val_data, train_eps, val_eps, train_rep, val_rep, age_model = (
        data.train, data.val, data.train_episodes, data.val_episodes, data.train_report,
        data.val_report, data.age_model)

    # 4. the model
    base_contract = contract
    settings = None
    if stage2:
        from vla_insertion.core.train import stage2 as s2
        settings = s2.LoraSettings(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                                   cfg.gradient_checkpointing)
        model_id = s2.finetuned_model_id(contract.model_id,
                                         f'{Path(cfg.out).resolve()}:{cfg.train.seed}')
        contract = s2.finetuned_contract(contract, model_id)
    if cfg.init_checkpoint:
        init = load_checkpoint(cfg.init_checkpoint)
        if init.meta.contract_digest != base_contract.digest:
            raise ConfigError(f'{cfg.init_checkpoint} was trained under contract '
                              f'{init.meta.contract_digest}, these features are '
                              f'{base_contract.digest}')
        model = ActionExpert(init.meta.model)
        model.load_state_dict(init.model.state_dict())
        say(f'model: from {cfg.init_checkpoint} (its normalisation kept)')
    else:
        model_cfg = model_config(cfg.preset, contract, head=cfg.head, flow_steps=cfg.flow_steps,
                                 horizon=cfg.horizon,
                                 window_samples=int(train_data.windows.shape[1]),
                                 prefix_conditioning=cfg.prefix_conditioning,
                                 action_frame=cfg.action_frame)
        torch.manual_seed(cfg.train.seed)
        model = ActionExpert(model_cfg)
        model.set_normalization(train_data.normalization(action_frame=model_cfg.action_frame))
    for p in model.parameters():
        p.requires_grad_(True)
    say(f'model: preset {cfg.preset}, head {model.cfg.head}, {count_parameters(model)} '
        f'parameters{", prefix conditioning" if model.cfg.prefix_conditioning else ""}')

    vl = None
    best_adapters: dict = {}
    if stage2:
        peft_model = s2.apply_lora(extractor, settings)
        vl = s2.LoraFeatures(extractor, peft_model, bank, recordings).to(device)
        trainable = sum(p.numel() for p in vl.parameters() if p.requires_grad)
        say(f'stage 2: LoRA rank {settings.rank} on the language model ({trainable} adapter '
            f'parameters), VLM contract {contract.model_id}')

    # 5. train
    extra = {
        'stage': 'stage2' if stage2 else 'stage1', 'bags': [str(Path(b)) for b in cfg.bags],
        'train_episodes': [e.name for e in train_eps], 'val_episodes': [e.name for e in val_eps],
        'samples': len(train_data), 'val_samples': len(val_data) if val_data else 0,
        'refused': train_rep['refused'], 'feature_age': age_model.describe(),
        'cache': cfg.cache, 'preset': cfg.preset, 'horizon': cfg.horizon,
        'rate_hz': cfg.rate_hz, 'targets': cfg.targets, 'train': asdict(cfg.train),
        'base_contract_digest': base_contract.digest,
        'trained_with_prefix': model.cfg.prefix_conditioning,
        **({'lora': settings.to_dict()} if settings else {}),
        # the names the first train_expert wrote
        'steps': cfg.train.steps, 'lr': cfg.train.lr, 'batch_size': cfg.train.batch_size,
        'seed': cfg.train.seed}

    def save(folder: Path, m: ActionExpert, info: dict) -> None:
        clean = {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))
                 and not (isinstance(v, float) and not math.isfinite(v))}
        meta = CheckpointMeta(
            model=m.cfg, contract=contract, dt_s=float(cfg.dt_s), untrained=False,
            description=f'behaviour cloning ({extra["stage"]}) on {len(cfg.bags)} bag(s), '
                        f'{len(train_data)} samples, preset {cfg.preset}, '
                        f'{count_parameters(m)} parameters',
            extra={**extra, **clean})
        save_checkpoint(folder, m, meta)
        if vl is not None:
            s2.save_adapters(vl, folder)
            if Path(folder) == Path(cfg.out):
                best_adapters.update(vl.adapter_state())

    trainer = Trainer(model, train_data, cfg.train, val_data=val_data, out=cfg.out, save=save,
                      vl=vl, device=device, dist_ctx=dist_ctx, on_step=on_step,
                      progress_bar=progress_bar)
    if cfg.resume:
        trainer.resume(cfg.out)
    start_loss = trainer.evaluate(train_data, limit=EVAL_LIMIT)
    say(f'loss at start: {start_loss:.4f} (normalised, over the training split)')
    result = trainer.run()
    final_loss = trainer.evaluate(train_data, limit=EVAL_LIMIT)
    say(f'loss at end: {final_loss:.4f} after {result.step} of {cfg.train.steps} steps'
        + (f'; best validation loss {result.best_val:.4f} at step {result.best_step}'
           if val_data is not None else '')
        + (f' (stopped: {result.stopped}, resume with --resume)' if result.stopped else ''))
    out = Path(cfg.out)
    if dist_ctx.main:
        done = {'start_loss': start_loss, 'final_loss': final_loss,
                'final_step_loss': result.losses[-1] if result.losses else math.nan}
        for folder in (out, out / LAST):
            _update_extra(folder, {k: v for k, v in done.items() if math.isfinite(v)})
        if stage2 and not result.stopped:
            if not best_adapters:                    # the best was saved by an earlier run
                from safetensors.torch import load_file
                best_adapters = load_file(str(out / s2.ADAPTER_FOLDER /
                                              'adapter_model.safetensors'))
            folder = s2.save_finetuned_vlm(vl, best_adapters, out / s2.VLM_FOLDER,
                                           contract.model_id, settings)
            from vla_insertion.core.vlm.weights import weights_digest
            merged = dataclasses.replace(contract, weights_digest=weights_digest(folder))
            for checkpoint in (out, out / LAST):     # they name the weights they go with
                if (checkpoint / CONFIG_FILE).is_file():
                    pin_weights(checkpoint, merged)
            say(f'fine-tuned VLM written to {folder}: run vlm_node with model:={folder}')
    return FitResult(out, len(train_data), len(val_data) if val_data else 0, start_loss,
                     final_loss, result, {'train': train_rep, 'validation': val_rep})
