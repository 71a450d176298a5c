"""``mmprune.DistillHook``: the dense model teaches the pruned one while it finetunes.

One more line beside the :class:`~mmprune.PruningHook`::

    custom_hooks = [dict(type='mmprune.PruningHook', target_flops=0.5, begin=0, end=3),
                    dict(type='mmprune.DistillHook', loss='cwd', loss_weight=3.0)]

At ``before_train`` the hook keeps a frozen copy of the model as it is then
(the dense weights of ``load_from``; or, when the run resumes an already
pruned model, the dense model built from the config and
``teacher_checkpoint``). In every ``mode='loss'`` forward of the student it
runs the teacher's tensor forward on the same preprocessed batch and adds
``loss_distill`` to the host's losses: the divergence between the outputs of
the layers named in ``layers``, by default the model's output layers (the
ones whose output channels are the model's outputs, which pruning keeps), so
the two models' maps have the same shape whatever was pruned. Layers whose
outputs are not per-image (N, C, H, W) maps (an RoI head's, whose rows depend
on each model's own proposals) are left out of the default. Nothing is added to the model: its
class, state_dict and checkpoints stay the host's.

Losses (per layer output, averaged over layers and calls):

- ``'cwd'``: channel-wise distillation (Shu et al., ICCV 2021): each channel's
  map is a distribution over positions (softmax at temperature ``tau``);
  KL(teacher || student), summed over positions, averaged over images and
  channels, times ``tau ** 2``.
- ``'mse'``: mean squared difference of the outputs.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.hooks import Hook

from .hooks import unwrap_model
from .registry import HOOKS
from .tracing import first_tensor, flatten_tensors


def channel_wise_divergence(student: torch.Tensor, teacher: torch.Tensor,
                            tau: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of each channel's spatial softmax, times ``tau ** 2``."""
    n, c = student.shape[:2]
    s = student.float().reshape(n * c, -1) / tau
    t = teacher.float().reshape(n * c, -1) / tau
    kl = (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1)
    return kl.mean() * tau ** 2


def mean_squared(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    return torch.nn.functional.mse_loss(student.float(), teacher.float())


LOSSES: Dict[str, Callable[..., torch.Tensor]] = {'cwd': channel_wise_divergence,
                                                   'mse': mean_squared}


def _forward_args(args: tuple, kwargs: dict):
    """(inputs, data_samples, mode) of a host model's ``forward`` call."""
    names = ('inputs', 'data_samples', 'mode')
    values = dict(zip(names, args))
    values.update({k: v for k, v in kwargs.items() if k in names})
    return values.get('inputs'), values.get('data_samples'), values.get('mode', 'tensor')


@HOOKS.register_module()
class DistillHook(Hook):
    """Distil the dense model's outputs into the model while it is pruned and finetuned.

    Args:
        loss: ``'cwd'`` (channel-wise distillation) or ``'mse'``.
        loss_weight: factor of the distillation loss in the total loss.
            Defaults to 3.0.
        tau: temperature of ``'cwd'``. Defaults to 1.0.
        layers: names of the layers whose outputs are compared (they must keep
            their output channels: pass them in ``ignored_layers`` of the
            PruningHook if they are not output layers). Defaults to the
            model's output layers with per-image (N, C, H, W) outputs (a
            two-stage detector has none: name its RPN layers).
        teacher_checkpoint: dense weights of the teacher, built from the run's
            config. Needed when the model is already pruned at the start
            (``--resume`` of a pruning run); otherwise the teacher is a copy
            of the model at ``before_train``.
        input_shape: (h, w) of the example input that finds the output layers.
            Defaults to the config's test pipeline.
    """

    priority = 'NORMAL'

    def __init__(self, loss: str = 'cwd', loss_weight: float = 3.0, tau: float = 1.0,
                 layers: Optional[Sequence[str]] = None,
                 teacher_checkpoint: Optional[str] = None,
                 input_shape: Optional[Sequence[int]] = None) -> None:
        if loss not in LOSSES:
            raise ValueError(f'loss must be one of {sorted(LOSSES)}, but got {loss!r}')
        for key, value in (('loss_weight', loss_weight), ('tau', tau)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f'{key} must be a positive number, but got {value!r}')
        if layers is not None and (isinstance(layers, str) or not layers or not all(
                isinstance(n, str) for n in layers)):
            raise ValueError(f'layers must be a non-empty list of layer names, but got {layers!r}')
        self.loss, self.loss_weight, self.tau = loss, float(loss_weight), float(tau)
        self.layers = list(layers) if layers is not None else None
        self.teacher_checkpoint = teacher_checkpoint
        self.input_shape = input_shape
        self.teacher: Optional[nn.Module] = None
        self.distilled: List[str] = []
        self._handles: List[Any] = []
        self._active = self._in_step = False
        self._student: Dict[str, List[torch.Tensor]] = {}
        self._teacher: Dict[str, List[torch.Tensor]] = {}

    # ---- runner events ----------------------------------------------------------------
    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        self.distilled = self._choose_layers(runner, model)
        self.teacher = self._build_teacher(runner, model)
        self._attach(model, self.teacher)
        runner.logger.info(f'[mmprune] distilling {self.loss} (weight {self.loss_weight:g}, '
                           f'tau {self.tau:g}) from the dense teacher on {self.distilled}')

    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        self._in_step = True  # the runner's train step; not a PruningHook's own loss runs

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None,
                         outputs: Optional[dict] = None) -> None:
        self._in_step = False

    def after_train(self, runner) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self.teacher = [], None

    # ---- teacher and layers -----------------------------------------------------------
    def _build_teacher(self, runner, model: nn.Module) -> nn.Module:
        if self.teacher_checkpoint is not None:
            from .apis import build_model
            cfg = copy.deepcopy(runner.cfg)
            cfg.custom_hooks = []
            teacher, _ = build_model(cfg, self.teacher_checkpoint)
        else:
            pruned = [h for h in runner.hooks if type(h).__name__ == 'PruningHook'
                      and h.structure.get('layers')]
            if pruned:
                raise ValueError('DistillHook: the model is already pruned when training starts '
                                 '(a resumed pruning run); give teacher_checkpoint= the dense '
                                 'weights')
            teacher = copy.deepcopy(model)
        device = next(model.parameters()).device
        teacher.to(device).eval().requires_grad_(False)
        return teacher

    def _choose_layers(self, runner, model: nn.Module) -> List[str]:
        named = dict(model.named_modules())
        if self.layers is not None:
            unknown = [n for n in self.layers if n not in named]
            if unknown:
                raise ValueError(f'DistillHook: no layer named {unknown} in '
                                 f'{type(model).__name__}')
            return list(self.layers)
        from .tracing import (layer_handler, layers_behind, make_batch, preserves_channels,
                              tracing_state)
        batch = make_batch(model, runner.cfg, self.input_shape)
        mixing = {n: m for n, m in named.items()
                  if layer_handler(m) is not None and not preserves_channels(m)}
        made_by: Dict[Any, str] = {}  # autograd node of a layer's output -> layer
        per_image: Dict[str, List[bool]] = {}  # layer -> whether each call gave N maps
        images = len(batch['inputs'])

        def record(name):
            def hook(module, args, output):
                t = first_tensor(output)  # per-image maps; not per-RoI rows
                per_image.setdefault(name, []).append(
                    t is not None and t.dim() == 4 and t.shape[0] == images)
                if t is not None and t.grad_fn is not None:
                    made_by[t.grad_fn] = name
            return hook

        with tracing_state(model):
            handles = [m.register_forward_hook(record(n)) for n, m in mixing.items()]
            try:
                outputs = self._tensor_forward(model, batch['inputs'], batch['data_samples'])
            finally:
                for h in handles:
                    h.remove()
        # the output layers: the last channel-mixing layers before each output tensor
        # (through reshapes, activations, norms, resizes), walked as find_output_layers does
        # on the host's own tensor mode (what the student and teacher run here)
        found = layers_behind([t.grad_fn for t in flatten_tensors(outputs)
                               if t.grad_fn is not None], made_by)
        layers = [n for n in found if all(per_image[n])]
        if not layers:
            raise ValueError(
                f'DistillHook: {type(model).__name__} has no output layer with per-image '
                f'(N, C, H, W) outputs among {list(found)} (RoI-head outputs follow each '
                f'model\'s own proposals); name the layers to compare with layers=, e.g. '
                f'an RPN\'s [\'rpn_head.rpn_cls\', \'rpn_head.rpn_reg\']')
        return layers

    @staticmethod
    def _tensor_forward(model: nn.Module, inputs, data_samples):
        return model(inputs, data_samples, mode='tensor')

    # ---- the loss -----------------------------------------------------------------------
    def _attach(self, student: nn.Module, teacher: nn.Module) -> None:
        s_named, t_named = dict(student.named_modules()), dict(teacher.named_modules())

        def keep(store: Dict[str, List[torch.Tensor]], name: str, always: bool):
            def hook(module, args, output):
                if always or self._active:
                    t = first_tensor(output)
                    if t is not None:
                        store.setdefault(name, []).append(t)
            return hook

        def before(module, args, kwargs):
            self._active = self._in_step and _forward_args(args, kwargs)[2] == 'loss'
            self._student.clear()

        def after(module, args, kwargs, output):
            if not self._active:
                return None
            self._active = False
            inputs, data_samples, _ = _forward_args(args, kwargs)
            output = dict(output)
            output['loss_distill'] = self.loss_weight * self._divergence(inputs, data_samples)
            return output

        for name in self.distilled:
            self._handles.append(s_named[name].register_forward_hook(
                keep(self._student, name, False)))
            self._handles.append(t_named[name].register_forward_hook(
                keep(self._teacher, name, True)))
        self._handles.append(student.register_forward_pre_hook(before, with_kwargs=True))
        self._handles.append(student.register_forward_hook(after, with_kwargs=True))

    def _divergence(self, inputs, data_samples) -> torch.Tensor:
        self._teacher.clear()
        with torch.no_grad():
            self._tensor_forward(self.teacher, inputs, data_samples)
        fn, terms = LOSSES[self.loss], []
        for name in self.distilled:
            s, t = self._student.get(name, []), self._teacher.get(name, [])
            if len(s) != len(t) or any(a.shape != b.shape for a, b in zip(s, t)):
                raise RuntimeError(
                    f'DistillHook: layer {name!r} gave the student {[tuple(a.shape) for a in s]} '
                    f'and the teacher {[tuple(b.shape) for b in t]}: it must keep its output '
                    f'channels and run in both the loss and the tensor forward')
            terms += [fn(a, b, tau=self.tau) for a, b in zip(s, t)]
        self._student.clear()
        self._teacher.clear()
        if not terms:
            raise RuntimeError(f'DistillHook: none of {self.distilled} ran in the loss forward')
        return torch.stack(terms).mean()


__all__ = ['DistillHook', 'channel_wise_divergence', 'LOSSES']
