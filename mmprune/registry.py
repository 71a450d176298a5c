"""Registries of mmprune, children of mmengine's root registries.

``locations`` lets mmengine import the modules that register into them, so a
scoped type such as ``type='mmprune.PrunedModel'`` resolves from an mmdet or
mmseg config without ``custom_imports``.

The two registries of pruning itself are where a user extends mmprune from a config
(``custom_imports`` naming a module that registers into them):

* :data:`IMPORTANCES`: criteria that score channels (``importance=dict(type=...)``);
  builders of torch-pruning ``Importance`` objects (:mod:`mmprune.importance`).
* :data:`LAYER_PRUNERS`: torch-pruning handlers for layers torch-pruning does not know
  (:mod:`mmprune.custom_layers`): a ``BasePruningFunc`` subclass whose ``layer_types``
  names the layer classes it prunes.

mmengine has no registry for either. :data:`IMPORTANCES` is a child of its
``TASK_UTILS`` (the registry of task-specific helper objects), so ``mmprune.``-scoped
names resolve from any scope like the others; a parent takes one child per scope, so
:data:`LAYER_PRUNERS` (never named from another scope) is a root of its own.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import TASK_UTILS as MMENGINE_TASK_UTILS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, locations=['mmprune.models'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, locations=['mmprune.hooks', 'mmprune.distill'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS,
                          locations=['mmprune.sparse'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor',
                                      parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
                                      locations=['mmprune.sparse'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, locations=['mmprune.shapes'])
IMPORTANCES = Registry('importance', parent=MMENGINE_TASK_UTILS, locations=['mmprune.importance'])
LAYER_PRUNERS = Registry('layer pruner', scope='mmprune', locations=['mmprune.custom_layers'])
