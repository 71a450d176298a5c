"""Option handling of `mmprune prune` and `mmprune train` (end to end: test_host_tools.py)."""
import importlib

import pytest
from mmengine.config import Config


def _prune_tool(name='prune'):
    return importlib.import_module(f'mmprune.cli.{name}')


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
    tool = _prune_tool('train')
    cfg = Config(dict(custom_hooks=[dict(type='mmprune.PruningHook', target_flops=0.5)]))
    tool.hook_cfg(cfg, tool.parse_args(['cfg.py', '--checkpoint', 'd.pth', '--distill', 'mse',
                                        '--distill-weight', '2']))
    assert cfg.custom_hooks[-1] == dict(type='mmprune.DistillHook', loss='mse',
                                        teacher_checkpoint='d.pth', loss_weight=2.0)
    with pytest.raises(SystemExit):
        tool.parse_args(['cfg.py', '--distill-weight', '2'])
    assert '--distill-weight needs --distill' in capsys.readouterr().err


@pytest.mark.parametrize('flags, hook', [
    (['--remove-blocks', '3'], dict(target_flops=0.5, remove_blocks=3)),
    (['--remove-blocks', '0.25', '--block-criterion', 'loss'],
     dict(target_flops=0.5, remove_blocks=0.25, block_criterion='loss')),
    (['--remove-blocks', 'backbone.layer3.1', 'backbone.layer3.2', '--target-latency', '0.6'],
     dict(remove_blocks=['backbone.layer3.1', 'backbone.layer3.2'], target_latency=0.6)),
    (['--target-latency', '0.5'], dict(target_latency=0.5)),
])
def test_prune_train_depth_and_latency_flags(flags, hook):
    """--target-latency replaces the config's target; --remove-blocks takes a count, a
    fraction or names; the hook built from the result accepts them."""
    from mmprune.hooks import PruningHook
    tool = _prune_tool('train')
    cfg = Config(dict(custom_hooks=[dict(type='mmprune.PruningHook', target_flops=0.5)]))
    tool.hook_cfg(cfg, tool.parse_args(['cfg.py', *flags]))
    assert cfg.custom_hooks[0] == dict(type='mmprune.PruningHook', **hook)
    PruningHook(**{k: v for k, v in cfg.custom_hooks[0].items() if k != 'type'})
