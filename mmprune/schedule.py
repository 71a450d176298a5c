"""When :class:`~mmprune.PruningHook` prunes, and how far each of its steps goes.

Steps are taken at ``begin, begin + interval, ...`` below ``end`` (epochs or iterations).
After step ``k`` the share :meth:`Schedule.fraction` of the final pruning is reached,
along a ramp: ``'linear'``, or ``'cubic'`` (fast first, then gentle, as in gradual
magnitude pruning, Zhu & Gupta 2017). The hook turns that share into what each step asks
of :func:`mmprune.prune`: a target of the *dense* model (FLOPs, latency), a ratio of the
channels the step finds, or a number of blocks. A new ramp is one more entry of
:data:`RAMPS`.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

#: share of the final pruning reached, as a function of the share of steps taken
RAMPS: Dict[str, Callable[[float], float]] = {
    'linear': lambda x: x,
    'cubic': lambda x: 1 - (1 - x) ** 3,
}


class Schedule:
    """The pruning points of a run and the ramp between them.

    Args:
        begin: first epoch or iteration of pruning.
        end: steps are taken below it; ``None``: one step, at ``begin``.
        interval: epochs / iterations between steps.
        ramp: a name from :data:`RAMPS`.
        by_epoch: whether the points count epochs (else iterations); used in messages
            and in :meth:`check_loop`.
    """

    def __init__(self, begin: int = 0, end: Optional[int] = None, interval: int = 1,
                 ramp: str = 'linear', by_epoch: bool = True) -> None:
        if ramp not in RAMPS:
            raise ValueError(f'ramp must be one of {tuple(RAMPS)}, but got {ramp!r}')
        for key, value in (('begin', begin), ('interval', interval)):
            if not isinstance(value, int) or value < (1 if key == 'interval' else 0):
                raise ValueError(f'{key} must be a '
                                 f'{"positive" if key == "interval" else "non-negative"} int, '
                                 f'but got {value!r}')
        if end is not None and (not isinstance(end, int) or end <= begin):
            raise ValueError(f'end must be an int above begin={begin}, or None, but got {end!r}')
        self.points: List[int] = list(range(begin, end if end is not None else begin + 1,
                                            interval))
        self.ramp = ramp
        self.by_epoch = by_epoch

    @property
    def unit(self) -> str:
        return 'epoch' if self.by_epoch else 'iteration'

    def fraction(self, k: int) -> float:
        """Share of the final pruning reached after step ``k`` (0-based)."""
        return RAMPS[self.ramp]((k + 1) / len(self.points))

    def goal(self, final: float, k: int) -> float:
        """After step ``k``, a quantity that ends at ``final`` of the dense model's (FLOPs,
        latency) is this fraction of the dense model's."""
        return 1 - (1 - final) * self.fraction(k)

    def step_ratio(self, ratio: float, k: int) -> float:
        """The ratio step ``k`` prunes of the channels it finds, so that the steps compose
        to ``ratio`` of the dense model's channels."""
        done = ratio * (self.fraction(k - 1) if k > 0 else 0.0)
        return 1 - (1 - ratio * self.fraction(k)) / (1 - done)

    def count(self, total: int, k: int) -> int:
        """How many of ``total`` (blocks) are gone after step ``k``."""
        return round(total * self.fraction(k))

    def check_loop(self, loop, done: List[int]) -> None:
        """Refuse a schedule whose steps would not run in ``loop`` (an mmengine train
        loop): epochs asked of an iteration-based loop, steps after the end of training."""
        from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
        if self.by_epoch and isinstance(loop, IterBasedTrainLoop) and self.points != [0]:
            raise ValueError(
                f'PruningHook(by_epoch=True) steps at epochs {self.points}, but the train loop '
                f'counts iterations (max_iters={loop.max_iters}) and has one epoch; set '
                f'by_epoch=False and give begin/end/interval in iterations')
        if not isinstance(loop, (EpochBasedTrainLoop, IterBasedTrainLoop)):
            return
        last = (loop.max_epochs if self.by_epoch and isinstance(loop, EpochBasedTrainLoop)
                else loop.max_iters)
        todo = [p for p in self.points if p not in done]
        late = [p for p in todo if p >= last]
        if late:
            what = ('no pruning step would run' if late == todo else
                    f'{len(late)} of its {len(self.points)} steps would not run and the '
                    f'target would not be reached')
            unit = self.unit
            raise ValueError(
                f'PruningHook steps at {unit}s {late} fall after the end of training '
                f'(max_{unit}s={last}, {unit}s 0..{last - 1}): {what}; give begin/end '
                f'below {last}')
