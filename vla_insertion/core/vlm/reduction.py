"""Reduce the VLM's last hidden states to the published feature matrix.

The language model's last layer gives one hidden vector per prompt token: ~299 per 640x360 view
plus ~40 text tokens, ~1540 x 2048 for five views. Publishing all of them would cost 12 MB per
update and tie the action expert to the image size. The reduction keeps what the expert needs at
a fixed size:

- image-grid pooling: each view's visual tokens form a (rows, cols) grid in raster order (13 x 23
  for 640x360); an adaptive average pool shrinks it to `pool_h x pool_w` tokens (2 x 4 by
  default), keeping coarse spatial layout (left/right, top/bottom) per view, in view order;
- instruction mean: the mean of the tokens after the last image (the task instruction and the
  opening of the assistant turn); under causal attention these tokens have seen every view, so
  their mean is the prompt's fused reading of the scene for the task.

Output: (num_views * pool_h * pool_w + 1, hidden) float32, the instruction row last.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reduce_hidden_states(hidden: torch.Tensor, input_ids: torch.Tensor,
                         grid_thw: torch.Tensor, *, image_token_id: int,
                         vision_end_token_id: int, merge_size: int,
                         pool_h: int, pool_w: int) -> torch.Tensor:
    """Pool one prompt's last hidden states to (views * pool_h * pool_w + 1, D) float32.

    hidden: (T, D) last hidden states; input_ids: (T,) the prompt's token ids; grid_thw:
    (V, 3) each view's patch grid (frames, rows, cols) as the processor returned it.
    """
    hidden = hidden.float()                                     # (T, D)
    is_image = input_ids == image_token_id                      # (T,)
    image_tokens = hidden[is_image]                             # (V * R * C, D)
    rows = (grid_thw[:, 1] // merge_size).tolist()
    cols = (grid_thw[:, 2] // merge_size).tolist()
    counts = (grid_thw[:, 0] * grid_thw[:, 1] * grid_thw[:, 2] // merge_size ** 2).tolist()
    if sum(counts) != image_tokens.shape[0]:
        raise ValueError(f'{image_tokens.shape[0]} image tokens in the prompt, '
                         f'{sum(counts)} expected from the image grids {grid_thw.tolist()}')
    pooled = []
    for view_tokens, r, c in zip(torch.split(image_tokens, counts), rows, cols):
        # (T' * R * C, D) -> (T', D, R, C); a still image has T' = 1 frame
        grid = view_tokens.reshape(-1, r, c, view_tokens.shape[-1]).permute(0, 3, 1, 2)
        grid = F.adaptive_avg_pool2d(grid, (pool_h, pool_w)).mean(dim=0)  # (D, ph, pw)
        pooled.append(grid.flatten(1).transpose(0, 1))                    # (ph * pw, D)
    ends = torch.nonzero(input_ids == vision_end_token_id).flatten()
    if ends.numel() == 0:
        raise ValueError('no <|vision_end|> token in the prompt')
    text = hidden[int(ends[-1]) + 1:]                                      # (T_text, D)
    if text.shape[0] == 0:
        raise ValueError('no text tokens after the last image')
    pooled.append(text.mean(dim=0, keepdim=True))                          # (1, D)
    return torch.cat(pooled, dim=0).contiguous()               # (V * ph * pw + 1, D)
