"""Tracing an OpenMMLab model for torch-pruning's dependency graph.

A host model is traced through its ``mode='tensor'`` forward, widened so that every
layer that owns weights is seen by autograd, with rules for what the autograd graph
does not show. Where each part lives:

* :mod:`.batches`: example batches (random images and ground truth through the
  model's own data preprocessor) and the fixed proposals of two-stage detectors;
* :mod:`.forwards`: :func:`tensor_forward` (the pruner's graph, widened by the named
  forward rules of ``FORWARD_RULES``), :func:`inference_forward` (what a deployed model
  runs) and :func:`tracing_state`;
* :mod:`.rules`: the named op rules (``OP_RULES``) and the :class:`TraceContext` they
  share during one prune;
* :mod:`.outputs`: the output layers, kept whole (:func:`find_output_layers`);
* :mod:`.attention`: attention layers that keep their channels, heads as channel groups;
* :mod:`.channels`: channel constants of weight-free modules (:func:`follow_input_channels`);
* :mod:`.tensors`: helpers on nested outputs.

A new op rule is a function decorated with ``@op_rule(ops)`` in :mod:`.rules`; a new
change to the traced forward one decorated with ``@forward_rule()`` in :mod:`.forwards`.
"""
from .attention import PRUNABLE_ROOTS, attention_heads, attention_projections, headwise
from .batches import (INFERENCE_PROPOSALS, config_input_shape, fixed_proposals,
                      inference_proposals, make_batch, task_of)
from .channels import CHANNEL_ATTRS, follow_input_channels
from .forwards import (FORWARD_RULES, Patches, forward_rule, host_quirks, inference_forward,
                       tensor_forward, tracing_state, two_stage_rpn)
from .outputs import (find_output_layers, layer_handler, layer_types, layers_behind,
                      preserves_channels)
from .rules import OP_RULES, TraceContext, TraceMode, op_rule
from .tensors import channel_dim, detach_all, first_tensor, flatten_tensors

__all__ = [
    'PRUNABLE_ROOTS', 'attention_heads', 'attention_projections', 'headwise',
    'INFERENCE_PROPOSALS', 'config_input_shape', 'fixed_proposals', 'inference_proposals',
    'make_batch', 'task_of', 'CHANNEL_ATTRS', 'follow_input_channels', 'FORWARD_RULES',
    'Patches', 'forward_rule', 'host_quirks', 'inference_forward', 'tensor_forward',
    'tracing_state', 'two_stage_rpn', 'find_output_layers', 'layer_handler', 'layer_types',
    'layers_behind', 'preserves_channels', 'OP_RULES', 'TraceContext', 'TraceMode', 'op_rule',
    'channel_dim', 'detach_all', 'first_tensor', 'flatten_tensors']
