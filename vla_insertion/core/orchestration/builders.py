"""Builders from configs to the running pieces, called by every tool (one home each)."""
from __future__ import annotations

from vla_insertion.core.sim.cell import SimCell
from vla_insertion.core.sim.loop import PipelineLoop, PipelineTiming


def learned_loop(cell: SimCell, executor, timing: PipelineTiming, checkpoint, vlm_cfg,
                 expert_cfg, *, vlm=None, seed: int = 0, **kwargs) -> PipelineLoop:
    """Return the loop of the learned policy driving `cell` (the tools' one builder of it).

    The VLM of `vlm_cfg` (or `vlm`, already built: one per process), the expert runner on
    `checkpoint` with `expert_cfg`'s staleness limits and precision, the feature-age limit
    widened by the timing's added VLM delay (features that old are what the experiment
    studies, not a fault), and the renderer of `vlm_cfg`'s views. `kwargs`: PipelineLoop's.
    """
    from dataclasses import replace

    from vla_insertion.core.expert.policy import ExpertPolicy
    from vla_insertion.core.expert.runner import ExpertRunner
    from vla_insertion.core.expert.staleness import StalenessLimits
    from vla_insertion.core.sim.render import SceneRenderer
    from vla_insertion.core.vlm.extractor import build_vlm
    limits = replace(StalenessLimits.from_config(expert_cfg),
                     max_feature_age_s=expert_cfg.max_feature_age_s + timing.vlm_delay_s)
    runner = ExpertRunner(ExpertPolicy(checkpoint, seed=seed, precision=expert_cfg.precision),
                          limits)
    renderer = SceneRenderer(vlm_cfg.view_names, vlm_cfg.image_width, vlm_cfg.image_height)
    return PipelineLoop(cell, executor, timing, vlm=vlm or build_vlm(vlm_cfg, download=False),
                        runner=runner, renderer=renderer, views=vlm_cfg.view_names, seed=seed,
                        **kwargs)
