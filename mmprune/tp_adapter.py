"""mmprune's adapter to torch-pruning: one pruner subclass, one graph subclass, and the
few module-level fixes that cannot be overrides, applied inside one context.

* :class:`GroupPruner` is torch-pruning's ``MetaPruner`` with mmprune's changes as
  overrides: channel counts (:class:`mmprune.counts.ChannelCounts`, told each group's
  channel groups), one named error when a criterion fails on a group, and per-group
  ratios for ``allocation='latency'``.
* :class:`TracedGraph` is its ``DependencyGraph``, built from mmprune's traced forward:
  it keeps the :class:`~mmprune.tracing.TraceContext` of that forward (the concat
  layouts the fixes read) and the last layer whose width was asked (for rounding).
* :func:`torch_pruning_fixes` patches, while open, torch-pruning functions that
  mis-map concats, reshapes, splits and flattens (each fix says why), and makes
  ``MetaPruner`` build a :class:`TracedGraph` or take a given one. Everything is put
  back on exit. It first checks the installed torch-pruning release
  (:data:`TESTED_VERSIONS`): these fixes reach into its internals.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
from typing import Any, Dict, Iterator, List, Optional

import torch.nn as nn
import torch_pruning as tp
from mmengine.logging import print_log

from .tracing import TraceContext, tensor_forward

#: torch-pruning releases the fixes below were written for and tested with
TESTED_VERSIONS = ('1.6.1',)
#: set to 1 to run with another torch-pruning release anyway (a warning is logged)
UNTESTED_ENV = 'MMPRUNE_ALLOW_UNTESTED_TORCH_PRUNING'


def check_version() -> str:
    """The installed torch-pruning release; a clear error when it is not tested."""
    try:
        version = importlib.metadata.version('torch-pruning')
    except importlib.metadata.PackageNotFoundError:  # a source checkout on the path
        version = getattr(tp, '__version__', 'unknown')
    if version in TESTED_VERSIONS:
        return version
    message = (f'mmprune is tested with torch-pruning {", ".join(TESTED_VERSIONS)}, but '
               f'{version} is installed; its fixes reach into torch-pruning\'s internals. '
               f'Install a tested release (pip install torch-pruning=={TESTED_VERSIONS[-1]})')
    if os.environ.get(UNTESTED_ENV) == '1':
        print_log(f'[mmprune] {message}; going on because {UNTESTED_ENV}=1', logger='current',
                  level=logging.WARNING)
        return version
    raise RuntimeError(f'{message}, or set {UNTESTED_ENV}=1 to try it.')


class TracedGraph(tp.DependencyGraph):
    """torch-pruning's dependency graph, built from a traced forward with ``context``."""

    def __init__(self, context: Optional[TraceContext] = None) -> None:
        super().__init__()
        self.context = context if context is not None else TraceContext()
        self.last_width_asked: Optional[nn.Module] = None
        self._layout: Optional[Dict[Any, Any]] = None

    @property
    def concat_layout(self) -> Dict[Any, Any]:
        """The concat layouts of the forward this graph was built from."""
        return self._layout if self._layout is not None else self.context.concat_layout

    def build_dependency(self, *args, **kwargs):
        graph = super().build_dependency(*args, **kwargs)
        self._layout = dict(self.context.concat_layout)  # later forwards replace the context's
        return graph

    def get_out_channels(self, module_or_node):
        self.last_width_asked = module_or_node
        return super().get_out_channels(module_or_node)

    def get_in_channels(self, module_or_node):
        self.last_width_asked = module_or_node
        return super().get_in_channels(module_or_node)


def build_graph(model: nn.Module, batch: Dict[str, Any], forward, context: TraceContext,
                customized_pruners: Dict[type, Any]) -> TracedGraph:
    """A :class:`TracedGraph` of ``model`` from one run of ``forward(model, batch)``."""
    with torch_pruning_fixes():
        return TracedGraph(context).build_dependency(
            model, batch, forward_fn=forward, customized_pruners=customized_pruners)


# ---- the module-level fixes --------------------------------------------------------------
def _concat_fix(original):
    """Three fixes to torch-pruning 1.6.1's concat index mapping.

    * A concat that also takes untraced tensors (CGNet concatenates the down-sampled
      image) has fewer graph inputs than pieces, so torch-pruning's offsets are wrong
      and it drops the mapping (indices then pass through unshifted and prune the wrong
      channels). The layout recorded while tracing (``TracedGraph.concat_layout``) gives
      each traced input its true offset.
    * It turns the mapping off for every concat downstream of a ViT's position
      embedding (its fix for the class-token concat), including the decode head's
      channel concats, which then prune the wrong channels.
    * It sums a concat's input sizes before checking them for None (an input whose
      channels it cannot infer) and raises TypeError; its own next step gives up the
      index mapping in that case, which is what this does.
    """
    from torch_pruning.dependency import index_mapping

    def update_concat_index_mapping(graph, node):
        pieces = getattr(graph, 'concat_layout', {}).get(node.grad_fn)
        if pieces is not None:
            # torch-pruning turns the mapping off for every concat downstream of a 3-D
            # parameter (a ViT's position embedding); a 4-D channel concat needs it
            node.enable_index_mapping = True
        if pieces is not None and sum(t for t, _ in pieces) == len(node.inputs) \
                and node.enable_index_mapping and _map_concat(graph, node, pieces, index_mapping):
            return None
        try:
            return original(graph, node)
        except TypeError:
            if node.module.concat_sizes is not None and None in node.module.concat_sizes:
                return None
            raise
    return update_concat_index_mapping


def _map_concat(graph, node, pieces, index_mapping) -> bool:
    """Set the offsets of a concat with untraced pieces; False when all are traced
    (torch-pruning's own mapping is right then)."""
    from torch_pruning.dependency.shape_infer import infer_channels_between
    # current sizes (this runs again after each pruned group); an input whose
    # channels no layer defines (the image) keeps its traced size
    inferred = iter(infer_channels_between(graph, n, node) for n in node.inputs)
    sizes = [next(inferred) if traced else None for traced, _ in pieces]
    if not any(s is None for s in sizes):
        return False
    sizes = [s if s is not None else size for s, (_, size) in zip(sizes, pieces)]
    node.module.concat_sizes = [s for s, (t, _) in zip(sizes, pieces) if t]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    spans = [[a, a + s] for a, s, (t, _) in zip(starts, sizes, pieces) if t]
    for span, in_node in zip(spans, node.inputs):
        for dep in node.dependencies:
            if dep.target == in_node:
                dep.index_mapping[1] = index_mapping._ConcatIndexMapping(
                    offset=span, reverse=True)
        for dep in in_node.dependencies:
            if dep.target == node:
                dep.index_mapping[1] = index_mapping._ConcatIndexMapping(
                    offset=span, reverse=False)
    return True


def _infer_fix(original):
    """torch-pruning's channel inference indexes a split's sizes by the position of a
    consumer among the split's consumers, which overflows when one chunk feeds several
    ops (Sparse R-CNN's dynamic convs) and raises IndexError; the channels are then
    unknown (None), and it gives up that concat's or reshape's mapping as it does for
    any unknown size."""
    def infer_out_channels_recursively(graph, node, recursive_depth):
        try:
            return original(graph, node, recursive_depth)
        except IndexError:
            return None
    return infer_out_channels_recursively


def _reshape_fix(original):
    """torch-pruning reads a reshape's input size from ``grad_fn._saved_self_sizes``,
    which torch >= 2.x names ``_saved_self_sym_sizes``; it then falls back to a
    model-wide switch that any ``nn.Linear`` with 3-D output turns off, so a Swin or
    PVT backbone loses the flatten mapping of every RoI head (the first FC layer then
    keeps the wrong inputs). When that switch is off, the flatten of a 4-D map is
    mapped anyway if C*H*W is the next layer's input width (its size read under the
    new name); everything else keeps torch-pruning's own behaviour (EncNet relies on it).
    """
    from torch_pruning.dependency import shape_infer

    def update_reshape_index_mapping(graph, node):
        size = getattr(node.grad_fn, '_saved_self_sym_sizes', None)
        if size is None or hasattr(node.grad_fn, '_saved_self_sizes') or graph._2d_4d \
                or len(size) != 4:  # only flattens of maps the switch turned off
            return original(graph, node)
        widths = [shape_infer.infer_in_channels_recursively(graph, n, [0])
                  for n in node.outputs]
        if int(size[1]) * int(size[2]) * int(size[3]) not in widths:
            return None
        graph._2d_4d = True  # off, or this returned above
        try:
            return original(graph, node)
        finally:
            graph._2d_4d = False
    return update_reshape_index_mapping


def _flatten_indices(mapping, idxs):
    """torch-pruning's flatten index mapping (a map's channel -> the ``stride`` inputs of
    the next linear layer, and back), same result without its per-index keyword
    construction: the RoI head's flatten (256 x 7 x 7) made this most of a two-stage
    detector's pruning time. The reverse map keeps first-seen order instead of a set's."""
    from torch_pruning._helpers import _HybridIndex
    new, stride = tuple.__new__, mapping._stride
    if mapping.reverse:
        return [new(_HybridIndex, pair)
                for pair in dict.fromkeys((i.idx // stride, i.root_idx) for i in idxs)]
    out: List[Any] = []
    for i in idxs:
        root = i.root_idx
        out.extend([new(_HybridIndex, (k, root))
                    for k in range(i.idx * stride, (i.idx + 1) * stride)])
    return out


@contextlib.contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


@contextlib.contextmanager
def torch_pruning_fixes() -> Iterator[None]:
    """The module-level fixes of this file, on while open (nested use is fine)."""
    check_version()
    from torch_pruning.dependency import index_mapping, shape_infer
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping
    if getattr(index_mapping.update_concat_index_mapping, '_mmprune', False):
        yield  # already open
        return
    concat = _concat_fix(index_mapping.update_concat_index_mapping)
    concat._mmprune = True
    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(index_mapping, 'update_concat_index_mapping', concat))
        stack.enter_context(_patched(index_mapping, 'update_reshape_index_mapping',
                                     _reshape_fix(index_mapping.update_reshape_index_mapping)))
        stack.enter_context(_patched(shape_infer, 'infer_out_channels_recursively',
                                     _infer_fix(shape_infer.infer_out_channels_recursively)))
        stack.enter_context(_patched(_FlattenIndexMapping, '__call__', _flatten_indices))
        yield


@contextlib.contextmanager
def _graph_for_pruner(graph: Optional[TracedGraph], context: TraceContext) -> Iterator[None]:
    """``MetaPruner`` builds its graph with ``dependency.DependencyGraph()``: it takes
    ``graph`` (built from the same model as it is) instead, or builds a
    :class:`TracedGraph` with ``context``."""
    from torch_pruning import dependency

    class Given:
        def build_dependency(self, *args, **kwargs):
            return graph
    factory = Given if graph is not None else functools.partial(TracedGraph, context)
    with _patched(dependency, 'DependencyGraph', factory):
        yield


@contextlib.contextmanager
def recording_parameter_pruning(record) -> Iterator[None]:
    """Call ``record(old, new, keep_idxs, dim)`` for every parameter torch-pruning
    replaces with a selection of itself (``BasePruningFunc._prune_parameter_and_grad``),
    while open. :func:`mmprune.tracking.track_slices` follows optimizer state with it."""
    func = tp.pruner.function.BasePruningFunc
    original = func._prune_parameter_and_grad

    def recording(self, weight, keep_idxs, pruning_dim):
        new = original(self, weight, keep_idxs, pruning_dim)
        record(weight, new, keep_idxs, pruning_dim)
        return new
    with _patched(func, '_prune_parameter_and_grad', recording):
        yield


# ---- the pruner --------------------------------------------------------------------------
class GroupPruner(tp.pruner.MetaPruner):
    """``MetaPruner`` with mmprune's changes. Use inside :func:`torch_pruning_fixes`.

    Args:
        importance_name: the criterion's name, for errors.
        counts: the channel-count policy applied when ``round_to`` is set.
        graph: a :class:`TracedGraph` of the model as it is, built from the same
            forward (saves tracing again); None builds one with ``context``.
        context: the trace context of the prune (``forward_fn`` should use it too).
        latency: per-group weights for ``allocation='latency'``
            (:class:`mmprune.latency.LatencyAllocation`), or None.
        **kwargs: ``MetaPruner``'s arguments.
    """

    def __init__(self, model: nn.Module, example_inputs, *, importance_name: str,
                 counts=None, graph: Optional[TracedGraph] = None,
                 context: Optional[TraceContext] = None, latency=None, **kwargs) -> None:
        self.importance_name = importance_name
        self.counts = counts
        self.channel_groups_of: Dict[nn.Module, int] = {}
        context = context if context is not None else TraceContext()
        kwargs.setdefault('forward_fn', functools.partial(tensor_forward, context=context))
        with _graph_for_pruner(graph, context):
            super().__init__(model, example_inputs, **kwargs)
        if latency is not None:
            self._allocate(latency, model)

    # channel counts: torch-pruning asks for the root layer's width right before rounding,
    # and the group's channel groups were computed (per root layer) while scoring
    def _get_channel_groups(self, group) -> int:
        n = super()._get_channel_groups(group)
        self.channel_groups_of[group[0].dep.target.module] = n
        return n

    def _round_to(self, n_pruned, current_channels, round_to):
        if self.counts is None:
            return super()._round_to(n_pruned, current_channels, round_to)
        groups = self.channel_groups_of.get(self.DG.last_width_asked, 1)
        return self.counts.pruned(n_pruned, current_channels, round_to, groups,
                                  down=self.global_pruning)

    def estimate_importance(self, group):
        """A criterion that fails on a group (torch-pruning's score reduction meets an
        index layout it does not expect, e.g. BN scales behind a concat) raises one
        error naming the group's layer instead of a bare IndexError."""
        try:
            return super().estimate_importance(group)
        except Exception as e:
            raise group_error(group, f'importance {self.importance_name!r} failed on', e,
                              'Choose another importance, or add {root!r} to '
                              'ignored_layers.') from e

    def named_groups(self, model: nn.Module) -> List[tuple]:
        """``(root layer, [(layer, prunes its outputs), ...])`` of every group pruned."""
        names = {m: n for n, m in model.named_modules()}
        groups = []
        for group in self.DG.get_all_groups(ignored_layers=self.ignored_layers,
                                            root_module_types=self.root_module_types):
            members = [(names[dep.target.module], self.DG.is_out_channel_pruning_fn(dep.handler))
                       for dep, _ in group if dep.target.module in names]
            groups.append((names[group[0].dep.target.module], members))
        return groups

    def _allocate(self, latency, model: nn.Module) -> None:
        """Each group's ratio: the common one times the group's latency weight."""
        ratio = self.pruning_ratio
        weights, members = latency.weights_for(self, model)
        modules = dict(model.named_modules())
        given = set(self._layer_to_scope)  # pruning_ratio_dict's layers
        for root, weight in weights.items():
            module = modules.get(root)
            if module is None or any(modules.get(n) in given for n in members.get(root, ())):
                continue  # a pruning_ratio_dict entry covers this group (as torch-pruning
                # matches them: a layer whose outputs the group prunes)
            # at most half-way from the common ratio to 1: a group keeps at least half the
            # channels the common ratio leaves (torch-pruning skips a group asked for all)
            self.pruning_ratio_dict[module] = self.iterative_pruning_ratio_scheduler(
                min(ratio * weight, (1 + ratio) / 2, self.max_pruning_ratio),
                self.iterative_steps)
            self._layer_to_scope[module] = (f'_mmprune_latency_{root}', [module])


def group_error(group, what: str, e: Exception, advice: str) -> RuntimeError:
    """One error naming the group's root layer (``{root!r}`` in ``advice``)."""
    root = group[0][0].target._name
    return RuntimeError(
        f'{what} the channels of layer {root!r} and the layers coupled with it '
        f'({type(e).__name__}: {e}); the model is restored. ' + advice.format(root=root))
