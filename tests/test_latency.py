"""allocation='latency': layer times, group weights, and the per-group ratios they give."""
import copy

import pytest
import torch
import torch.nn as nn

import mmprune
import mmprune.latency as latency_mod
from mmprune.search import FLOPS_TOLERANCE
from mmprune.latency import WEIGHT_RANGE, group_weights, layer_times
from mmprune.structure import snapshot

from conftest import state_equal, tiny

SHAPE = (96, 128)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.head(self.pool(self.relu(self.bn(self.conv(inputs)))))


def test_weightless_layers_count_for_the_layer_they_read():
    """ReLU and max pooling have no weights: their time goes to the batch norm whose
    output they read (the ReLU in place, the pool through the ReLU's output)."""
    def forward(m, b):
        return m(b['inputs'])

    model = _Net().eval()
    own, after = layer_times(model, dict(inputs=torch.randn(1, 3, 64, 64)), runs=1,
                             forward=forward)
    assert set(own) == {'conv', 'bn', 'head'}  # the layers with weights
    assert set(after) == {'bn'} and after['bn'] > 0
    # the pool's time is in there: without it, bn's share is smaller
    model.pool = nn.Identity()
    _, no_pool = layer_times(model, dict(inputs=torch.randn(1, 3, 64, 64)), runs=1,
                             forward=forward)
    assert set(no_pool) == {'bn'}


def test_group_weights_are_time_per_flop_relative_to_the_model():
    groups = [('a', [('a', True), ('a.bn', True), ('b', False)]),
              ('b', [('b', True), ('c', False)]),
              ('c', [('c', True)])]
    own = {'a': 1.0, 'a.bn': 1.0, 'b': 1.0, 'c': 1.0}
    after = {'a.bn': 2.0, 'b': 50.0}  # 'b' is read by 'c' only as an input: not its after time
    flops = {'a': 10.0, 'b': 10.0, 'c': 10.0}
    w = group_weights(groups, (own, after), flops)
    # a: (1 + 1 + 2 + 1) s / 20 F; b: (1 + 50 + 1) / 20; c: 1 / 10; total 58 s / 50 F
    share = {'a': (5 / 58) / (20 / 50), 'b': (52 / 58) / (20 / 50), 'c': (1 / 58) / (10 / 50)}
    lo, hi = WEIGHT_RANGE
    assert w == pytest.approx({k: min(max(v, lo), hi) for k, v in share.items()})
    assert w['b'] == hi and w['c'] == lo  # clipped both ways
    assert group_weights([('z', [('z', True)])], ({}, {}), {}) == {'z': 1.0}


@pytest.fixture(scope='module')
def retina():
    return mmprune.build_model(tiny('retinanet_r18_tiny'))


def _widths(model):
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_each_group_is_pruned_at_the_ratio_times_its_weight(retina, monkeypatch):
    """With weights given, the stem's group loses 2x the ratio, the rest 1x or 0.5x."""
    model, cfg = copy.deepcopy(retina[0]), retina[1]
    dense = _widths(model)
    real = latency_mod.group_weights
    seen = {}

    def weights(groups, times, flops):
        out = real(groups, times, flops)
        seen.update({root: 2.0 if root == 'backbone.conv1' else 0.5
                     if root.startswith('neck.') else 1.0 for root in out})
        return dict(seen)
    monkeypatch.setattr(latency_mod, 'group_weights', weights)
    result = mmprune.prune(model, pruning_ratio=0.25, cfg=cfg, input_shape=SHAPE,
                           allocation='latency', round_to=None)
    assert result.options['allocation'] == 'latency'
    now = _widths(model)
    assert now['backbone.conv1'] == dense['backbone.conv1'] // 2  # 2 x 0.25
    lateral = [n for n in seen if n.startswith('neck.lateral')]
    assert lateral and all(now[n] == dense[n] - int(dense[n] * 0.125) for n in lateral)
    assert now['backbone.layer1.0.conv1'] == dense['backbone.layer1.0.conv1'] * 3 // 4


def test_a_heavy_group_keeps_half_of_what_the_common_ratio_leaves(retina, monkeypatch):
    """ratio 0.6 x weight 2 would ask torch-pruning for every channel (it then prunes
    none); the group goes to (1 + 0.6) / 2 = 0.8 instead."""
    model, cfg = copy.deepcopy(retina[0]), retina[1]
    dense = _widths(model)['backbone.layer1.0.conv1']
    monkeypatch.setattr(latency_mod, 'group_weights', lambda groups, t, f: {
        root: 2.0 if root == 'backbone.layer1.0.conv1' else 1.0 for root, _ in groups})
    mmprune.prune(model, 0.6, cfg=cfg, input_shape=SHAPE, allocation='latency', round_to=None)
    assert _widths(model)['backbone.layer1.0.conv1'] == int(dense * (1 - 0.8))  # tp's count


def test_pruning_ratio_dict_entries_keep_their_ratio(retina, monkeypatch):
    model, cfg = copy.deepcopy(retina[0]), retina[1]
    dense = _widths(model)
    monkeypatch.setattr(latency_mod, 'group_weights',
                        lambda groups, t, f: {root: 2.0 for root, _ in groups})
    mmprune.prune(model, pruning_ratio=0.25, cfg=cfg, input_shape=SHAPE, round_to=None,
                  allocation='latency', pruning_ratio_dict={'backbone.conv1': 0.0})
    now = _widths(model)
    assert now['backbone.conv1'] == dense['backbone.conv1']
    assert now['backbone.layer1.0.conv1'] == dense['backbone.layer1.0.conv1'] // 2


def test_latency_allocation_meets_a_flops_target(retina):
    """Measured times (no monkeypatch): the search still lands on the target."""
    model, cfg = copy.deepcopy(retina[0]), retina[1]
    result = mmprune.prune(model, cfg=cfg, input_shape=SHAPE, target_flops=0.5,
                           allocation='latency')
    assert abs(result.flops_ratio - 0.5) <= 0.5 * FLOPS_TOLERANCE + 1e-9


@pytest.mark.parametrize('kwargs, match', [
    (dict(allocation='fast'), "allocation must be one of .*'fast'"),
    (dict(allocation='latency', global_pruning=True), 'global_pruning'),
])
def test_bad_allocation_is_one_clear_error(retina, kwargs, match):
    model, cfg = copy.deepcopy(retina[0]), retina[1]
    sd, shape = copy.deepcopy(model.state_dict()), snapshot(model)
    with pytest.raises(ValueError, match=match):
        mmprune.prune(model, 0.3, cfg=cfg, input_shape=SHAPE, **kwargs)
    assert state_equal(sd, model.state_dict()) and snapshot(model) == shape
