"""Registries of mmprune, children of mmengine's root registries.

``locations`` lets mmengine import the modules that register into them, so a
scoped type such as ``type='mmprune.PrunedModel'`` resolves from an mmdet or
mmseg config without ``custom_imports``.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, locations=['mmprune.models'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, locations=['mmprune.hooks', 'mmprune.distill'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS,
                          locations=['mmprune.sparse'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor',
                                      parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
                                      locations=['mmprune.sparse'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, locations=['mmprune.shapes'])
