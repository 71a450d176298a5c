"""Channel constants of weight-free modules that must follow their inputs' width."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List

import torch.nn as nn

from .forwards import forward_reads
from .outputs import layer_types
from .tensors import first_tensor

#: int attributes that hold a channel count
CHANNEL_ATTRS = ('in_channels', 'out_channels', 'channels', 'feat_channels', 'embed_dims',
                 'num_channels')


@contextlib.contextmanager
def follow_input_channels(model: nn.Module) -> Iterator[Dict[str, List[str]]]:
    """Keep channel constants of weight-free modules equal to their input channels.

    Some modules without prunable layers keep a channel count as a plain
    attribute and use it in forward (mmdet's RoI extractors allocate
    ``out_channels`` feature maps). The first forward records which such
    attributes equal the channels of the module's first input tensor; every
    later forward (after pruning) sets them to the new input channels, so
    the pruned structure records them too.
    """
    types = layer_types()
    links: Dict[str, List[str]] = {}
    recorded: set = set()
    handles = []

    def hook_for(name: str, candidates: List[str]):
        def hook(module, args):
            x = first_tensor(args)
            if x is None or x.dim() < 2:
                return
            if name not in recorded:
                recorded.add(name)
                attrs = [a for a in candidates if getattr(module, a, None) == x.shape[1]]
                if attrs:
                    links[name] = attrs
            for attr in links.get(name, ()):
                setattr(module, attr, int(x.shape[1]))
        return hook

    for name, m in model.named_modules():
        attrs = [a for a in CHANNEL_ATTRS
                 if isinstance(getattr(m, a, None), int) and not isinstance(getattr(m, a), bool)]
        if any(isinstance(d, types) for d in m.modules()):
            # modules with layers: only a ``channels`` their forward reads (DyReLU's split);
            # their in/out_channels often describe a layer's output instead (GRoIE)
            attrs = [a for a in attrs if a == 'channels' and a in forward_reads(type(m))]
        if attrs:
            handles.append(m.register_forward_pre_hook(hook_for(name, attrs)))
    try:
        yield links
    finally:
        for h in handles:
            h.remove()

