"""The configs that ship with mmprune, reachable without a checkout.

The zoo recipes (``configs/bccd``, ``configs/camvid``, the COCO / Cityscapes /
ADE20K 50 % recipes), the hook examples (``configs/pruning``), the tiny test
models and the demo live in the repository's ``configs/`` folder and are
packaged as ``mmprune/.mim/configs``, where the OpenMMLab hosts keep theirs
(``mmdet/.mim/configs``). mmprune's commands and :func:`mmprune.apis.load_config`
accept them as ``mmprune::<path under configs/>``, as they accept
``mmdet::`` and ``mmseg::`` names; mmengine itself only knows the hosts'
scopes, so for a host tool or a ``_base_`` use the file path
:func:`config_path` (or ``mmprune configs``) gives.
"""
from __future__ import annotations

import fnmatch
import os
import os.path as osp
from typing import List

SCOPE = 'mmprune::'


def configs_dir() -> str:
    """The folder of the packaged configs (the checkout's ``configs/`` in an
    editable install)."""
    return osp.join(osp.dirname(osp.abspath(__file__)), '.mim', 'configs')


def config_path(name: str) -> str:
    """The file of ``mmprune::<path>``; any other name is returned as it is."""
    if not name.startswith(SCOPE):
        return name
    path = osp.join(configs_dir(), name[len(SCOPE):])
    if not osp.isfile(path):
        raise FileNotFoundError(f'config {name}: no such file among the configs packaged with '
                                f'mmprune ({configs_dir()}); `mmprune configs` lists them')
    return path


def list_configs(pattern: str = '*') -> List[str]:
    """``mmprune::`` names of the packaged configs whose path matches ``pattern``."""
    root = configs_dir()
    names = []
    for folder, _, files in os.walk(root, followlinks=True):
        for f in files:
            if f.endswith('.py'):
                rel = osp.relpath(osp.join(folder, f), root).replace(os.sep, '/')
                if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(rel, f'*{pattern}*'):
                    names.append(SCOPE + rel)
    return sorted(names)
