"""Qwen2.5-VL architectures as plain dicts: the published 3B config and the tiny test model.

No torch and no transformers here, so the feature contract (which needs the hidden size) can be
computed on a machine that never loads a model.

The published numbers below are those of the `config.json` that Qwen publishes with
`Qwen/Qwen2.5-VL-3B-Instruct` on the Hugging Face hub (written into the code because nothing can
be downloaded here). The tiny model keeps that structure (grouped-query attention, multimodal
rotary sections in the same proportions, windowed vision attention with full-attention blocks,
patch 14, temporal patch 2, 2x2 merge) so a 640x360 view still becomes 299 visual tokens; only
widths, depths and head counts shrink.
"""
from __future__ import annotations

import copy
import math

PUBLISHED_3B_ID = 'Qwen/Qwen2.5-VL-3B-Instruct'

# config.json of Qwen/Qwen2.5-VL-3B-Instruct as published (flat text fields, as on the hub).
PUBLISHED_3B_CONFIG: dict = {
    'architectures': ['Qwen2_5_VLForConditionalGeneration'],
    'model_type': 'qwen2_5_vl',
    'attention_dropout': 0.0,
    'bos_token_id': 151643,
    'eos_token_id': 151645,
    'vision_start_token_id': 151652,
    'vision_end_token_id': 151653,
    'vision_token_id': 151654,
    'image_token_id': 151655,
    'video_token_id': 151656,
    'hidden_act': 'silu',
    'hidden_size': 2048,
    'initializer_range': 0.02,
    'intermediate_size': 11008,
    'max_position_embeddings': 128000,
    'max_window_layers': 70,
    'num_attention_heads': 16,
    'num_hidden_layers': 36,
    'num_key_value_heads': 2,
    'rms_norm_eps': 1e-06,
    'rope_theta': 1000000.0,
    'sliding_window': 32768,
    'tie_word_embeddings': True,
    'torch_dtype': 'bfloat16',
    'use_cache': True,
    'use_sliding_window': False,
    'vocab_size': 151936,
    'rope_scaling': {'type': 'mrope', 'mrope_section': [16, 24, 24]},
    'vision_config': {
        'depth': 32,
        'hidden_act': 'silu',
        'hidden_size': 1280,
        'intermediate_size': 3420,
        'num_heads': 16,
        'in_chans': 3,
        'out_hidden_size': 2048,
        'patch_size': 14,
        'spatial_merge_size': 2,
        'spatial_patch_size': 14,
        'window_size': 112,
        'fullatt_block_indexes': [7, 15, 23, 31],
        'tokens_per_second': 2,
        'temporal_patch_size': 2,
    },
}

# preprocessor_config.json published beside it: pixel bounds and CLIP normalisation.
PUBLISHED_PREPROCESSOR_CONFIG: dict = {
    'min_pixels': 3136,
    'max_pixels': 12845056,
    'patch_size': 14,
    'temporal_patch_size': 2,
    'merge_size': 2,
    'image_mean': [0.48145466, 0.4578275, 0.40821073],
    'image_std': [0.26862954, 0.26130258, 0.27577711],
}

# Hidden sizes of the published Qwen2.5-VL family, for contracts of hub ids not in the cache.
PUBLISHED_HIDDEN_SIZES: dict[str, int] = {
    PUBLISHED_3B_ID: 2048,
    'Qwen/Qwen2.5-VL-7B-Instruct': 3584,
    'Qwen/Qwen2.5-VL-32B-Instruct': 5120,
    'Qwen/Qwen2.5-VL-72B-Instruct': 8192,
}

# The tiny model: what changes against the published 3B (everything else is kept).
TINY_TEXT = {
    'hidden_size': 64,             # 2048 published; head_dim 16 instead of 128
    'intermediate_size': 128,      # 11008
    'num_hidden_layers': 2,        # 36
    'num_attention_heads': 4,      # 16
    'num_key_value_heads': 2,      # 2: grouped-query attention kept
    # rotary sections (t, h, w) over head_dim / 2 = 8, same 2:3:3 split as 16:24:24
    'rope_scaling': {'type': 'mrope', 'mrope_section': [2, 3, 3]},
    'torch_dtype': 'float32',
}
TINY_VISION = {
    'depth': 2,                    # 32 published
    'hidden_size': 32,             # 1280
    'intermediate_size': 64,       # 3420
    'num_heads': 2,                # 16
    'out_hidden_size': 64,         # must equal the text hidden size
    'fullatt_block_indexes': [1],  # every 8th block published; here the last of two
}

# Visual geometry shared by every Qwen2.5-VL: one token per 2x2 merge of 14x14 patches.
PATCH_SIZE = 14
MERGE_SIZE = 2


def published_3b_config() -> dict:
    """Return a copy of the published Qwen2.5-VL-3B-Instruct config."""
    return copy.deepcopy(PUBLISHED_3B_CONFIG)


def tiny_config() -> dict:
    """Return the tiny model's config: the published 3B with small widths and depths."""
    config = published_3b_config()
    config.update(copy.deepcopy(TINY_TEXT))
    config['vision_config'].update(copy.deepcopy(TINY_VISION))
    return config


def hidden_size_of(config: dict) -> int:
    """Return the language-model hidden size of a config.json dict (flat or nested layout)."""
    if 'hidden_size' in config:
        return int(config['hidden_size'])
    return int(config['text_config']['hidden_size'])


def visual_tokens(width: int, height: int, min_pixels: int = 3136,
                  max_pixels: int = 12845056) -> tuple[int, int]:
    """Return the merged token grid (rows, cols) Qwen2.5-VL makes of a width x height image.

    The processor rounds each side to a multiple of 28 (patch 14 x merge 2) within the pixel
    bounds; 640x360 becomes 644x364, i.e. 46x26 patches and 23x13 = 299 merged tokens.
    """
    factor = PATCH_SIZE * MERGE_SIZE
    rows = max(factor, round(height / factor) * factor)
    cols = max(factor, round(width / factor) * factor)
    if rows * cols > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        rows = max(factor, math.floor(height / scale / factor) * factor)
        cols = max(factor, math.floor(width / scale / factor) * factor)
    elif rows * cols < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        rows = math.ceil(height * scale / factor) * factor
        cols = math.ceil(width * scale / factor) * factor
    return rows // factor, cols // factor
