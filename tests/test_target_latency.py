"""target_latency: the width searched on measured time (the timer is faked where a test
checks the search, since timings on a shared CPU are not test material)."""
import copy
import logging
import math
import time

import pytest
import torch
from mmengine.logging import MMLogger

import mmprune
from mmprune.flops import count_flops_params
from mmprune.timing import LatencyRatio
from mmprune.tracing import make_batch

from conftest import tiny

SHAPE = (96, 128)


@pytest.fixture
def flops_as_time(monkeypatch):
    """The 'latency' of a model is its FLOPs to the power 0.75 (slower to fall than the
    FLOPs, as measured time is), over the reference's: deterministic."""
    def fake(self, model, runs=None):
        ref = count_flops_params(self.reference, self.batch)[0]
        now = count_flops_params(model, self.batch)[0]
        self.last = dict(reference=100.0, model=100.0 * (now / ref) ** 0.75)
        return (now / ref) ** 0.75
    monkeypatch.setattr(LatencyRatio, '__call__', fake)


@pytest.mark.parametrize('blocks', [0, 2])
def test_the_width_is_searched_until_the_measured_latency_is_the_target(flops_as_time, blocks):
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    result = mmprune.prune(model, cfg=cfg, input_shape=SHAPE, target_latency=0.6,
                           remove_blocks=blocks, round_to=None)
    assert abs(result.latency[1] / result.latency[0] - 0.6) <= 0.05 * 0.6
    assert result.options['latency_ratio'] == pytest.approx(result.latency[1] / 100, abs=1e-4)
    assert 0 < result.options['pruning_ratio'] < 1
    assert len(result.removed_blocks) == (blocks or 0)
    assert 'latency 100.0 ->' in result.summary()


def test_blocks_alone_may_meet_the_target(flops_as_time):
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    result = mmprune.prune(model, cfg=cfg, input_shape=SHAPE, target_latency=0.99,
                           remove_blocks=['backbone.layer4.1'])
    assert result.options['pruning_ratio'] == 0.0 and result.structure['layers'] == {}
    assert result.removed_blocks == ['backbone.layer4.1']


@pytest.mark.parametrize('target', [0.9, 0.4])
def test_auto_blocks_go_until_the_latency_is_met_then_the_width(flops_as_time, target):
    dense, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    model = copy.deepcopy(dense)
    result = mmprune.prune(model, cfg=cfg, input_shape=SHAPE, target_latency=target,
                           remove_blocks='auto', round_to=None)
    assert result.latency[1] / result.latency[0] <= target * 1.05
    removed = result.removed_blocks
    assert removed and result.options['remove_blocks'] == 'auto'
    if target == 0.9:  # blocks alone: the first that met the target stopped the walk
        assert result.options['pruning_ratio'] == 0.0
        # one block fewer was still too slow
        less = copy.deepcopy(dense)
        mmprune.prune(less, cfg=cfg, input_shape=SHAPE, pruning_ratio=0.0,
                      remove_blocks=removed[:-1] or None)
        ref = count_flops_params(dense, make_batch(dense, cfg, SHAPE))[0]
        now = count_flops_params(less, make_batch(less, cfg, SHAPE))[0]
        assert (now / ref) ** 0.75 > 0.9 * 1.05
    else:  # every removable block went but the last of layer1, and the width did the rest
        from mmprune.depth import find_blocks
        blocks = [b.name for b in find_blocks(dense, make_batch(dense, cfg, SHAPE))]
        assert {'backbone.layer1.0', 'backbone.layer1.1'} <= set(blocks)
        assert len(removed) == len(blocks) - 1 and len({
            'backbone.layer1.0', 'backbone.layer1.1'} & set(removed)) == 1
        assert result.options['pruning_ratio'] > 0


@pytest.fixture
def said():
    """What mmprune logs (``print_log`` to the current MMLogger) during the test."""
    logger, messages = MMLogger.get_current_instance(), []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


@pytest.fixture
def blocks_buy_nothing(monkeypatch):
    """The 'latency' follows the width of the convolutions the model still has (their
    output channels over the reference's, to the power 1.5): removing a block buys no
    time, as removing Faster R-CNN-R50's blocks bought almost none on a CPU."""
    def fake(self, model, runs=None):
        ref = {n: m.out_channels for n, m in self.reference.named_modules()
               if isinstance(m, torch.nn.Conv2d)}
        now = {n: m.out_channels for n, m in model.named_modules()
               if isinstance(m, torch.nn.Conv2d)}
        frac = (sum(now.values()) / sum(ref[n] for n in now)) ** 1.5
        self.last = dict(reference=100.0, model=100.0 * frac)
        return frac
    monkeypatch.setattr(LatencyRatio, '__call__', fake)


def test_auto_puts_back_blocks_that_buy_no_time(blocks_buy_nothing):
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    result = mmprune.prune(model, cfg=cfg, input_shape=SHAPE, target_latency=0.6,
                           remove_blocks='auto', round_to=None)
    from mmprune.depth import SkippedBlock
    assert result.removed_blocks == [] and not result.structure.get('removed')
    assert not any(isinstance(m, SkippedBlock) for m in model.modules())
    assert result.options['pruning_ratio'] > 0  # the width did the work
    assert abs(result.latency[1] / result.latency[0] - 0.6) <= 0.05 * 0.6


class _Res(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return x + self.conv(x)


@pytest.mark.parametrize('time_per_block, kept, target', [
    ([0.05] * 10, 5, 0.75),  # each block buys its FLOPs' share: the walk meets the target
    ([0.05, 0.05, 0.05, 0.05, 0.005, 0.005, 0.005, 0.005, 0.005, 0.005], 4, 0.75),
    ([0.002] * 10, 0, 0.75),  # none pays: all go back
    ([0.05, 0.05, 0.05, 0.05] + [0.0] * 6, 4, 0.75),  # stops short of the target
    ([0.04] * 10, 9, 0.5),  # all pay, none meets the target: the last layer stays
])
def test_auto_keeps_the_blocks_that_buy_time(time_per_block, kept, target, said):
    """Ten blocks of 5 % of the FLOPs each in one container: judged two at a time, and
    each judgement is logged."""
    from mmprune.depth import Block, SkippedBlock
    from mmprune.search import blocks_to_latency
    model = torch.nn.Sequential(*[_Res() for _ in range(10)])
    blocks = [Block(str(i), 'x', 0, '_Res', 6) for i in range(10)]

    def skipped():
        return [i for i, m in enumerate(model) if isinstance(m, SkippedBlock)]
    latency = lambda: 1 - sum(time_per_block[i] for i in skipped())  # noqa: E731
    removed, frac = blocks_to_latency(model, blocks, latency, target,
                                      flops=lambda: 100 - 5 * len(skipped()))
    assert [b.name for b in removed] == [str(i) for i in range(kept)] \
        and skipped() == list(range(kept))
    assert frac == pytest.approx(latency())
    assert len([m for m in said if m.endswith('): kept')]) == kept // 2


def test_auto_leaves_every_stage_a_layer(flops_as_time):
    """MiT's stages hold nothing but removable layers: 'auto' keeps one in each."""
    from test_depth import build
    model, cfg, shape = build('mit')
    result = mmprune.prune(model, cfg=cfg, input_shape=shape, target_latency=0.3,
                           remove_blocks='auto', round_to=None)
    stages = {n.rsplit('.', 1)[0] for n in result.removed_blocks}
    assert len(result.removed_blocks) == len(stages) == 4  # one of the two of each stage
    assert result.options['pruning_ratio'] > 0


def test_blocks_first_by_default(flops_as_time):
    """target_latency removes blocks that buy time first unless told otherwise
    (remove_blocks=0: the width alone, and a recorded 0 read again stays 0)."""
    assert mmprune.PruneOptions(target_latency=0.5).remove_blocks == 'auto'
    assert mmprune.PruneOptions(target_flops=0.5).remove_blocks is None
    width = mmprune.PruneOptions(target_latency=0.5, remove_blocks=0)
    assert width.remove_blocks == 0
    assert mmprune.PruneOptions(**width.recorded()).remove_blocks == 0
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    result = mmprune.prune(model, cfg=cfg, input_shape=SHAPE, target_latency=0.9,
                           round_to=None)
    assert result.removed_blocks and result.options['remove_blocks'] == 'auto'
    assert result.latency[1] / result.latency[0] <= 0.9 * 1.05
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    result = mmprune.prune(model, cfg=cfg, input_shape=SHAPE, target_latency=0.9,
                           remove_blocks=0, round_to=None)
    assert result.removed_blocks == [] and result.options['pruning_ratio'] > 0


def test_auto_blocks_need_a_latency_target():
    with pytest.raises(ValueError, match="remove_blocks='auto' .* give target_latency"):
        mmprune.PruneOptions(remove_blocks='auto', target_flops=0.5)
    from mmprune.cli import block_request
    assert block_request(['auto']) == 'auto' and block_request(['4']) == 4


def test_a_real_timing_reports_both_latencies(monkeypatch):
    monkeypatch.setattr(LatencyRatio, 'min_seconds', 0.0)  # latency_runs alone
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    result = mmprune.prune(model, cfg=cfg, input_shape=SHAPE, target_latency=0.7,
                           latency_runs=2)
    before, after = result.latency
    assert before > 0 and after > 0 and result.options['latency_ratio'] > 0


@pytest.mark.parametrize('options, error', [
    (dict(target_latency=0.5, target_flops=0.5), 'not both'),
    (dict(target_latency=1.5), 'target_latency must be a fraction'),
    (dict(target_latency=0.5, latency_runs=0), 'latency_runs must be a positive int'),
])
def test_bad_latency_options(options, error):
    with pytest.raises(ValueError, match=error):
        mmprune.PruneOptions(**options)


@pytest.mark.parametrize('blocks', [1, 'auto', None])  # None: 'auto', the default
def test_the_hook_ramps_the_latency_over_its_steps(flops_as_time, tmp_path, monkeypatch,
                                                    blocks):
    references = []
    fake = LatencyRatio.__call__

    def seen(self, model, runs=None):  # the FLOPs of what each step is timed beside
        references.append(count_flops_params(self.reference, self.batch)[0])
        return fake(self, model, runs)
    monkeypatch.setattr(LatencyRatio, '__call__', seen)
    from conftest import make_coco
    from mmprune.hooks import PruningHook
    from test_hooks import DET_CFG, _coco_opts, iter_runner
    make_coco(str(tmp_path / 'coco'), n=4)
    opts = dict(o.split('=', 1) for o in _coco_opts(str(tmp_path / 'coco'))[1:])
    runner = iter_runner(DET_CFG, tmp_path / 'run', opts, [dict(
        type='mmprune.PruningHook', by_epoch=False, target_latency=0.6, round_to=None,
        remove_blocks=blocks, begin=0, end=2)], max_iters=3)
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, PruningHook))
    assert hook.done == [0, 1] and len(hook.structure['removed']) >= 1
    if blocks == 1:
        assert len(hook.structure['removed']) == 1
    # each step is timed beside the dense copy: one tolerance, not one per step
    assert abs(hook.latency_fraction - 0.6) <= 0.05 * 0.6
    assert references == [hook.dense['flops']] * len(references) and len(references) > 2
    assert hook.latency_reference is None  # dropped after the last step
    # the fake timer's latency is (FLOPs ratio) ** 0.75: the hook's record agrees
    flops_ratio = hook.current['flops'] / hook.dense['flops']
    assert hook.latency_fraction == pytest.approx(flops_ratio ** 0.75, rel=1e-3)


def test_a_hook_resumed_mid_ramp_times_beside_the_model_it_starts_from():
    from mmprune.hooks import PruningHook
    hook = PruningHook(target_latency=0.5, begin=0, end=4, interval=1, ramp='linear')
    hook.latency_fraction = 0.8  # restored from a checkpoint; no dense copy
    assert hook.latency_reference is None
    assert hook.step_kwargs(2)['target_latency'] == pytest.approx((1 - 0.5 * 0.75) / 0.8)
    hook.latency_reference = object()  # a fresh run holds the dense copy
    assert hook.step_kwargs(2)['target_latency'] == pytest.approx(1 - 0.5 * 0.75)


def test_the_candidate_is_timed_with_its_in_place_activations():
    """The search times the model inside tracing_state, which makes activations
    out-of-place (slower); the timer puts them back for the timed forwards only."""
    import copy

    import torch

    from mmprune.tracing import tracing_state
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(inplace=True))
    seen = []

    def forward(m, batch):
        seen.append(m[1].inplace)
        return m(batch['inputs'])

    meter = LatencyRatio(copy.deepcopy(model), dict(inputs=torch.randn(1, 3, 8, 8)), 1,
                         forward=forward)
    with tracing_state(model):
        assert model[1].inplace is False
        meter(model)
        assert model[1].inplace is False  # as tracing_state left it
    assert model[1].inplace is True
    assert seen and all(seen)


def test_a_measurement_lasts_its_runs_and_its_minimum_time():
    from mmprune.timing import interleaved_runs
    calls = []
    fns = dict(a=lambda: calls.append('a'), b=lambda: calls.append('b'))
    assert [len(v) for v in interleaved_runs(fns, 3).values()] == [3, 3]
    slow = dict(a=lambda: time.sleep(0.002), b=lambda: time.sleep(0.002))
    times = interleaved_runs(slow, 3, min_seconds=0.1)
    assert len(times['a']) > 3 and sum(times['a']) + sum(times['b']) >= 100
    assert len(interleaved_runs(slow, 3, min_seconds=100, max_runs=5)['a']) == 5


def test_the_ratio_ignores_rounds_slowed_by_other_work():
    """Bursts of other work slow one model of a round or the other; the quieter half of
    the rounds carries the ratio (0.6 here) whichever model they hit."""
    import statistics

    from mmprune.timing import quiet_rounds
    model = [60.0] * 20
    reference = [100.0] * 20
    for k in range(11):  # a burst over 11 of 20 rounds, hitting the candidate
        model[k] += 80 + k
    for k in (11, 12):  # and two hitting the reference
        reference[k] += 50
    assert statistics.median(m / r for m, r in zip(model, reference)) != 0.6
    quiet = quiet_rounds(model, reference)
    assert len(quiet) == 10
    assert statistics.median(m / r for m, r in quiet) == pytest.approx(0.6)


def test_a_reading_within_the_tolerance_is_taken_again():
    """A lucky first reading (the target itself) does not end the search: the trial is
    judged on the mean of two readings, so the kept model's true latency is near the
    target, not 26 % above it as at the first trial."""
    from mmprune.search import search_latency
    state = dict(ratio=0.0)
    readings = []

    def run(ratio):
        state['ratio'] = ratio
        return int(10 ** 6 * (1 - ratio) ** 2)

    def measure():  # true latency 1 - ratio; the first reading of each ratio is lucky
        first = state['ratio'] not in readings
        readings.append(state['ratio'])
        return 0.5 if first else 1 - state['ratio']

    found = search_latency(run, lambda: state.update(ratio=0.0), measure, 0.5, 0.99, 1.0)
    assert len(readings) > 2  # the first trial was not accepted on its lucky reading
    assert abs((1 - found['pruning_ratio']) - 0.5) <= 0.1 * 0.5
    assert readings[0] == pytest.approx(1 - 0.5 ** (1 / 1.5))  # true latency 0.63 there


def test_trials_of_one_structure_are_judged_on_all_their_readings(said):
    """Nearby ratios round to the same channel counts (equal FLOPs). Here the structure
    at ratios 0.5-0.6 takes 50 % of the latency, but its trials read 58 % and then 42 %
    (the mean of 40 and 44 %), each outside the 5 % of a 50 % target, one on each side
    (as two trials of one DeepLabV3+ structure read in a training run): judged one trial
    at a time the search finds no ratio within the tolerance; on the mean of the
    structure's readings it meets the target there."""
    from mmprune.search import search_latency
    state = dict(ratio=0.0, noisy=0)

    def run(ratio):
        state['ratio'] = ratio
        return int(10 ** 6 * (1 - math.floor(ratio * 10) / 10) ** 2)

    def measure():
        step = math.floor(state['ratio'] * 10)
        if step != 5:
            return 1 - step / 10
        state['noisy'] += 1
        return (0.58, 0.40, 0.44)[(state['noisy'] - 1) % 3]

    found = search_latency(run, lambda: state.update(ratio=0.0), measure, 0.5, 0.99, 1.0)
    assert math.floor(found['pruning_ratio'] * 10) == 5
    assert not [m for m in said if 'not met' in m]
    assert [m for m in said if 'latency 50.0% of the model before this prune (target 50.0%), '
            'the mean of 2 trials of this structure' in m]


def test_an_unreachable_target_says_what_the_width_leaves():
    from mmprune.search import search_latency
    state = dict(ratio=0.0)

    def run(ratio):
        state['ratio'] = ratio
        return int(1000 * (1 - ratio) ** 2)

    # time hardly falls with the width (a launch-bound GPU at batch 1)
    with pytest.raises(ValueError, match=r'still 9\d\.\d% .* with 0\.0% of the dense FLOPs '
                                         r'left.*remove_blocks'):
        search_latency(run, lambda: state.update(ratio=0.0),
                       lambda: 1 - 0.05 * state['ratio'], 0.5, 0.99, 1.0, dense_flops=1000)


def test_a_search_that_stops_a_hair_under_the_cap_is_unreachable_too():
    """A launch-bound GPU read 85.7 % at ratio 0.986 for a target of 66.7 %: the bracket
    stopped there (0.004 under the cap) and the search kept a model with 0.2 % of its
    FLOPs. No trial read below the target, so the target is unreachable."""
    from mmprune.search import search_latency
    state = dict(ratio=0.0)

    def run(ratio):
        state['ratio'] = ratio
        return int(10 ** 6 * (1 - ratio) ** 2)

    # the unpruned model read 101 % of its copy, as there: the fit's next ratio is 0.986
    with pytest.raises(ValueError, match=r'unreachable: at ratio 0\.98\d .* still 9\d\.\d%'):
        search_latency(run, lambda: state.update(ratio=0.0),
                       lambda: 1 - 0.07 * state['ratio'], 0.667, 0.99, 1.01,
                       dense_flops=10 ** 6)
