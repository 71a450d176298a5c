"""Short runs of benchmarks/channels.py, speed.py, allocation.py and stages.py (the
tables and JSON they write; the timings themselves are not checked)."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

import allocation  # noqa: E402
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


def test_speed_variants(tmp_path, capsys):
    out = tmp_path / 'speed.json'
    assert speed.main(['--models', os.path.join(ROOT, 'configs/tiny/retinanet_r18_tiny.py'),
                       '--targets', '0.5', '--shape', '64', '96', '--runs', '1', '--no-onnx',
                       '--fast-counts', 'on', 'off', '--allocation', 'uniform', 'latency',
                       '--malloc', 'default',
                       '--out', str(out)]) == 0
    record = json.loads(out.read_text())['records'][0]
    variants = {'0.5', '0.5 fast-off', '0.5 latency', '0.5 fast-off latency'}
    assert set(record['pruned']) == variants
    assert record['pruned']['0.5']['fast_counts'] == 'on'
    assert record['pruned']['0.5 latency']['allocation'] == 'latency'
    assert record['pruned']['0.5']['allocation'] == 'uniform'
    assert set(record['eager_cpu_ms']) == {'dense'} | variants
    printed = capsys.readouterr().out
    assert '| retinanet_r18_tiny | 0.5 fast-off |' in printed
    assert '| retinanet_r18_tiny | 0.5 latency |' in printed


MMAPPED = """
import ctypes, sys, torch
sys.path.insert(0, {bench!r})
import speed
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(f, ctypes.c_size_t) for f in ('arena ordblks smblks hblks hblkhd usmblks '
                                               'fsmblks uordblks fordblks keepcost').split()]
libc = ctypes.CDLL('libc.so.6')
libc.mallinfo2.restype = Info
if {steady}:
    assert speed.steady_malloc()
before = libc.mallinfo2().hblkhd  # bytes in mapped blocks
t = torch.ones(16 * 2 ** 20)  # 64 MiB
print(libc.mallinfo2().hblkhd - before)
"""


def test_steady_malloc_serves_large_tensors_from_the_heap():
    """Without it glibc maps a 64 MiB tensor (fresh pages each time); with it, not."""
    def mmapped(steady: bool) -> int:
        code = MMAPPED.format(bench=os.path.join(ROOT, 'benchmarks'), steady=steady)
        done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.split()[-1])

    assert mmapped(False) >= 64 * 2 ** 20
    assert mmapped(True) == 0


def test_stages_table_sums_layers_by_part(tmp_path, capsys):
    import stages
    out = tmp_path / 'stages.json'
    assert stages.main([os.path.join(ROOT, 'configs/tiny/retinanet_r18_tiny.py'), '--shape',
                        '64', '96', '--rounds', '1', '--depth', '1', '--malloc', 'default',
                        '--ops', '5',
                        '--out', str(out)]) == 0
    record = json.loads(out.read_text())['records'][0]
    parts = {r['part']: r for r in record['parts']}
    assert {'backbone', 'neck', 'bbox_head'} <= set(parts)
    assert 0.3 < record['flops_ratio'] < 0.7
    # the parts' FLOPs ratios bracket the model's; the head's output layers keep some
    ratios = [r['flops_ratio'] for r in parts.values() if r['dense_gmacs'] > 0]
    assert min(ratios) <= record['flops_ratio'] <= max(ratios)
    assert abs(sum(r['dense_ms'] for r in parts.values()) - record['dense_layers_ms']) < 0.1
    assert record['hooks_left'] == 0
    assert len(record['ops']) == 5  # pruning adds no operators (no reshapes or copies)
    assert all(o['dense_calls'] == o['pruned_calls'] > 0 for o in record['ops'])
    printed = capsys.readouterr().out
    assert '| backbone |' in printed and '| aten::' in printed


def test_fused_attention_same_output_no_weights_then_restored():
    import torch
    from torch.profiler import profile

    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(32, 2).eval()
    q, kv = torch.randn(64, 1, 32), torch.randn(16, 1, 32)  # fewer keys: SegFormer's reduction
    real = torch.nn.MultiheadAttention.forward
    with torch.no_grad():
        out, weights = attn(query=q, key=kv, value=kv)  # as mmseg's attention calls it
        with speed.fused_attention(), profile() as prof:
            fused, no_weights = attn(query=q, key=kv, value=kv)
    assert weights.shape == (1, 64, 16) and no_weights is None
    torch.testing.assert_close(fused, out)
    ops = {e.key for e in prof.key_averages()}
    assert 'aten::scaled_dot_product_attention' in ops and 'aten::_softmax' not in ops
    assert torch.nn.MultiheadAttention.forward is real


def test_allocation_round_tos_over_seeds(tmp_path, capsys):
    out = tmp_path / 'allocation.json'
    assert allocation.main(['--models', os.path.join(ROOT, 'configs/tiny/retinanet_r18_tiny.py'),
                            '--shape', '64', '96', '--reps', '1', '--runs', '1',
                            '--allocations', 'uniform', '--round-tos', '8', '16',
                            '--seeds', '0', '1', '--malloc', 'default', '--out', str(out)]) == 0
    records = json.loads(out.read_text())['records']
    assert [r['seed'] for r in records] == [0, 1]
    for r in records:
        assert set(r['variants']) == {'uniform', 'uniform rt16'}
        assert r['variants']['uniform rt16']['kwargs'] == {'round_to': 16}
    # different inits prune to different structures (the reason for --seeds)
    assert records[0]['variants']['uniform']['flops_ratio'] \
        != records[1]['variants']['uniform']['flops_ratio']
    printed = capsys.readouterr().out
    assert 'retinanet_r18_tiny.py seed 1 | uniform rt16 |' in printed
    assert re.search(r'retinanet_r18_tiny\.py \| uniform rt16 \| 2 \| [\d.]+ \|', printed)


def test_roi_align_kernels_agree(capsys):
    import roi_align
    assert roi_align.main(['--rois', '20', '--channels', '8', '--runs', '1']) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith('| 8 |')]
    assert rows and all(r.endswith('| 0.0e+00 |') for r in rows)  # same values


@pytest.fixture
def flops_as_time(monkeypatch):
    """The searches' latency readings are (FLOPs ratio) ** 0.75: deterministic, so that a
    busy CPU does not decide which rows exist (the final timing round stays real)."""
    from mmprune.flops import count_flops_params
    from mmprune.timing import LatencyRatio

    def fake(self, model, runs=None):
        ref = count_flops_params(self.reference, self.batch)[0]
        self.last = dict(reference=1.0, model=1.0)
        return (count_flops_params(model, self.batch)[0] / ref) ** 0.75
    monkeypatch.setattr(LatencyRatio, '__call__', fake)


def test_depth_width_both_rows(tmp_path, flops_as_time):
    import depth
    out = tmp_path / 'depth.json'
    assert depth.main(['--models', os.path.join(ROOT, 'configs/tiny/retinanet_r18_tiny.py'),
                       '--speedups', '1.2', '--shape', '64', '64', '--runs', '1',
                       '--malloc', 'default', '--out', str(out)]) == 0
    record = json.loads(out.read_text())
    rows = record['records'][0]['variants']
    assert set(rows) == {'1.2x width', '1.2x depth', '1.2x both'}
    assert rows['1.2x depth']['blocks'] >= 1 and 'pruning_ratio' not in rows['1.2x depth']
    assert rows['1.2x both']['blocks'] >= 1
    assert all(0 < r['flops_frac'] <= 1 and r['speedup'] > 0 for r in rows.values())
    assert '| retinanet_r18_tiny | 1.2x | depth |' in record['table']


def test_depth_auto_rows(tmp_path, flops_as_time):
    import depth
    out = tmp_path / 'depth.json'
    assert depth.main(['--models', os.path.join(ROOT, 'configs/tiny/retinanet_r18_tiny.py'),
                       '--speedups', '1.2', '--shape', '64', '64', '--runs', '1',
                       '--modes', 'auto', '--malloc', 'default', '--out', str(out)]) == 0
    row = json.loads(out.read_text())['records'][0]['variants']['1.2x auto']
    assert row['blocks'] >= 1 and row['search_latency'] <= 1 / 1.2 * 1.05
    assert 0 < row['flops_frac'] < 1


def test_depth_flops_block_share_rows(tmp_path):
    import depth
    out = tmp_path / 'depth.json'
    assert depth.main(['--models', os.path.join(ROOT, 'configs/tiny/retinanet_r18_tiny.py'),
                       '--modes', '--speedups', '--flops', '0.6', '--block-shares', '0', '1',
                       '--shape', '64', '64', '--runs', '1', '--malloc', 'default',
                       '--out', str(out)]) == 0
    record = json.loads(out.read_text())
    rows = record['records'][0]['variants']
    assert set(rows) == {'0.6F 0b', '0.6F 1b'}
    width, blocks = rows['0.6F 0b'], rows['0.6F 1b']
    assert width['blocks'] == 0 and width['pruning_ratio'] > 0
    assert blocks['blocks'] >= 1  # every removable block of the tiny ResNet-18
    assert abs(width['flops_frac'] - 0.6) < 0.03
    assert blocks['flops_frac'] < 0.6 * 1.03  # blocks first; the width only if above
    assert '| retinanet_r18_tiny | 60% FLOPs | 100% of blocks + width |' in record['table']


def test_landing_rows(tmp_path, monkeypatch):
    import landing

    from mmprune.timing import LatencyRatio
    monkeypatch.setattr(LatencyRatio, 'min_seconds', 0.0)
    out = tmp_path / 'landing.json'
    assert landing.main([os.path.join(ROOT, 'configs/tiny/retinanet_r18_tiny.py'),
                         '--shape', '64', '64', '--targets', '0.8', '--repeats', '2',
                         '--runs', '2', '--malloc', 'default', '--out', str(out)]) == 0
    record = json.loads(out.read_text())
    row, = record['records']
    assert row['target'] == 0.8 and 0 < row['search'] and len(row['retimed']) == 2
    assert all(r['ratio'] > 0 and r['dense_ms'] > 0 for r in row['retimed'])
    assert 0 <= row['within'] <= 2 and 0 < row['flops'] <= 1
    assert record['table'].splitlines()[2].startswith('| 0.800 | 0 |')


def test_threads_rows(tmp_path):
    import threads
    out = tmp_path / 'threads.json'
    assert threads.main([os.path.join(ROOT, 'configs/tiny/retinanet_r18_tiny.py'),
                         '--shape', '64', '64', '--policies', 'default', 'PASSIVE',
                         '--threads', '1', '--repeats', '2', '--runs', '1',
                         '--malloc', 'default', '--out', str(out)]) == 0
    record = json.loads(out.read_text())
    assert [(r['policy'], r['threads']) for r in record['records']] == [
        ('default', 1), ('PASSIVE', 1)]  # each from its own process, as asked
    assert all(len(r['repeats']) == 2 and r['repeats'][0]['ratio'] > 0
               for r in record['records'])
    assert record['table'].splitlines()[3].startswith('| PASSIVE | 1 |')
