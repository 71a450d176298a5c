"""Registries of mmprune, children of mmengine's root registries.

``locations`` lets mmengine import the modules that register into them, so a
scoped type such as ``type='mmprune.PrunedModel'`` resolves from an mmdet or
mmseg config without ``custom_imports``.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, locations=['mmprune.models'])
