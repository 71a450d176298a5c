"""Short runs of benchmarks/channels.py and benchmarks/speed.py (the table and JSON
they write; the timings themselves are not checked)."""
import json
import os
import re
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

import channels  # noqa: E402
import speed  # noqa: E402


def test_channels_marks_prime_block_counts(tmp_path, capsys):
    out = tmp_path / 'channels.json'
    assert channels.main(['--sizes', '8', '--counts', '96', '112', '8', '--runs', '1',
                          '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    # 104 and 112 make 7 blocks of 16 (marked P); 96 makes 6
    assert re.search(r'\b96:\d+ ', printed) and re.search(r'\b104:\d+P ', printed)
    assert re.search(r'\b112:\d+P$', printed, re.M)
    record = json.loads(out.read_text())
    assert set(record['records'][0]['gmacs']) == {'96', '104', '112'}
    assert '| 8x8 |' in record['table']


def test_speed_fast_counts_variants(tmp_path, capsys):
    import mmprune.pruner as pruner
    out = tmp_path / 'speed.json'
    assert speed.main(['--models', os.path.join(ROOT, 'configs/tiny/retinanet_r18_tiny.py'),
                       '--targets', '0.5', '--shape', '64', '96', '--runs', '1', '--no-onnx',
                       '--fast-counts', 'on', 'off', '--out', str(out)]) == 0
    assert pruner.FAST_COUNTS is True  # the benchmark put the default back
    record = json.loads(out.read_text())['records'][0]
    assert set(record['pruned']) == {'0.5', '0.5 fast-off'}
    assert record['pruned']['0.5']['fast_counts'] == 'on'
    assert set(record['eager_cpu_ms']) == {'dense', '0.5', '0.5 fast-off'}
    assert '| retinanet_r18_tiny | 0.5 fast-off |' in capsys.readouterr().out
