"""The ``target_flops`` search: the pruning ratio whose FLOPs are the target.

FLOPs are measured, not estimated: each trial prunes the model (``run``), counts its
FLOPs and restores it (``restore``) when it is not the one kept.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch.nn as nn
from mmengine.logging import print_log

from .depth import empties_its_container, put_back, remove_blocks, skipped_blocks
from .structure import apply_structure, snapshot, structure_between

#: relative tolerance on ``target_flops``
FLOPS_TOLERANCE = 0.02
#: relative tolerance on ``target_latency``: measured times move by a few per cent
#: between runs on a shared CPU
LATENCY_TOLERANCE = 0.05
#: ``remove_blocks='auto'`` keeps removed blocks only where the share of the latency they
#: take away is at least this times their share of the FLOPs. The width alone turns FLOPs
#: into time at 0.58-0.98 on the CPU speed models at 50 % FLOPs (docs/speed.md); the 12
#: removable blocks of Faster R-CNN-R50 on this CPU took 4 % of its time for 22 % of its
#: FLOPs (0.2), and removing them before the width bought nothing but a smaller model
BLOCK_MIN_EFFICIENCY = 0.5
#: ... judged in runs of blocks that carry this share of the FLOPs: the time one or two
#: blocks take is within the timing noise
BLOCK_JUDGED_AT = 0.1


def restore_point(model: nn.Module) -> Callable[[], None]:
    """A function that puts ``model`` back as it is now: structure, removed blocks,
    weights, no grads."""
    before = snapshot(model)
    modules = dict(model.named_modules())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore() -> None:
        # blocks removed since go back first (the modules themselves: removal keeps them)
        put_back(model, {n: modules[n] for n in skipped_blocks(model)
                         if n not in before['removed'] and n in modules})
        apply_structure(model, structure_between(snapshot(model), before), check_edits=False)
        model.load_state_dict(state)
        for p in model.parameters():
            p.grad = None
    return restore


def bracket(run: Callable[[float], int], restore: Callable[[], None], dense: int,
             target: float, cap: float, guess: float, start: float = 1.0,
             near: Optional[float] = None, tolerance: float = FLOPS_TOLERANCE):
    """Search the ratio whose FLOPs are ``target`` of ``dense``.

    ``start`` is the FLOPs fraction at ratio 0 (below 1 when refining a pruned
    model). With ``near``, the search stops at a trial above the target by at
    most ``near * target`` (a refinement takes it from there). FLOPs fall
    roughly as ``(1 - ratio) ** k``; each trial fits ``k`` through itself and
    the largest ratio still above the target (ratio 0 at first), and the
    estimate is kept inside the bracket of the trials so far.
    Returns ``(ratio, frac, met, pruned)``: when met, the model is left pruned
    at ``ratio``; otherwise ``ratio`` is the largest one tried whose FLOPs
    fraction ``frac`` is still above the target, and the model is left pruned
    at it when ``pruned`` (its trial was the last), else restored.
    """
    lo, f_lo, hi = 0.0, start, cap
    ratio = min(max(guess, 1e-3), cap)
    for _ in range(10):
        frac = run(ratio) / dense
        if abs(frac - target) <= tolerance * target:
            return ratio, frac, True, True
        base, f_base = lo, f_lo
        if frac > target:
            lo, f_lo = ratio, frac
        else:
            hi = ratio
        # FLOPs move in steps here (leave the rest to refinement), or the cap is reached
        if hi - lo < 5e-3 or lo >= cap or (
                near is not None and lo == ratio and frac - target <= near * target):
            if lo != ratio:
                restore()
            return lo, f_lo, False, lo == ratio and lo > 0
        restore()
        estimate = (lo + hi) / 2
        if 0 < frac < f_base and base < ratio < 1:
            k = math.log(frac / f_base) / math.log((1 - ratio) / (1 - base))
            estimate = 1 - (1 - base) * (target / f_base) ** (1 / k)
        if not lo < estimate < hi:
            estimate = (lo + hi) / 2 if hi < cap or frac <= target else cap
        ratio = min(estimate, cap)
    return lo, f_lo, False, False


def search_flops(run: Callable[..., int], restore: Callable[[], None], model: nn.Module,
                  dense: int, target: float, max_ratio: float,
                  rounded: bool = True, start: float = 1.0) -> Dict[str, Any]:
    """Prune ``model`` to ``target`` of the dense FLOPs, within :data:`FLOPS_TOLERANCE`.

    A uniform ratio moves FLOPs in steps when layers are narrow, so when no
    ratio lands within the tolerance, the model is pruned at the largest ratio
    above the target and the rest is removed by a small global-ranking step
    (with exact channel counts when rounded ones cannot land within it).
    ``start`` is the FLOPs fraction of the model before this prune (below 1 when blocks
    were removed first).
    """
    cap = min(max_ratio, 0.99)
    guess = 1 - math.sqrt(target / start)
    # a uniform ratio within 3x the tolerance above the target is left to the refinement
    ratio, frac, met, pruned = bracket(run, restore, dense, target, cap, guess, start,
                                        near=3 * FLOPS_TOLERANCE)
    exact_counts: Dict[str, Any] = {}
    if ratio >= cap and rounded:
        # rounded counts keep at least round_to channels per layer, a floor under the
        # FLOPs of a deep prune: search again with exact counts
        print_log(f'[mmprune] target_flops={target} is below what rounded channel counts '
                  f'reach ({frac:.1%} at ratio {cap:.3f}); searching with exact counts '
                  f'(round_to=None)', logger='current', level=logging.WARNING)
        if pruned:
            restore()
        exact_counts = dict(round_to=None)
        base_run = run

        def run(ratio: float, refine: bool = False, exact: bool = False) -> int:
            return base_run(ratio, refine=refine, exact=True)

        ratio, frac, met, pruned = bracket(run, restore, dense, target, cap, guess, start,
                                            near=3 * FLOPS_TOLERANCE)
    if met:
        return dict(pruning_ratio=ratio, **exact_counts)
    if ratio >= cap:
        raise ValueError(
            f'target_flops={target} is unreachable: at the largest allowed ratio {cap:.3f} '
            f'(max_pruning_ratio={max_ratio}) FLOPs are still {frac:.1%} of dense'
            + (' with exact channel counts' if rounded else '')
            + '; the layers kept whole (output layers, ignored_layers) set a floor. Ask for '
              'more FLOPs, or a higher max_pruning_ratio')
    if ratio > 0 and not pruned:
        run(ratio)
    back = restore_point(model)
    exact = False
    extra, frac2, met, pruned = bracket(lambda r: run(r, refine=True),
                                         back, dense, target,
                                         cap, (frac - target) / frac / 2, frac)
    if not met:  # rounded channel counts move FLOPs in steps too coarse for the target
        exact = True
        if pruned:
            back()
        extra, frac2, met, pruned = bracket(lambda r: run(r, refine=True, exact=True),
                                             back, dense,
                                             target, cap, (frac - target) / frac / 2, frac)
    if not met:  # the model keeps the largest refinement above the target
        final = frac2 if pruned or extra == 0 else run(extra, refine=True, exact=True) / dense
        print_log(f'[mmprune] target_flops={target} not met within {FLOPS_TOLERANCE:.0%}: '
                  f'{final:.1%} of the FLOPs before this prune', logger='current',
                  level=logging.WARNING)
    return dict(pruning_ratio=ratio, global_refine_ratio=extra, **exact_counts,
                **(dict(refine_round_to=None) if exact and not exact_counts else {}))


def confirmed(measure: Callable[[], float], target: float) -> float:
    """A latency reading (``measure()``), read again when it meets ``target`` within
    :data:`LATENCY_TOLERANCE` and then the mean of the two: on a 2-core VM the same pair
    of models read 0.504 and then 0.44 a few seconds apart (what waking PyTorch's OpenMP
    worker costs for each operator varies; docs/speed.md, "Where a target_latency prune
    lands"), and a search that stopped at its first lucky reading kept a model whose
    re-timing missed the target by 17 %."""
    frac = measure()
    if frac <= target * (1 + LATENCY_TOLERANCE):
        frac = (frac + measure()) / 2
    return frac


def blocks_to_latency(model: nn.Module, ranked: List[Any], measure: Callable[[], float],
                      target: float, flops: Optional[Callable[[], int]] = None
                      ) -> Tuple[List[Any], float]:
    """``remove_blocks='auto'``: remove the ``ranked`` blocks one at a time (least missed
    first), timing the model after each (``measure``), until its latency is ``target``
    within the tolerance; returns the blocks removed and the last reading. Removing a block
    removes operators, which the width cannot: on a GPU at batch 1 it was the only way to
    a speed-up (docs/speed.md, "On a GPU").

    With ``flops`` (the model's FLOPs now) the walk keeps only blocks that buy time. It
    judges the blocks in runs: once the blocks removed since the last judgement carry
    :data:`BLOCK_JUDGED_AT` of the FLOPs, the share of the latency they took away must be
    at least :data:`BLOCK_MIN_EFFICIENCY` times their share of the FLOPs (the latency at
    the start and at each judgement read twice); a run that fails is put back and the
    walk stops, leaving the rest to the width. Runs, not single
    blocks, because one block's time is within the timing noise; not the whole walk,
    because blocks that buy time would carry the ones after them that do not. A walk that
    meets the target keeps its blocks: they bought the time asked for. A block that is
    the last layer left in its container (:func:`mmprune.depth.empties_its_container`) is
    not removed: without that, MiT-B0 at 2x lost all eight transformer layers.
    """
    removed: List[Any] = []
    modules: Dict[str, nn.Module] = {}
    start = frac = confirmed(measure, target)
    if flops is not None and frac > target * (1 + LATENCY_TOLERANCE):
        start = frac = (frac + measure()) / 2  # every judgement is against it
        print_log(f'[mmprune] latency {start:.1%} before removing blocks (target '
                  f'{target:.1%})', logger='current', level=logging.INFO)
    readings = [(frac, flops() if flops is not None else 0)]  # after k blocks removed
    kept = 0  # blocks removed before the run being judged
    for block in ranked:
        if frac <= target * (1 + LATENCY_TOLERANCE):
            break
        if empties_its_container(model, block):
            print_log(f'[mmprune] {block.name} kept: the last layer of its stage',
                      logger='current', level=logging.INFO)
            continue
        modules.update(remove_blocks(model, [block]))
        removed.append(block)
        frac = confirmed(measure, target)
        readings.append((frac, flops() if flops is not None else 0))
        print_log(f'[mmprune] {len(removed)} block(s) removed ({block.name}): latency '
                  f'{frac:.1%} (target {target:.1%})', logger='current', level=logging.INFO)
        if flops is None or frac <= target * (1 + LATENCY_TOLERANCE):
            continue
        (frac0, flops_before), flops_now = readings[kept], readings[-1][1]
        saved = (flops_before - flops_now) / readings[0][1]
        if saved < BLOCK_JUDGED_AT:
            continue
        frac = (frac + measure()) / 2  # a judgement reads twice: one reading moves by a few %
        readings[-1] = (frac, flops_now)
        efficiency = (frac0 - frac) / start / saved
        judged = (f'blocks {[b.name for b in removed[kept:]]} took {(frac0 - frac) / start:.1%} '
                  f'of the latency away for {saved:.1%} of the FLOPs (efficiency '
                  f'{efficiency:.2f}')
        if efficiency >= BLOCK_MIN_EFFICIENCY:
            print_log(f'[mmprune] {judged}): kept', logger='current', level=logging.INFO)
            kept = len(removed)
            continue
        back = removed[kept:]
        put_back(model, {b.name: modules[b.name] for b in back})
        removed, frac = removed[:kept], frac0
        print_log(f'[mmprune] {judged}, below {BLOCK_MIN_EFFICIENCY}): put back; {kept} kept, '
                  f'the width does the rest', logger='current', level=logging.WARNING)
        break
    return removed, frac


def search_latency(run: Callable[[float], Any], restore: Callable[[], None],
                   measure: Callable[[], float], target: float, max_ratio: float,
                   start: float, dense_flops: Optional[int] = None,
                   of: str = 'the model before this prune') -> Dict[str, Any]:
    """Prune to ``target`` of the reference latency within :data:`LATENCY_TOLERANCE`:
    each trial prunes at a ratio (``run``, which returns the FLOPs) and times the model
    (``measure``: its latency over the reference's); ``start`` is that fraction before
    this prune (``of`` names what the latency is a fraction of). Time falls slower than
    FLOPs with the width (memory-bound layers shrink with it, not its square), so the
    first guess assumes ``(1 - ratio) ** 1.5``. When no ratio lands within the tolerance,
    the model keeps the largest ratio still above the target; when no trial reads below
    the target, it is unreachable (ValueError).

    A reading that meets the target is taken again and the trial is judged on the mean
    of the two (:func:`confirmed`). Trials whose FLOPs are equal pruned to the same channel
    counts (nearby ratios round alike) and are judged on the mean of all their readings: in
    a training run two such trials of a DeepLabV3+ read 47.1 % and 52.4 % of the dense
    latency, one on each side of the tolerance of a 50 % target.
    """
    cap = min(max_ratio, 0.99)
    flops: Dict[float, int] = {}  # by ratio tried
    by_structure: Dict[int, List[float]] = {}  # every reading, by the trial's FLOPs

    def latency(at_flops: int) -> float:  # one structure, one latency
        return sum(by_structure[at_flops]) / len(by_structure[at_flops])

    def timed(ratio: float) -> float:
        flops[ratio] = run(ratio)
        same = by_structure.setdefault(flops[ratio], [])
        same.append(confirmed(measure, target))
        frac = latency(flops[ratio])
        print_log(f'[mmprune] ratio {ratio:.4f}: latency {frac:.1%} of {of} '
                  f'(target {target:.1%})'
                  + (f', the mean of {len(same)} trials of this structure' if len(same) > 1
                     else ''), logger='current', level=logging.INFO)
        return frac

    ratio, frac, met, pruned = bracket(timed, restore, 1.0, target, cap,
                                        1 - (target / start) ** (1 / 1.5), start,
                                        tolerance=LATENCY_TOLERANCE)
    if not met:
        # no trial came below the target: the search stopped at (or a hair under) the cap
        if ratio >= cap or min(map(latency, by_structure)) > target:
            ratio = max(flops)
            frac, at = latency(flops[ratio]), flops[ratio]
            raise ValueError(
                f'target_latency={target} is unreachable: at ratio {ratio:.3f} (the largest '
                f'allowed is {cap:.3f}, max_pruning_ratio={max_ratio}) the latency is still '
                f'{frac:.1%} of {of}'
                + (f' with {at / dense_flops:.1%} of the dense FLOPs left: the rest is time '
                   f'the width does not shrink (per-operator overhead, post-processing)'
                   if at is not None and dense_flops else '')
                + '; remove (more) blocks (remove_blocks, which removes operators: \'auto\', '
                  'the default, keeps only those that buy time; a count, a fraction or names '
                  'remove them regardless), or ask for more latency')
        if ratio > 0 and not pruned:
            frac = timed(ratio)
        print_log(f'[mmprune] target_latency={target} not met within '
                  f'{LATENCY_TOLERANCE:.0%}: kept ratio {ratio:.4f} at {frac:.1%}',
                  logger='current', level=logging.WARNING)
    return dict(pruning_ratio=ratio)
