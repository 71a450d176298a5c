"""Attention modules: which of their layers keep their channels, and how heads prune."""
from __future__ import annotations

from typing import Dict, List

import torch.nn as nn

#: layers whose output channels torch-pruning groups prune (the roots of groups)
PRUNABLE_ROOTS = (nn.modules.conv._ConvNd, nn.Linear)


def attention_projections(model: nn.Module) -> List[nn.Module]:
    """Layers of attention blocks whose channels stay: the embedding and the heads.

    ``nn.MultiheadAttention`` with one packed input projection (mmcv's wrapper:
    SegFormer, ViT, DETR-style decoders) is pruned by torch-pruning's own
    attention handler, the same channels from every head (see
    :func:`attention_heads`), and so are the layers around it. Other attention
    modules (any module with an integer ``num_heads``: Swin's window attention,
    Twins) split their projections into heads with ``reshape`` calls built from
    constants or from the input's width, which torch-pruning's head rules do not
    cover: their projections keep their output channels, so the residual stream
    they write to keeps its width too; the feed-forward layers between them (and
    every convolution around them) are still pruned.
    """
    kept: List[nn.Module] = []
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            if not headwise(m):
                kept.append(m)
        elif isinstance(getattr(m, 'num_heads', None), int) and not any(
                isinstance(c, nn.MultiheadAttention) for c in m.children()):
            kept += [c for c in m.children() if isinstance(c, PRUNABLE_ROOTS)]
    return list(dict.fromkeys(kept))


def headwise(m: nn.MultiheadAttention) -> bool:
    """Whether torch-pruning's handler prunes ``m`` correctly: one packed input
    projection (query, key and value widths all ``embed_dim``)."""
    return bool(getattr(m, '_qkv_same_embed_dim', False)) and m.bias_k is None


def attention_heads(model: nn.Module, keep: List[nn.Module]) -> Dict[nn.Module, int]:
    """Channel groups of the attention modules pruned: one per head, so that each
    head loses the same channels and ``embed_dim`` stays divisible by ``num_heads``
    (torch-pruning splits the kept channels into heads in order)."""
    kept = set(keep)
    return {m: m.num_heads for m in model.modules()
            if isinstance(m, nn.MultiheadAttention) and m not in kept and headwise(m)
            and m.num_heads > 1}
