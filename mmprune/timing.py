"""Wall-clock timing of model forwards, the way the tools and benchmarks measure it.

Latency on a shared, 2-core CPU moves with whatever else runs, so models are
compared by timing them interleaved in one process (:func:`interleaved_ms`:
run k of every model before run k+1 of any), after warm-up, as medians, with
glibc's allocator made to reuse its pages (:func:`steady_malloc`). Timing is
always optional: ``runs=0`` (``--latency-runs 0`` in the commands) skips it and
the tables print ``-``.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

#: glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def steady_malloc() -> bool:
    """Make glibc malloc keep freed memory and serve every size from its heap
    (``M_MMAP_MAX=0``, ``M_TRIM_THRESHOLD`` at 2 GiB), like jemalloc or tcmalloc.

    By default glibc gives blocks over its mmap threshold (128 KiB, rising
    to at most 32 MiB after such blocks are freed) fresh pages from the
    kernel, which the forward then faults in and zeroes, every call, and it
    trims the heap when its top is freed. How much of that a forward pays
    depends on the tensors' sizes and on what the process ran before: a
    dense DeepLabV3+-R50 at 512x512 took 2.4 s as the first model of a
    process and 2.0 s as the fifth (after RetinaNet, Faster / Mask R-CNN and
    PSPNet), while the pruned one took 1.09 s in both, so its efficiency
    read 1.10 or 0.91 by the order of the models (docs/speed.md, "Timing method").
    With this the forwards reuse the heap's pages and the timing measures
    the layers. It holds for the rest of the process (its memory stays at its
    peak): the benchmarks, the tools' latency columns and :class:`LatencyRatio`
    (``target_latency``) call it, nothing else in the library does. Without it a
    MobileNetV2 RetinaNet at 288x384 took 51-63 ms a forward and varied twice as much,
    with it 30-34 ms. Returns False where it cannot apply (not glibc).
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def interleaved_ms(fns: Dict[str, Callable], runs: int, sync: Optional[Callable] = None) -> dict:
    """Median ms per callable, timing run k of each before run k+1 of any (order
    rotated, two warm-up rounds), so that load on the machine hits all alike.
    ``runs <= 0`` times nothing and gives ``None`` for each."""
    if runs <= 0:
        return {n: None for n in fns}
    return {n: statistics.median(v) for n, v in interleaved_runs(fns, runs, sync).items()}


def interleaved_runs(fns: Dict[str, Callable], runs: int, sync: Optional[Callable] = None,
                     min_seconds: float = 0.0, max_runs: int = 200) -> Dict[str, List[float]]:
    """The ms of every timed run of each callable, run k of each in round k (see
    :func:`interleaved_ms`): entry k of two lists were timed side by side. Rounds go on
    past ``runs`` until the timed ones took ``min_seconds`` (at most ``max_runs``), as
    ``torch.utils.benchmark``'s ``blocked_autorange`` does: fast models get more runs."""
    names = list(fns)
    times: Dict[str, List[float]] = {n: [] for n in names}
    i, spent = 0, 0.0
    while i < runs + 2 or (spent < min_seconds * 1000 and i < max_runs + 2):
        order = names[i % len(names):] + names[:i % len(names)]
        for n in order:
            if sync:
                sync()
            t0 = time.perf_counter()
            fns[n]()
            if sync:
                sync()
            if i >= 2:
                times[n].append((time.perf_counter() - t0) * 1000)
                spent += times[n][-1]
        i += 1
    return times


def median_ms(fn: Callable, runs: int, sync: Optional[Callable] = None) -> Optional[float]:
    """Median wall time of ``fn()`` in ms over ``runs`` calls, after two warm-up
    calls; ``None`` when ``runs <= 0``."""
    return interleaved_ms({'fn': fn}, runs, sync)['fn']


def device_sync(device) -> Optional[Callable]:
    """What makes a timer wait for ``device``'s queued work (None on the CPU)."""
    return torch.cuda.synchronize if torch.device(device).type == 'cuda' else None


def forward_ms(model: torch.nn.Module, batch: dict, runs: int, device=None,
               forward: Optional[Callable] = None) -> Optional[float]:
    """Median wall time of ``forward(model, batch)`` (by default the inference
    forward, :func:`mmprune.tracing.inference_forward`) at the batch's size, in ms,
    on ``device`` (default: where the model's parameters are; it is moved back
    afterwards), with glibc malloc reusing its pages. ``None`` when ``runs <= 0``."""
    if runs <= 0:
        return None
    if forward is None:
        from .tracing import inference_forward as forward
    home = next(model.parameters(), torch.empty(0)).device
    device = torch.device(device) if device is not None else home
    steady_malloc()
    model = model.to(device).eval()
    b = dict(inputs=batch['inputs'].to(device), data_samples=batch['data_samples'])
    with torch.no_grad():
        ms = median_ms(lambda: forward(model, b), runs, device_sync(device))
    model.to(home)
    return ms


def quiet_rounds(a: List[float], b: List[float]) -> List[Tuple[float, float]]:
    """The pairs ``(a[k], b[k])`` of the quieter half of the rounds (the smaller sums).

    Other work on the machine only adds time, and comes in bursts: a training run's
    dataloader workers filling their queues while a pruning step times its candidates
    (an mmseg run prunes between iterations) slowed one model of a round or the other,
    and the median ratio over all rounds read 107.5 % where the medians read 76.8 %.
    Keeping the rounds with the least total time drops those whichever model they hit,
    without favouring either."""
    pairs = sorted(zip(a, b), key=lambda p: p[0] + p[1])
    return pairs[:max(1, (len(pairs) + 1) // 2)]


class LatencyRatio:
    """Measured latency of a model relative to a reference copy, timed interleaved.

    ``target_latency`` prunes to a fraction of the latency of the model as it was
    before the prune: a deep copy of it (``reference``) is timed beside each candidate,
    run for run (:func:`interleaved_ms`), so that load on the machine and clock drift
    hit both alike, on the device and at the input size of ``batch``.

    The candidate is timed as it will run once pruning is over: the search times it
    inside :func:`mmprune.tracing.tracing_state`, which turns in-place activations
    out-of-place, and that alone made an unpruned MobileNetV2 RetinaNet time 1.23x its
    own copy (the search then pruned too far). The layers in-place in the reference
    are in-place in the candidate while it is timed.

    The ratio is the median of the per-round ratios (run k of the candidate over run k
    of the reference, timed side by side) over the quieter half of the rounds
    (:func:`quiet_rounds`), not the ratio of the medians: on a 2-core CPU ten rounds of
    a MobileNetV2 RetinaNet (288x384) against its own copy spread 1.6 % (standard
    deviation over ten repeats) as per-round ratios and 4.5 % as a ratio of medians.
    Creating one calls :func:`steady_malloc`, as every latency mmprune reports does.

    Each measurement runs at least ``runs`` rounds and at least :attr:`min_seconds` of
    timed forwards: a fast model gets more rounds, whose spread matters more near the
    time no pruning removes (the post-processing of a small detector).
    """

    #: seconds of timed forwards (both models) a measurement lasts at least
    min_seconds = 2.0

    def __init__(self, reference: torch.nn.Module, batch: dict, runs: int,
                 forward: Optional[Callable] = None) -> None:
        if forward is None:
            from .tracing import inference_forward as forward
        self.reference, self.batch, self.runs, self.forward = reference, batch, runs, forward
        device = next(reference.parameters(), torch.empty(0)).device
        self.sync = device_sync(device)
        self.last: Dict[str, float] = {}
        steady_malloc()
        self.inplace = [n for n, m in reference.named_modules()
                        if getattr(m, 'inplace', None) is True]

    def __call__(self, model: torch.nn.Module, runs: Optional[int] = None) -> float:
        """``model``'s time over the reference's: the median per-round ratio of the
        quieter half of the rounds (both in eval mode, no grad); :attr:`last` holds the
        two models' median ms over those rounds."""
        modes = {m: m.training for m in model.modules()}
        named = dict(model.named_modules())
        flipped = [named[n] for n in self.inplace
                   if getattr(named.get(n), 'inplace', None) is False]
        model.eval()
        self.reference.eval()
        try:
            for m in flipped:
                m.inplace = True
            with torch.no_grad():
                times = interleaved_runs({
                    'reference': lambda: self.forward(self.reference, self.batch),
                    'model': lambda: self.forward(model, self.batch)},
                    runs or self.runs, self.sync,
                    self.min_seconds * (runs or self.runs) / self.runs)
        finally:
            for m, mode in modes.items():
                m.training = mode
            for m in flipped:
                m.inplace = False
        quiet = quiet_rounds(times['model'], times['reference'])
        self.last = dict(model=statistics.median(m for m, _ in quiet),
                         reference=statistics.median(r for _, r in quiet))
        return statistics.median(m / r for m, r in quiet)
