"""Extension points a user reaches from a config: a criterion registered in
``mmprune.registry.IMPORTANCES`` and a layer handler in ``LAYER_PRUNERS``, both from a
module named by ``custom_imports``."""
import copy
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

import mmprune
from mmprune.registry import IMPORTANCES, LAYER_PRUNERS
from mmprune.tracing import make_batch

from conftest import state_equal, tiny

SHAPE = (96, 128)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write a user's module and a config importing it; undo the registrations after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    registered = []

    def write(name: str, source: str, extra_cfg: str = '') -> str:
        (tmp_path / f'{name}.py').write_text(textwrap.dedent(source))
        cfg = tmp_path / f'{name}_cfg.py'
        cfg.write_text(f"_base_ = {tiny('retinanet_r18_tiny')!r}\n"
                       f"custom_imports = dict(imports=[{name!r}], allow_failed_imports=False)\n"
                       + textwrap.dedent(extra_cfg))
        registered.append(name)
        return str(cfg)

    before = (dict(IMPORTANCES.module_dict), dict(LAYER_PRUNERS.module_dict))
    yield write
    for registry, entries in zip((IMPORTANCES, LAYER_PRUNERS), before):
        registry._module_dict.clear()
        registry._module_dict.update(entries)
    for name in registered:
        sys.modules.pop(name, None)


def test_a_criterion_registered_from_custom_imports(user_module):
    cfg_path = user_module('my_criteria', '''
        import torch_pruning as tp
        from mmprune.registry import IMPORTANCES

        @IMPORTANCES.register_module()
        class MeanAbs(tp.importance.GroupMagnitudeImportance):
            """L1 norm averaged over the group: group_l1 under another name."""
            def __init__(self, **kwargs):
                super().__init__(p=1, group_reduction='mean', **kwargs)

        @IMPORTANCES.register_module()
        class MyTaylor(tp.importance.GroupTaylorImportance):
            pass
        ''')
    model, cfg = mmprune.build_model(cfg_path)  # the config's custom_imports registers them
    assert 'MeanAbs' in mmprune.importance.importance_names()
    mine = mmprune.prune(copy.deepcopy(model), 0.4, 'MeanAbs', cfg=cfg, input_shape=SHAPE)
    same = mmprune.prune(copy.deepcopy(model), 0.4, 'group_l1', cfg=cfg, input_shape=SHAPE)
    other = mmprune.prune(copy.deepcopy(model), 0.4, 'l2', cfg=cfg, input_shape=SHAPE)
    # the criterion chooses which channels stay: the same weights as group_l1's, not l2's
    assert state_equal(mine.model.state_dict(), same.model.state_dict())
    assert not state_equal(mine.model.state_dict(), other.model.state_dict())
    # a subclass of a gradient criterion gets gradients of the loss
    taylor = mmprune.prune(copy.deepcopy(model), 0.4, dict(type='MyTaylor'), cfg=cfg,
                           input_shape=SHAPE)
    assert state_equal(taylor.model.state_dict(), mmprune.prune(
        copy.deepcopy(model), 0.4, 'group_taylor', cfg=cfg, input_shape=SHAPE).model.state_dict())
    # and a PruningHook in a config takes it by name
    hook = mmprune.PruningHook(importance='MeanAbs', pruning_ratio=0.3)
    assert hook.importance == 'MeanAbs'
    with pytest.raises(ValueError, match="Unknown importance 'MeanAbz'"):
        mmprune.PruningHook(importance='MeanAbz', pruning_ratio=0.3)


LAYER_SOURCE = '''
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class ScaledConv(nn.Module):
        """A 3x3 conv with a learned per-output scale: a layer torch-pruning does not know."""

        def __init__(self, in_channels, out_channels):
            super().__init__()
            self.in_channels, self.out_channels = in_channels, out_channels
            self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3) * 0.1)
            self.scale = nn.Parameter(torch.ones(out_channels))

        def forward(self, x):
            return F.conv2d(x, self.weight, padding=1) * self.scale.view(1, -1, 1, 1)
    '''

HANDLER_SOURCE = '''
    from torch_pruning.pruner.function import BasePruningFunc
    from mmprune.registry import LAYER_PRUNERS


    @LAYER_PRUNERS.register_module()
    class ScaledConvPruner(BasePruningFunc):
        layer_types = ('my_layers.ScaledConv',)

        def prune_out_channels(self, layer, idxs):
            keep = sorted(set(range(layer.out_channels)) - set(int(i) for i in idxs))
            layer.out_channels = len(keep)
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
            layer.scale = self._prune_parameter_and_grad(layer.scale, keep, 0)
            return layer

        def prune_in_channels(self, layer, idxs):
            keep = sorted(set(range(layer.in_channels)) - set(int(i) for i in idxs))
            layer.in_channels = len(keep)
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
            return layer

        def get_out_channels(self, layer):
            return layer.out_channels

        def get_in_channels(self, layer):
            return layer.in_channels
    '''


def _with_scaled_conv(model: nn.Module) -> nn.Module:
    from my_layers import ScaledConv
    conv = model.bbox_head.cls_convs[0].conv
    model.bbox_head.cls_convs[0].conv = ScaledConv(conv.in_channels, conv.out_channels)
    return model


def test_a_layer_handler_registered_from_custom_imports(user_module):
    user_module('my_layers', LAYER_SOURCE)
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    # without a handler torch-pruning sees two unwrapped parameters it cannot map to
    # channels: the layer, and the features on both its sides, keep their width
    bare = _with_scaled_conv(copy.deepcopy(model))
    mmprune.prune(bare, 0.5, cfg=cfg, input_shape=SHAPE, round_to=None)
    layer = bare.bbox_head.cls_convs[0].conv
    assert (layer.in_channels, layer.out_channels, layer.scale.numel()) == (32, 32, 32)
    assert bare.neck.fpn_convs[0].conv.out_channels == 32

    cfg_path = user_module('my_handlers', HANDLER_SOURCE)
    mmprune.build_model(cfg_path)  # registers the handler
    handled = _with_scaled_conv(copy.deepcopy(model))
    result = mmprune.prune(handled, 0.5, cfg=cfg, input_shape=SHAPE, round_to=None)
    layer = handled.bbox_head.cls_convs[0].conv
    # its input channels now follow the FPN's, pruned with it (its own outputs are not
    # the root of a group: torch-pruning 1.6.1 groups start at convs and linears only)
    assert layer.in_channels == layer.weight.shape[1] == 16
    assert result.structure['layers']['bbox_head.cls_convs.0.conv'] == {'in_channels': 16}
    assert handled.neck.fpn_convs[0].conv.out_channels == 16
    handled.eval()
    with torch.no_grad():
        handled(**make_batch(handled, cfg, SHAPE), mode='tensor')
