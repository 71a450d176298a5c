"""The channel-count policy: how many channels a pruned layer keeps under ``round_to``.

torch-pruning rounds the kept count down and ignores channel groups, which can remove
every channel of a narrow layer or of a GroupNorm group. :class:`ChannelCounts` keeps a
multiple of ``round_to`` near the count asked for (below it under global ranking, where
small per-layer counts would otherwise round to nothing), never below one multiple;
layers narrower than two multiples keep the exact count. Which multiple is chosen for
speed (``fast``), as measured on CPU:

* oneDNN's convolutions on AVX-512 CPUs split output channels into blocks of 16 and
  block those again by a divisor of their number; 3x3 convolutions at 64x64 and 32x32
  ran about 25 % slower per FLOP at prime block counts (7 % at 128x128) and fastest at
  multiples of 32 (``benchmarks/channels.py``, docs/speed.md, "Channel counts"), and
  the five CNNs of ``benchmarks/speed.py`` ran 0.08-0.16 more efficient at 50 % FLOPs
  (SegFormer-B0 0.02) with 2 threads on such a CPU. So rounded counts are chosen, among
  the nearest multiple of ``round_to`` and those within 1/8 of the count asked for,
  first to avoid a prime number (>= 7) of 16-channel blocks, then to be a multiple of
  2 x or 4 x ``round_to``, then nearest.
* ``fast_from``: only for counts from this many channels. Without it, MobileNetV2's
  64-channel FPN neck kept 48 instead of 40 channels at 1/4 scale, and the FLOPs search
  took the difference from the stem and first stages (16 -> 6 channels): CamVid
  Semantic FPN lost 4 mIoU (configs/README.md).
* ``blocks_from``: layers at least this wide (before the prune) keep whole 16-channel
  blocks: their counts are multiples of ``lcm(round_to, 16)``. With it the five
  ResNet-50 models of ``benchmarks/speed.py`` ran more efficient at 50 % FLOPs
  (docs/speed.md, "Channel counts"); ``round_to=16`` on every layer did too, but cost the
  three MobileNetV2 recipes accuracy (a 32-channel layer could keep only 16 or 32).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ChannelCounts:
    """The policy; the defaults are :class:`mmprune.options.PruneOptions`' defaults."""

    fast: bool = True
    fast_from: int = 128
    blocks_from: Optional[int] = 128

    @classmethod
    def of(cls, options) -> 'ChannelCounts':
        return cls(options.fast_counts, options.fast_counts_from, options.blocks_from)

    def pruned(self, n_pruned: int, current: int, round_to: int, groups: int = 1,
               down: bool = False) -> int:
        """Channels to prune (per norm/conv group) so that the kept count is a multiple of
        ``round_to``, chosen as the module docstring says. With ``groups`` channel
        groups (GroupNorm, grouped convolutions) ``n_pruned`` is per group."""
        groups = max(groups, 1)
        if self.fast and self.blocks_from is not None and current >= self.blocks_from:
            round_to = math.lcm(round_to, 16)
        size = current // groups
        unit = round_to // math.gcd(round_to, groups)  # per-group multiple
        if size < 2 * unit:
            return n_pruned
        want = size - n_pruned
        kept = (want // unit if down else int(want / unit + 0.5)) * unit
        if self.fast and self.fast_from <= want * groups and kept < size:
            # the multiples within 1/8 of the count, and the nearest
            first = max(math.ceil(want * 7 / 8 / unit), 1) * unit
            last = min(want if down else want * 9 // 8, size)
            near = [kept] + list(range(first, last + 1, unit))
            kept = max(near, key=lambda k: (not slow_count(k * groups),
                                            min(_twos(k // unit), 2), -abs(k - want), -k))
        return min(max(size - max(kept, unit), 0), size - 1)


def _twos(n: int) -> int:
    """How many times 2 divides ``n`` (> 0)."""
    return (n & -n).bit_length() - 1


def slow_count(channels: int) -> bool:
    """Whether ``channels`` make a prime number (>= 7) of 16-channel blocks."""
    blocks = -(-channels // 16)
    return blocks >= 7 and all(blocks % d for d in range(2, math.isqrt(blocks) + 1))
