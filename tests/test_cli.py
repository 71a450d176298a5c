"""The ``mmprune`` command line, the thin ``tools/`` scripts, packaged configs, optional timing
and prune()'s progress log."""
import ast
import glob
import os
import subprocess
import sys

import pytest

from conftest import ROOT, tiny


def _run(*argv, cwd=None):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=600,
                          cwd=cwd or ROOT)


def test_help_lists_every_command_and_each_command_has_its_own_help(tmp_path):
    from mmprune.cli import COMMANDS
    proc = _run('-m', 'mmprune', '--help', cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in COMMANDS:
        assert name in proc.stdout
    for name in ('prune', 'train', 'test', 'analyze', 'sweep', 'sensitivity', 'export'):
        assert name in COMMANDS
    proc = _run('-m', 'mmprune', 'prune', '--help', cwd=str(tmp_path))
    assert proc.returncode == 0 and 'usage: mmprune prune' in proc.stdout
    assert '--target-flops' in proc.stdout
    proc = _run('-m', 'mmprune', 'nonsense', cwd=str(tmp_path))
    assert proc.returncode == 2 and 'invalid choice' in proc.stderr


def test_every_command_module_parses_its_help():
    from mmprune.cli import COMMANDS, command_module
    for name in COMMANDS:
        module = command_module(name)
        with pytest.raises(SystemExit) as e:
            module.main(['--help'])
        assert e.value.code == 0, name


def test_tools_are_thin_entry_points_over_the_package():
    """Every tools/*.py imports its ``main`` from mmprune.cli and nothing else: no
    sys.path changes, no tool importing another."""
    from mmprune.cli import COMMANDS
    modules = {m for m, _ in COMMANDS.values()}
    scripts = sorted(glob.glob(os.path.join(ROOT, 'tools', '*.py')))
    assert len(scripts) >= 9
    for path in scripts:
        source = open(path).read()
        assert 'sys.path' not in source, path
        imports = [n for n in ast.walk(ast.parse(source))
                   if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert len(imports) == 1 and isinstance(imports[0], ast.ImportFrom), path
        module = imports[0].module
        assert module.startswith('mmprune.cli.') and module.split('.')[-1] in modules, path
        assert [a.name for a in imports[0].names] == ['main'], path
    proc = _run(os.path.join(ROOT, 'tools', 'prune_train.py'), '--help')
    assert proc.returncode == 0 and 'usage: mmprune train' in proc.stdout


def test_packaged_configs_resolve_by_name(tmp_path, capsys):
    import mmprune
    from mmprune.cli import configs as configs_cmd
    from mmprune.configs import config_path, list_configs
    names = list_configs('tiny')
    assert 'mmprune::tiny/retinanet_r18_tiny.py' in names
    assert all(os.path.isfile(config_path(n)) for n in list_configs())
    assert config_path('mmprune::tiny/pspnet_r18_tiny.py') == os.path.join(
        mmprune.configs_dir(), 'tiny', 'pspnet_r18_tiny.py')
    assert config_path('my/own.py') == 'my/own.py'
    cfg = mmprune.load_config('mmprune::tiny/retinanet_r18_tiny.py')
    assert cfg.model.type == 'RetinaNet'
    # a config whose _base_ is relative loads through its packaged path too
    assert mmprune.load_config('mmprune::demo/retinanet_r18_shapes.py').model.type == 'RetinaNet'
    with pytest.raises(FileNotFoundError, match='mmprune configs'):
        config_path('mmprune::tiny/nope.py')
    assert configs_cmd.main(['bccd']) == ['mmprune::bccd/fcos_mbv2_fpn_bccd.py',
                                          'mmprune::bccd/retinanet_mbv2_fpn_bccd.py']
    assert mmprune.configs_dir() in capsys.readouterr().out
    with pytest.raises(SystemExit, match='no packaged config'):
        configs_cmd.main(['no-such-thing'])


def test_timing_is_optional():
    """``--latency-runs 0`` skips timing: no crash, ``-`` in the tables."""
    import torch

    from mmprune.evaluation import format_ms, sizes_table, table
    from mmprune.timing import forward_ms, interleaved_ms, median_ms
    calls = []
    assert interleaved_ms({'a': lambda: calls.append(1)}, 0) == {'a': None} and not calls
    assert median_ms(lambda: None, 0) is None
    assert median_ms(lambda: None, 3) >= 0
    model = torch.nn.Conv2d(3, 4, 3)
    assert forward_ms(model, dict(inputs=torch.zeros(1, 3, 8, 8), data_samples=None), 0) is None
    ms = forward_ms(model, dict(inputs=torch.zeros(1, 3, 8, 8), data_samples=None), 2,
                    forward=lambda m, b: m(b['inputs']))
    assert ms > 0 and next(model.parameters()).device.type == 'cpu'
    assert format_ms(None) == '-' and format_ms(1.234) == '1.23'
    row = dict(tag='dense', size='dense', metrics={'coco/bbox_mAP': 0.5}, params=10, flops=100,
               input_shape=[8, 8], cpu_latency_ms=None, gpu_latency_ms=None, size_mb=1.0)
    text = table([dict(row, tag='pruned'), row])
    assert 'not timed' in text and ' - ' in text
    assert '| - | - |' in sizes_table([row, dict(row, size='half', flops=50)], 'note', 0)


def test_prune_logs_its_stages_and_target_flops_trials():
    import logging

    from mmengine.logging import MMLogger

    import mmprune
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()  # where prune() logs (mmengine's 'current')
    logger.addHandler(handler)
    try:
        mmprune.prune(model, cfg=cfg, target_flops=0.5, input_shape=(64, 96))
    finally:
        logger.removeHandler(handler)
    out = '\n'.join(records)
    assert '[mmprune] tracing RetinaNet (example input 64x96)' in out
    assert 'counting the FLOPs' in out and 'checking that the pruned model' in out
    trials = [line for line in out.splitlines() if 'of dense (target 50.0%)' in line]
    assert trials, out[-2000:]


@pytest.mark.parametrize('absent,config', [('mmseg', 'retinanet_r18_tiny'),
                                           ('mmdet', 'pspnet_r18_tiny')])
def test_one_host_is_enough(absent, config):
    """mmdet and mmseg are extras: with one of them missing mmprune imports and prunes
    a model of the other (the missing one is made unimportable in a child process)."""
    code = f'''
import sys
sys.modules[{absent!r}] = None  # as if it were not installed: importing it fails
import mmprune
model, cfg = mmprune.build_model({tiny(config)!r})
result = mmprune.prune(model, cfg=cfg, pruning_ratio=0.5, input_shape=(64, 96))
assert 0.1 < result.flops_ratio < 0.9, result.flops_ratio
assert not any(k.startswith({absent + '.'!r}) for k in sys.modules)
print('pruned without', {absent!r})
'''
    proc = _run('-c', code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'pruned without {absent}' in proc.stdout


def test_console_script_exits_zero(tmp_path):
    """The console script's status is 0 on success (its command's summary is not the
    exit value), non-zero on a bad argument."""
    from mmprune.cli import main, run
    assert main(['configs', 'tiny']) == 0
    assert 'mmprune::tiny/pspnet_r18_tiny.py' in run(['configs', 'tiny'])
    proc = _run('-m', 'mmprune', 'configs', 'tiny', cwd=str(tmp_path))
    assert proc.returncode == 0 and 'mmprune::tiny' in proc.stdout, proc.stderr[-2000:]
