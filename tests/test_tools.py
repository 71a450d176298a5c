"""tools/prune.py option handling (the end-to-end runs are in test_host_tools.py)."""
import importlib.util
import os

import pytest
from mmengine.config import Config

from conftest import ROOT


def _prune_tool(name='prune'):
    spec = importlib.util.spec_from_file_location(f'{name}_tool',
                                                  os.path.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_pruning_section_with_flag_overrides():
    tool = _prune_tool()
    cfg = Config(dict(pruning=dict(importance='taylor', target_flops=0.5, round_to=8)))
    args = tool.parse_args(['cfg.py', '--importance', 'l1', '--layer-ratio',
                            'backbone.layer4.*=0.2', '--input-shape', '64', '96'])
    opts = tool.pruning_options(cfg, args)
    assert opts == dict(importance='l1', target_flops=0.5, round_to=8,
                        pruning_ratio_dict={'backbone.layer4.*': 0.2}, input_shape=(64, 96))


def test_bad_layer_ratio_flag_is_refused():
    tool = _prune_tool()
    args = tool.parse_args(['cfg.py', '--layer-ratio', 'backbone'])
    with pytest.raises(SystemExit, match='PATTERN=RATIO'):
        tool.pruning_options(Config(), args)


def test_prune_train_distill_flags(capsys):
    tool = _prune_tool('prune_train')
    cfg = Config(dict(custom_hooks=[dict(type='mmprune.PruningHook', target_flops=0.5)]))
    tool.hook_cfg(cfg, tool.parse_args(['cfg.py', '--checkpoint', 'd.pth', '--distill', 'mse',
                                        '--distill-weight', '2']))
    assert cfg.custom_hooks[-1] == dict(type='mmprune.DistillHook', loss='mse',
                                        teacher_checkpoint='d.pth', loss_weight=2.0)
    with pytest.raises(SystemExit):
        tool.parse_args(['cfg.py', '--distill-weight', '2'])
    assert '--distill-weight needs --distill' in capsys.readouterr().err
