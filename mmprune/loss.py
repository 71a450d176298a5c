"""The model's loss during a prune: checked after pruning, and read by gradient criteria.

:func:`check_loss` runs the pruned model's ``mode='loss'`` once, because layers used
only by the loss (some heads' training branches) are not in the traced graph: if
pruning broke one, the prune fails there and the model is restored instead of being
handed back broken. Gradient criteria (Taylor, Hessian) take the loss on a few
batches (:func:`accumulate_gradients`) under :func:`loss_mode`.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log

from .tracing import make_batch


def check_loss(model: nn.Module, cfg, batch: Dict[str, Any], seed: int,
                images: int = 1) -> None:
    """Run the pruned model's ``mode='loss'`` once (train mode, ``images`` images;
    2 when a batch norm meets a single value per channel with one image).

    Layers used only by the loss (some heads' training branches) are not in the
    traced graph; if pruning broke one, this fails here, and the model is
    restored instead of being handed back broken. Buffers (BN statistics) are
    put back afterwards.
    """
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    shape = tuple(batch['inputs'].shape[-2:])
    pre = getattr(model, 'data_preprocessor', None)
    crop = getattr(pre, 'size', None)  # mmseg pads training batches to its crop size
    try:
        if crop is not None:
            pre.size = shape
        model.train()
        train_batch = make_batch(model, cfg, shape, batch_size=images, training=True,
                                 seed=seed + 7)
        with torch.no_grad():
            model_loss(model, train_batch)
    except ValueError as e:
        if images > 1 or 'more than 1 value per channel' not in str(e):
            raise _loss_error(e) from e
        retry = True
    except Exception as e:
        raise _loss_error(e) from e
    else:
        retry = False
    finally:
        if crop is not None:
            pre.size = crop
        with torch.no_grad():
            for k, v in model.named_buffers():
                if k in buffers and v.shape == buffers[k].shape:
                    v.copy_(buffers[k])
        for m, mode in modes.items():
            m.training = mode
    if retry:
        check_loss(model, cfg, batch, seed, images=2)


def _loss_error(e: Exception) -> RuntimeError:
    if isinstance(e, NotImplementedError):  # not a shape: the op is missing, pruned or not
        return RuntimeError(
            f'the pruned model fails in mode=loss ({type(e).__name__}: {e}): an operation of '
            f'the loss is not available here (an mmcv op without a kernel for this device?), '
            f'and pruning does not change that; the unpruned model fails the same way. The '
            f'model is restored.')
    return RuntimeError(
        f'the pruned model fails in mode=loss ({type(e).__name__}: {e}); a layer used only '
        f'by the loss was not reached by the traced forward. The model is restored; keep '
        f'the layers feeding it with ignored_layers.')


def one_value_norms(model: nn.Module, record) -> bool:
    """Whether a batch norm saw one value per channel of an image in ``record`` (an
    image-pooling branch): in train mode it then needs two images."""
    modules = dict(model.named_modules())
    return any(isinstance(modules.get(name), nn.modules.batchnorm._BatchNorm) and any(
        inputs and inputs[0] and math.prod(inputs[0][2:]) == 1 for inputs, _ in calls)
        for name, calls in record.items())


def model_loss(model: nn.Module, batch: Dict[str, Any]) -> torch.Tensor:
    from mmengine.logging import MessageHub
    hub = MessageHub.get_current_instance()
    for key in ('iter', 'epoch'):  # outside a runner: losses with warm-up read them (BoxInst, TOOD)
        if hub.get_info(key) is None:
            hub.update_info(key, 0)
    losses = model(batch['inputs'], batch['data_samples'], mode='loss')
    loss, _ = model.parse_losses(losses)
    return loss




def train_batches(cfg, num_batches: int) -> Optional[List[Dict[str, Any]]]:
    """A few batches of the config's train dataloader, or None when it has none.

    A dataloader whose data is not on disk (a zoo config without its dataset)
    falls back to synthetic batches; one that is built but yields nothing is
    an error.
    """
    loader_cfg = cfg.get('train_dataloader') if cfg is not None else None
    if not loader_cfg:
        return None
    from mmengine.registry import DATASETS, init_default_scope
    from mmengine.runner import Runner
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    loader_cfg = copy.deepcopy(loader_cfg)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    try:
        dataset = DATASETS.build(loader_cfg['dataset'])
    except (FileNotFoundError, OSError) as e:
        print_log(f'[mmprune] train_dataloader unavailable ({e}); synthetic batches are '
                  f'used instead', logger='current', level=logging.WARNING)
        return None
    except Exception as e:  # an empty annotation file fails inside the host's dataset
        raise ValueError(f'the gradient importance needs data, but the config\'s '
                         f'train_dataloader dataset could not be built ({type(e).__name__}: '
                         f'{e}); is it empty?') from e
    batches = []
    if len(dataset) > 0:
        loader_cfg['dataset'] = dataset
        batches = list(itertools.islice(iter(Runner.build_dataloader(loader_cfg)), num_batches))
    if not batches:
        raise ValueError('the gradient importance needs data, but the config\'s '
                         'train_dataloader yielded no batch (is its dataset empty?)')
    return batches


@contextlib.contextmanager
def loss_mode(model: nn.Module, seed: int = 0) -> Iterator[None]:
    """The mode a gradient criterion's loss runs in; every module's mode restored after.

    The loss is computed as in training, because some heads' forward depends on
    ``self.training`` (RepPoints returns an extra output, KNet's decode head every
    stage, Deformable DETR's head the encoder's proposals) and their loss expects
    the training outputs. Two things are set deliberately instead of as in training:
    batch norms use their running statistics (a handful of example images would
    give noisy batch statistics, and the running ones must not move), and dropout
    or drop-path draw from a fixed seed, so that a criterion scores the same
    weights the same way every time.
    """
    modes = {m: m.training for m in model.modules()}
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model.train()
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def accumulate_gradients(model: nn.Module, data, num_batches: int, imp,
                          per_sample: bool) -> None:
    model.zero_grad(set_to_none=True)
    if per_sample:
        imp.zero_grad()
    used = 0
    with loss_mode(model):
        for batch in data:
            if used >= num_batches:
                break
            if 'inputs' in batch and isinstance(batch['inputs'], list):  # a dataloader's batch
                batch = model.data_preprocessor(batch, True)
            if per_sample:
                model.zero_grad(set_to_none=True)
            model_loss(model, batch).backward()
            if per_sample:
                imp.accumulate_grad(model)
            used += 1
    if used == 0:
        raise ValueError(f'importance {type(imp).__name__} needs data, but the given '
                         'data (dataloader) yielded no batch')
