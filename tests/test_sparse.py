"""Sparse training: the penalty is applied between backward and step, from a config."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper, build_optim_wrapper

import mmprune
from mmprune.tracing import make_batch
from mmprune.sparse import SparseAmpOptimWrapper, SparseOptimWrapperConstructor

from conftest import tiny

LR, REG, STEPS = 0.05, 0.01, 4


def _train(model, cfg, optim_cfg):
    wrapper = build_optim_wrapper(model, optim_cfg)  # what the Runner calls
    model.train()
    for i in range(STEPS):
        batch = make_batch(model, cfg, (64, 64), batch_size=2, training=True, seed=i)
        losses = model(batch['inputs'], batch['data_samples'], mode='loss')
        loss, _ = model.parse_losses(losses)
        wrapper.update_params(loss)
    return wrapper


def _norm_scales(model):
    return torch.cat([m.weight.detach().abs().flatten() for m in model.modules()
                      if isinstance(m, nn.BatchNorm2d) and m.weight.requires_grad])


def _filter_norms(model):
    return torch.cat([m.weight.detach().flatten(1).norm(dim=1) for m in model.modules()
                      if isinstance(m, nn.Conv2d) and m.weight.requires_grad])


@pytest.mark.parametrize('mode, measure', [('bn_scale', _norm_scales), ('group', _filter_norms)])
def test_sparse_training_shrinks_channels_faster(mode, measure):
    torch.manual_seed(0)
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    plain_model = copy.deepcopy(model)
    start = measure(model).mean()
    optimizer = dict(type='SGD', lr=LR, momentum=0.0)
    sparse = _train(model, cfg, dict(constructor='mmprune.SparseOptimWrapperConstructor',
                                     optimizer=optimizer, sparsity=dict(mode=mode, reg=REG)))
    assert type(sparse).__name__ == 'SparseOptimWrapper'
    plain = _train(plain_model, cfg, dict(optimizer=optimizer))
    assert type(plain) is OptimWrapper
    shrink_sparse = start - measure(model).mean()
    shrink_plain = start - measure(plain_model).mean()
    # each step moves every scale / filter norm LR * REG towards zero on top of the loss
    assert shrink_sparse - shrink_plain > 0.5 * LR * REG * STEPS, (shrink_sparse, shrink_plain)


def test_amp_wrapper_penalises_unscaled_gradients():
    """The penalty goes on after unscale_, so it does not grow with the loss scale."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    wrapper = SparseAmpOptimWrapper.__new__(SparseAmpOptimWrapper)
    OptimWrapper.__init__(wrapper, torch.optim.SGD(model.parameters(), lr=1.0))
    wrapper._setup(dict(mode='bn_scale', reg=0.5))
    wrapper.bind(model)
    wrapper.loss_scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)
    wrapper._scale_update_param = None
    before = model[1].weight.detach().clone()
    loss = wrapper.loss_scaler.scale(model(torch.ones(1, 1, 2, 2)).sum() * 0)
    loss.backward()
    wrapper.step()
    # zero loss: the only update is lr * reg * sign(gamma), unscaled
    assert torch.allclose(model[1].weight.detach(), before - 0.5 * torch.sign(before))


@pytest.mark.parametrize('cfg, error', [
    (dict(optimizer=dict(type='SGD', lr=0.1), sparsity=dict(mode='l0')), 'mode'),
    (dict(optimizer=dict(type='SGD', lr=0.1), sparsity=dict(reg=-1)), 'reg'),
    (dict(optimizer=dict(type='SGD', lr=0.1), sparsity=dict(rate=1)), 'rate'),
    (dict(type='ApexOptimWrapper', optimizer=dict(type='SGD', lr=0.1)), 'ApexOptimWrapper'),
])
def test_bad_sparsity_config(cfg, error):
    with pytest.raises((ValueError, TypeError), match=error):
        SparseOptimWrapperConstructor(cfg)


def test_unbound_wrapper_says_how_to_build_it():
    from mmprune.sparse import SparseOptimWrapper
    model = nn.Linear(2, 2)
    wrapper = SparseOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    model(torch.ones(1, 2)).sum().backward()
    with pytest.raises(RuntimeError, match='SparseOptimWrapperConstructor'):
        wrapper.step()
