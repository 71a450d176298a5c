"""A hook that SIGKILLs the training process, for kill-and-resume tests.

Registered in mmengine's HOOKS; a test config imports it with
``custom_imports=dict(imports=['kill_hook'])`` (tests/ on PYTHONPATH).
"""
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class KillAfterEpoch(Hook):
    """Kill -9 at the end of ``epoch`` (1-based), after the checkpoint hook saved it."""

    priority = 'LOWEST'  # after CheckpointHook (VERY_LOW)

    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def after_train_epoch(self, runner):
        if runner.epoch + 1 == self.epoch:  # runner.epoch is the 0-based epoch just trained
            os.kill(os.getpid(), signal.SIGKILL)
