"""A short seeded run of benchmarks/fuzz.py: random options end in a valid model or in an
error that left the model exactly as it was."""
import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

import fuzz  # noqa: E402

FAMILIES = ('configs/tiny/retinanet_r18_tiny.py', 'configs/tiny/pspnet_r18_tiny.py',
            'configs/tiny/mask_rcnn_r18_tiny.py')


def test_fuzz_cases_end_valid_or_unchanged():
    records = fuzz.fuzz(12, seed=3, families=FAMILIES, shape=(64, 96), log=lambda *a: None)
    outcomes = [r['outcome'] for r in records]
    bad = [r for r in records if r['outcome'] not in ('ok', 'error')]
    assert not bad, bad
    assert outcomes.count('ok') >= 4 and 'error' in outcomes, outcomes  # both paths exercised
    assert fuzz.summary(records).splitlines()[-1].startswith('| all | 12 |')


def test_fuzz_detects_an_error_that_changes_the_model():
    """The harness itself: an exception after the model changed is reported as such."""
    import torch
    template = fuzz.Template(os.path.join(ROOT, FAMILIES[0]), (64, 96))
    model = template.model
    state, before = fuzz._state(model), __import__('mmprune').structure.snapshot(model)
    assert fuzz.unchanged(model, state, before)
    with torch.no_grad():
        next(model.parameters()).add_(1)
    assert not fuzz.unchanged(model, state, before)
