"""Stage 2: LoRA adapters on the VLM's language model, trained end to end with the expert.

Stage 1 leaves the VLM as it is, so its features can be cached. Stage 2 (optional, from a
stage-1 checkpoint, as in the seeds) lets the expert's loss reach into the VLM: low-rank
adapters (peft LoRA) on the attention projections of the language model (q, k, v, o; the
vision tower keeps its weights, so no activation of it is stored for the backward pass),
features computed with gradients for every sample of every step (`LoraFeatures`, a module the
trainer's DDP wraps together with the expert), gradient checkpointing of the language model's
layers. The features of a drawn VL update come from its recorded views, decoded and resized
exactly as the VLM node does; the cache cannot be used.

The fine-tuned VLM is another model: its features obey another contract. Its model id is the
base id + `+lora-<tag>`, fixed before training, so every checkpoint of the run already carries
the new contract; `save_finetuned_vlm` merges the adapters into the weights and writes a model
folder that `vlm_node` loads (`model:=<out>/vlm`) and whose contract equals the checkpoint's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
import shutil

import numpy as np
import torch
from torch import nn

from vla_insertion.core.bag.recording import Recording
from vla_insertion.core.feature_contract import FeatureContract
from vla_insertion.core.train.dataset import FeatureBank
from vla_insertion.core.vlm.extractor import decode_image, resize_image
from vla_insertion.core.vlm.source import MARKER_FILE, read_marker

log = logging.getLogger(__name__)

LORA_TARGETS = r'.*language_model.*\.(q_proj|k_proj|v_proj|o_proj)'
ADAPTER_FOLDER = 'vl_lora'
VLM_FOLDER = 'vlm'


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """The adapters of stage 2."""

    rank: int = 16                 # rank of each adapter's update B @ A [1]
    alpha: float = 32.0            # the update is scaled by alpha / rank [1]
    dropout: float = 0.05          # dropout on the adapters' input during training [1]
    gradient_checkpointing: bool = True  # recompute the language model's layers in backward

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def apply_lora(extractor, settings: LoraSettings) -> nn.Module:
    """Wrap the extractor's model with LoRA adapters (only they train); return the peft model."""
    from peft import get_peft_model, LoraConfig
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha,
                        lora_dropout=settings.dropout, target_modules=LORA_TARGETS, bias='none')
    peft_model = get_peft_model(extractor.model, config)  # freezes every base weight
    if settings.gradient_checkpointing:
        hf_model = peft_model.base_model.model
        kwargs = {'use_reentrant': False}       # the frozen embeddings' output needs no grad
        if hasattr(hf_model, 'activation_checkpointing_enable'):   # transformers >= 5.2
            hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return peft_model  # extractor.model is the same object, adapters inside


def finetuned_model_id(base_id: str, tag_source: str) -> str:
    """Return the fine-tuned VLM's id: the base id + a tag of this run."""
    return f'{base_id}+lora-{hashlib.sha256(tag_source.encode()).hexdigest()[:8]}'


def finetuned_contract(base: FeatureContract, model_id: str) -> FeatureContract:
    """Return the fine-tuned VLM's contract: another model, weights unknown until merged.

    fit() pins the checkpoints to the merged weights once `save_finetuned_vlm` wrote them.
    """
    return dataclasses.replace(base, model_id=model_id, weights_digest='')


class LoraFeatures(nn.Module):
    """Rows of a FeatureBank -> (B, T, F) features from their recorded views, with gradients."""

    def __init__(self, extractor, peft_model: nn.Module, bank: FeatureBank,
                 recordings: dict[str, Recording]) -> None:
        super().__init__()
        self.extractor = extractor
        self.vlm = peft_model                     # a submodule: the trainer sees the adapters
        self.bank = bank
        self.recordings = recordings

    def images(self, row: int) -> list:
        """Decode and resize the views of one VL update as the VLM node does."""
        cfg = self.extractor.config
        b, k = (int(v[0]) for v in self.bank.locate(np.array([row])))
        bag = self.bank.bags[b]
        rec = self.recordings[bag.path]
        size = (cfg.image_width, cfg.image_height)
        return [resize_image(decode_image(rec.frames[v].newest(s), size), *size)
                for v, s in zip(cfg.view_names, bag.updates[k].view_stamps_s)]

    def forward(self, rows: np.ndarray) -> torch.Tensor:
        ex = self.extractor
        out = []
        for row in np.asarray(rows).tolist():
            inputs = ex.processor(text=[ex.contract.prompt], images=self.images(row),
                                  return_tensors='pt')
            ex.reset()
            out.append(ex.forward_features(inputs))                 # (T, F)
        return torch.stack(out)                                     # (B, T, F)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict
        return {k: v.detach().cpu().clone()
                for k, v in get_peft_model_state_dict(self.vlm).items()}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(self.vlm, state)


def save_adapters(vl: LoraFeatures, folder: Path) -> None:
    """Write the adapters (peft format: adapter_config.json, adapter_model.safetensors)."""
    vl.vlm.save_pretrained(str(folder / ADAPTER_FOLDER))


def save_finetuned_vlm(vl: LoraFeatures, adapters: dict[str, torch.Tensor], folder: Path,
                       model_id: str, settings: LoraSettings) -> Path:
    """Merge `adapters` into the VLM's weights and write a model folder vlm_node can load.

    The tokenizer and processor files are copied from the base folder; the marker names the
    fine-tuned model (`model_id`) and its base. The in-memory model is merged (end of training).
    """
    ex = vl.extractor
    base = Path(ex.source.folder)
    vl.load_adapter_state(adapters)
    merged = vl.vlm.merge_and_unload()
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for f in base.iterdir():
        if f.is_file() and f.name not in (MARKER_FILE, 'config.json') and \
                not f.name.endswith(('.safetensors', '.bin', '.safetensors.index.json')):
            shutil.copyfile(f, folder / f.name)
    merged.save_pretrained(str(folder))
    marker = {**read_marker(base), 'model_id': model_id, 'base_model_id': ex.model_id,
              'untrained': ex.untrained, 'lora': settings.to_dict(),
              'description': f'{ex.model_id} with stage-2 LoRA adapters merged '
                             '(vla_insertion train_expert --finetune-vl lora)'}
    for stale in ('weights_sha256', 'file_sizes', 'format', 'seed', 'architecture'):
        marker.pop(stale, None)
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2), encoding='utf-8')
    return folder
