"""The structure as plain data: diff, apply, hash, errors."""
import copy
import json

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from mmprune.structure import (apply_structure, diff, kept_channels, snapshot,
                               structure_hash)


def toy():
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 8, 1))


def pruned_toy():
    model = toy()
    before = snapshot(model)
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
    dg.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=[0, 3, 5]).prune()
    return model, diff(before, model)


def test_diff_is_plain_readable_data():
    _, structure = pruned_toy()
    assert json.loads(json.dumps(structure)) == structure
    assert structure['layers'] == {'0': {'out_channels': 13}, '1': {'num_features': 13},
                                   '3': {'in_channels': 13}}
    assert structure['shapes']['0.weight'] == [13, 3, 3, 3]
    assert kept_channels(structure)['0'] == {'out_channels': 13}


def test_apply_then_load_reproduces_the_pruned_model():
    model, structure = pruned_toy()
    fresh = apply_structure(toy(), structure)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
    assert fresh[0].out_channels == 13 and fresh[1].num_features == 13


def test_empty_structure_is_identity():
    model = toy()
    assert diff(snapshot(model), model) == dict(version=1, layers={}, shapes={})


def test_hash_is_stable_and_sensitive():
    _, s = pruned_toy()
    assert structure_hash(s) == structure_hash(copy.deepcopy(s))
    t = copy.deepcopy(s)
    t['layers']['0']['out_channels'] = 12
    assert structure_hash(s) != structure_hash(t)


@pytest.mark.parametrize('mutate, match', [
    (lambda s: s['layers'].update({'9': {'out_channels': 1}}), "does not match Sequential"),
    (lambda s: s['layers']['0'].update({'bogus': 1}), "has no attribute"),
    (lambda s: s.update(version=99), 'Not an mmprune structure'),
    # edited by hand: counts that contradict the shapes, grow, are not ints or not positive,
    # an emptied layer list, a geometry attribute, a malformed shape
    (lambda s: s['layers']['0'].update(out_channels=12), "contradicts itself at layer '0'"),
    (lambda s: s['layers']['1'].update(num_features=999), "layer '1'.*no larger than"),
    (lambda s: s['layers']['0'].update(out_channels='13'), "layer '0'.*positive count"),
    (lambda s: s['layers']['3'].update(in_channels=-1), "layer '3'.*positive count"),
    (lambda s: s.update(layers={}), 'contradicts itself at layer'),
    (lambda s: s['layers']['0'].update(padding=[1, 1]), "'padding'.*pruning never changes"),
    (lambda s: s['layers']['0'].update(dilation=[2, 2]), "'dilation'.*pruning never changes"),
    (lambda s: s['shapes'].update({'0.weight': ['13', 3, 3, 3]}), 'non-negative ints'),
])
def test_mismatching_structure_is_refused_before_any_change(mutate, match):
    _, s = pruned_toy()
    mutate(s)
    model = toy()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises((KeyError, ValueError), match=match):
        apply_structure(model, s)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize('layer', [nn.PReLU(16), nn.GroupNorm(4, 16), nn.InstanceNorm2d(16, affine=True)])
def test_every_count_torch_pruning_changes_is_accepted(layer):
    """A structure torch-pruning produced applies to a fresh model (PReLU's
    ``num_parameters``, as in CGNet, was refused as an edited attribute)."""
    def net():
        return nn.Sequential(nn.Conv2d(3, 16, 3), copy.deepcopy(layer), nn.Conv2d(16, 8, 1))
    model = net()
    before = snapshot(model)
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
    dg.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=[0, 1, 2, 3]).prune()
    structure = diff(before, model)
    assert structure['layers']['1']
    fresh = apply_structure(net(), structure)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(fresh(x), model(x))
