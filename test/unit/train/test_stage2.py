"""Stage 2 on the tiny VLM (CPU): LoRA adapters train with the expert, nothing else in the VLM.

A short stage-1 run, then stage 2 from its checkpoint. The merged VLM that stage 2 writes must
differ from the base model exactly in the adapted projections of the language model (every
other tensor equal), the adapters must have left their zero initialisation, the expert must
have changed, and the fine-tuned folder must load with the contract the checkpoint carries.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file
import torch

from vla_insertion.core.expert.checkpoint import load_checkpoint
from vla_insertion.core.train.fit import fit, FitConfig
from vla_insertion.core.train.trainer import TrainConfig
from vla_insertion.core.vlm import feature_contract_for

ADAPTED = ('q_proj', 'k_proj', 'v_proj', 'o_proj')


def test_lora_trains_only_the_adapters_and_the_expert(cached_bags, tmp_path, tiny_vlm_dir):
    torch.set_num_threads(1)
    bags = tuple(cached_bags['bags'])
    quiet = {'progress_bar': False, 'report': lambda _msg: None}
    stage1 = tmp_path / 'stage1'
    fit(FitConfig(bags=bags, out=str(stage1), cache=cached_bags['cache'], val_fraction=0.34,
                  train=TrainConfig(steps=5, batch_size=8, warmup_steps=1)), **quiet)
    out = tmp_path / 'stage2'
    said = []
    result = fit(FitConfig(bags=bags, out=str(out), finetune_vl='lora', lora_rank=4,
                           lora_dropout=0.0, init_checkpoint=str(stage1), val_fraction=0.34,
                           train=TrainConfig(steps=3, batch_size=4, warmup_steps=0,
                                             lr=1e-3, vl_lr=5e-3, val_every=0)),
                 vlm_config=cached_bags['vlm_config'], progress_bar=False, report=said.append)
    assert result.train.step == 3 and any('stage 2: LoRA rank 4' in s for s in said)

    base = load_file(str(Path(tiny_vlm_dir) / 'model.safetensors'))
    merged = load_file(str(out / 'vlm' / 'model.safetensors'))
    assert set(merged) == set(base)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    adapted = {k for k in base if not k.startswith('visual.') and k.endswith('.weight')
               and k.split('.')[-2] in ADAPTED}      # the language model's (hub key layout)
    assert adapted and changed == adapted                 # only the adapted weights moved

    adapters = load_file(str(out / 'vl_lora' / 'adapter_model.safetensors'))
    lora_b = [v for k, v in adapters.items() if 'lora_B' in k]
    assert lora_b and all(v.abs().max() > 0 for v in lora_b)   # B starts at zero

    before = load_checkpoint(stage1).model.state_dict()
    after = load_checkpoint(out)
    assert any(not torch.equal(before[k], v) for k, v in after.model.state_dict().items())
    for name in ('action_mean', 'action_std', 'sensor_mean', 'state_std'):
        assert torch.equal(before[name], after.model.state_dict()[name])  # stage 1's kept

    # the fine-tuned VLM is another model, and the checkpoint says which
    marker = json.loads((out / 'vlm' / 'vla_insertion_model.json').read_text())
    cfg = cached_bags['vlm_config']
    import dataclasses
    contract = feature_contract_for(dataclasses.replace(cfg, model=str(out / 'vlm')))
    assert contract.model_id == marker['model_id'] == after.meta.contract.model_id
    assert contract.digest == after.meta.contract_digest
    assert after.meta.contract_digest != load_checkpoint(stage1).meta.contract_digest
    assert after.meta.extra['stage'] == 'stage2'
    from vla_insertion.core.vlm.extractor import VlmFeatureExtractor
    tuned = VlmFeatureExtractor(dataclasses.replace(cfg, model=str(out / 'vlm')),
                                download=False)
    original = VlmFeatureExtractor(cfg, download=False)
    from PIL import Image
    images = [Image.new('RGB', (112, 56), (40 * i, 90, 200)) for i in range(2)]
    assert not np.allclose(tuned.features_from_images(images),
                           original.features_from_images(images))
