"""Hooks that SIGKILL the training process at chosen points, for kill-and-resume tests.

Registered in mmengine's HOOKS; a test config imports them with
``custom_imports=dict(imports=['kill_hook'])`` (tests/ on PYTHONPATH). Each kills
once: it leaves a marker file in the work dir first, so the resumed run goes on.
"""
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def _once(runner, name: str) -> bool:
    marker = os.path.join(runner.work_dir, f'.killed_{name}')
    if os.path.exists(marker):
        return False
    open(marker, 'w').close()
    return True


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module(force=True)
class KillDuringPruning(Hook):
    """Kill -9 inside the pruning step of ``epoch`` (0-based), after torch-pruning has
    removed the channels of the first group and before the step ends."""

    priority = 'HIGHEST'  # before the PruningHook (VERY_HIGH) in before_train_epoch

    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def before_train_epoch(self, runner):
        if runner.epoch != self.epoch or not _once(runner, 'pruning'):
            return
        import torch_pruning as tp
        real = tp.dependency.Group.prune

        def prune_then_die(group, *args, **kwargs):
            real(group, *args, **kwargs)
            _kill()
        tp.dependency.Group.prune = prune_then_die


@HOOKS.register_module(force=True)
class KillDuringCheckpointWrite(Hook):
    """Kill -9 half-way through writing the checkpoint of ``epoch`` (1-based): half of
    its bytes are on disk, a torn file."""

    def __init__(self, epoch: int = 2):
        self.epoch = epoch

    def before_save_checkpoint(self, runner, checkpoint):
        if runner.epoch + 1 != self.epoch or not _once(runner, 'checkpoint'):
            return
        from mmengine.fileio.backends.local_backend import LocalBackend

        def torn_put(backend, obj, filepath):
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
                f.flush()
                os.fsync(f.fileno())
            _kill()
        LocalBackend.put = torn_put
