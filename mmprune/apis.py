"""Building host models from configs and writing pruned configs + checkpoints."""
from __future__ import annotations

import copy
import importlib
import logging
import os
import pprint
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import DATASETS, MODELS, init_default_scope

from .checkpoint import atomic_write, load_checkpoint_file
from .structure import compose

PRUNED_TYPE = 'mmprune.PrunedModel'


def load_config(cfg: Union[str, Config, dict]) -> Config:
    """A :class:`Config` from a path, an ``mmdet::``/``mmseg::`` name, a dict or a Config."""
    if isinstance(cfg, Config):
        return cfg
    if isinstance(cfg, dict):
        return Config(copy.deepcopy(cfg))
    if isinstance(cfg, str):
        if '::' in cfg:  # a config of an installed package's zoo, e.g. 'mmdet::retinanet/x.py'
            package, rel = cfg.split('::', 1)
            try:
                path = os.path.join(os.path.dirname(importlib.import_module(package).__file__),
                                    '.mim', 'configs', rel)
            except ImportError as e:
                raise FileNotFoundError(f'config {cfg}: package {package!r} is not installed') \
                    from e
            if not os.path.isfile(path):  # mmengine's parser rejects folders like 'gn+ws'
                from mmengine.hub import get_config
                return get_config(cfg)
            return Config.fromfile(path)
        if not os.path.isfile(cfg):
            raise FileNotFoundError(f'config not found: {cfg}')
        return Config.fromfile(cfg)
    raise TypeError(f'cfg must be a path, dict or Config, but got {type(cfg).__name__}')


def _without_pretrained(model_cfg: Any) -> Any:
    """Drop pretrained-weight downloads (``init_cfg=Pretrained`` or a bare
    ``init_cfg=dict(checkpoint=...)``, ``pretrained=``)."""
    if isinstance(model_cfg, dict):
        out = type(model_cfg)()
        for k, v in model_cfg.items():
            if k == 'pretrained' and isinstance(v, str):
                out[k] = None
            elif k == 'init_cfg' and isinstance(v, dict) and (
                    v.get('type') == 'Pretrained' or (v.get('type') is None and v.get('checkpoint'))):
                out[k] = None  # the second form: PVT's backbone reads init_cfg['checkpoint']
            else:
                out[k] = _without_pretrained(v)
        return out
    if isinstance(model_cfg, (list, tuple)):
        return type(model_cfg)(_without_pretrained(v) for v in model_cfg)
    return model_cfg


def is_pruned_config(cfg: Config) -> bool:
    return str(cfg.model.get('type', '')) in (PRUNED_TYPE, 'PrunedModel')


def dense_model_cfg(cfg) -> dict:
    """The host model config a pruned config's ``PrunedModel`` wraps."""
    model = copy.deepcopy(dict(cfg.model))
    arch = model.pop('architecture')
    for key in ('structure', 'pruning', 'checkpoint'):
        model.pop(key, None)
    if isinstance(arch, dict):
        return {**arch, **model}
    model['type'] = arch
    return model


def build_model(cfg: Union[str, Config, dict], checkpoint: Optional[str] = None,
                pretrained: bool = False) -> Tuple[nn.Module, Config]:
    """Build the config's model on CPU; load ``checkpoint`` strictly if given.

    Without a checkpoint the model gets its own random init; pretrained
    backbone downloads are dropped unless ``pretrained`` is set.
    """
    if checkpoint is not None and not os.path.isfile(checkpoint):  # before a long build
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    cfg = load_config(cfg)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model_cfg = copy.deepcopy(cfg.model)
    if not pretrained:
        model_cfg = _without_pretrained(model_cfg)
    model = MODELS.build(model_cfg)
    if checkpoint is None:
        if not is_pruned_config(cfg):
            quiet_init_weights(model)
    else:
        load_weights(model, checkpoint, cfg)
    model.cfg = cfg
    return model, cfg


def quiet_init_weights(model: nn.Module) -> None:
    """``init_weights`` without mmengine's per-parameter INFO report."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


def drop_aliases(state: Dict[str, torch.Tensor], own: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """``state`` without keys the model lacks that alias one it has (same storage).

    Some hosts register a module under a second name during their first forward
    (DDQ-DETR's decoder borrows the head's branches), so a trained model's
    state_dict has extra keys that a freshly built one does not.
    """
    ptrs = {(v.data_ptr(), tuple(v.shape)) for k, v in state.items()
            if k in own and isinstance(v, torch.Tensor) and v.numel()}
    return {k: v for k, v in state.items()
            if k in own or not isinstance(v, torch.Tensor) or not v.numel()
            or (v.data_ptr(), tuple(v.shape)) not in ptrs}


def load_weights(model: nn.Module, checkpoint: str, cfg: Optional[Config] = None) -> Dict:
    """Load ``checkpoint`` into ``model`` strictly, with an error that names the mismatch."""
    ckpt = load_checkpoint_file(checkpoint)
    state = ckpt.get('state_dict', ckpt)
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    meta = ckpt.get('meta') or {}
    pruned_ckpt = 'mmprune' in meta
    pruned_cfg = cfg is not None and is_pruned_config(cfg)
    if pruned_ckpt and cfg is not None and not pruned_cfg:
        raise ValueError(f'{checkpoint} is a pruned checkpoint but the config builds the dense '
                         f'model; use the pruned config written beside it')
    own = model.state_dict()
    state = drop_aliases(state, own)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        hint = ''
        if mismatched and pruned_cfg and not pruned_ckpt:
            hint = ' (a dense checkpoint given to a pruned config?)'
        raise ValueError(
            f'checkpoint {checkpoint} does not match {type(model).__name__}{hint}: '
            f'{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys '
            f'{unexpected[:3]}, {len(mismatched)} shape mismatches '
            + ', '.join(f'{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}'
                        for k in mismatched[:3]))
    model.load_state_dict(state, strict=True)
    if meta.get('dataset_meta'):
        model.dataset_meta = meta['dataset_meta']
    return ckpt


def dataset_meta(cfg: Config, model: Optional[nn.Module] = None) -> Optional[dict]:
    """The class names (and palette) of the model, else of the config's test dataset."""
    meta = getattr(model, 'dataset_meta', None)
    if meta:
        return dict(meta)
    for key in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        loader = cfg.get(key)
        ds = loader.get('dataset') if loader else None
        while isinstance(ds, dict) and 'dataset' in ds and 'metainfo' not in ds:
            ds = ds['dataset']  # dataset wrappers (RepeatDataset, ...)
        if not isinstance(ds, dict) or 'type' not in ds:
            continue
        ds_type = ds['type']
        if isinstance(ds_type, str) and '.' not in ds_type:
            ds_type = f"{cfg.get('default_scope', 'mmdet')}.{ds_type}"
        cls = DATASETS.get(ds_type) if isinstance(ds_type, str) else ds_type
        meta = dict(getattr(cls, 'METAINFO', {}) or {})
        meta.update(ds.get('metainfo') or {})
        if meta:
            return {k: list(v) if isinstance(v, tuple) else v for k, v in meta.items()}
    return None


def _scoped_type(model_cfg: dict, default_scope: Optional[str]) -> str:
    t = model_cfg['type']
    if not isinstance(t, str):
        raise TypeError(f'the model type must be a registered name, but got {t!r}')
    return t if '.' in t or not default_scope else f'{default_scope}.{t}'


def pruned_config_text(cfg: Config, base_name: str, structure: Dict[str, Any],
                       summary: Dict[str, Any]) -> str:
    """A readable pruned config: the dense config as ``_base_`` plus the pruned model."""
    base_model = _without_pretrained(cfg.model)
    host_type = _scoped_type(cfg.model, cfg.get('default_scope'))
    overrides: Dict[str, Any] = {}
    for key in ('backbone', 'init_cfg', 'pretrained'):
        if key in cfg.model and base_model.get(key) != cfg.model.get(key):
            overrides[key] = (dict(init_cfg=None) if key == 'backbone' else None)
    lines = [
        '# Pruned by mmprune. The dense model is the _base_; `structure` lists, per pruned',
        '# layer, the attributes that changed (kept channels) and the new tensor shapes.',
        *(f'# {k}: {v}' for k, v in summary.items()),
        f'_base_ = {"./" + base_name!r}',
        '',
        'structure = ' + pprint.pformat(structure, width=100, sort_dicts=False),
        '',
        'model = dict(',
        f"    type='{PRUNED_TYPE}',",
        f'    architecture={host_type!r},',
        '    structure=structure,',
        *(f'    {k}={v!r},' for k, v in overrides.items()),
        ')',
        '',
    ]
    return '\n'.join(lines)


def write_pruned_config(cfg: Config, structure: Dict[str, Any], out_dir: str, name: str,
                        summary: Dict[str, Any]) -> Tuple[str, str]:
    """Write ``<name>_dense.py`` (the dense ``cfg``) and then ``<name>_pruned.py`` (a
    readable delta on it); returns both paths. A pruned ``cfg`` is saved as its dense
    parent with the structures composed (:func:`dense_parent`)."""
    cfg, structure = dense_parent(cfg, structure)
    dense_path, cfg_path, _ = output_paths(out_dir, name)
    atomic_write(dense_path, lambda p: cfg.dump(p), overwrite=True)
    text = pruned_config_text(cfg, os.path.basename(dense_path), structure, summary)
    atomic_write(cfg_path, lambda p: open(p, 'w').write(text), overwrite=True)
    return dense_path, cfg_path


def dense_parent(cfg: Config, structure: Optional[Dict[str, Any]] = None
                 ) -> Tuple[Config, Optional[Dict[str, Any]]]:
    """The dense config behind ``cfg``, and ``structure`` made relative to it.

    A pruned config (``PrunedModel`` with ``structure``) that is pruned again
    saves as one pruned config on the original dense model: the two
    structures are composed. A config that prunes while it builds
    (``pruning=``) records no structure to compose with, so it is refused.
    """
    if not is_pruned_config(cfg):
        return cfg, structure
    base = cfg.model.get('structure')
    if base is None:
        raise ValueError(
            f'{cfg.filename or "the config"} prunes while it builds (PrunedModel pruning=) '
            f'and records no structure, so a further prune cannot be saved against it; '
            f'prune its dense config (the architecture it names) with all the options at '
            f'once, or save the model it builds with mmprune.save_pruned and prune that')
    dense = copy.deepcopy(cfg)
    dense.model = dense_model_cfg(cfg)
    if dense.get('structure') == base:  # the top-level variable a written pruned config has
        dense.pop('structure')
    return dense, (compose(base, structure) if structure is not None else None)


def output_paths(out_dir: str, name: str) -> Tuple[str, str, str]:
    """``<name>_dense.py``, ``<name>_pruned.py`` and ``<name>_pruned.pth`` in ``out_dir``."""
    check_name(name)
    return tuple(os.path.join(out_dir, f'{name}{suffix}')  # type: ignore[return-value]
                 for suffix in ('_dense.py', '_pruned.py', '_pruned.pth'))


def check_name(name: str) -> None:
    """A file stem that the written config can name as its ``_base_``: mmengine substitutes
    ``{{ ... }}`` in config text, and a separator would write into another folder."""
    if not name or any(s in name for s in ('{{', '}}', '/', os.sep, '\n')):
        raise ValueError(f'output name {name!r} cannot name a config file: it must be '
                         f'non-empty, without path separators, newlines or "{{{{" / "}}}}"')


def check_outputs(paths: Sequence[str], overwrite: bool) -> None:
    """Refuse to replace existing outputs without ``overwrite``, before any work.

    The pruned config is written after the checkpoint and the dense config (see
    :func:`save_pruned`), so where it is missing they are leftovers of an interrupted
    save, and are replaced.
    """
    if overwrite:
        return
    marker = next((p for p in paths if p.endswith('_pruned.py')), None)
    interrupted = marker is not None and not os.path.exists(marker)
    for path in paths:
        if interrupted and path.endswith(('_dense.py', '_pruned.pth')):
            continue  # written before the pruned config by a save that did not finish
        if os.path.exists(path):
            raise FileExistsError(f'{path} exists; pass overwrite=True (--overwrite) '
                                  f'to replace it')


def save_pruned(model: nn.Module, structure: Dict[str, Any], cfg: Config, out_dir: str,
                name: Optional[str] = None, summary: Optional[Dict[str, Any]] = None,
                overwrite: bool = False) -> Tuple[str, str]:
    """Write ``<name>_dense.py``, ``<name>_pruned.py`` and ``<name>_pruned.pth`` to ``out_dir``.

    The checkpoint holds the host state_dict (host keys, no prefix) and
    ``meta`` with ``dataset_meta`` and ``mmprune`` (structure and summary).
    Returns the pruned config and checkpoint paths.
    """
    name = name or os.path.splitext(os.path.basename(cfg.filename or 'model'))[0]
    cfg, structure = dense_parent(cfg, structure)
    dense_path, cfg_path, ckpt_path = output_paths(out_dir, name)
    check_outputs(output_paths(out_dir, name), overwrite)
    summary = dict(summary or {})
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = dict(mmprune=dict(structure=structure, summary=summary))
    ds_meta = dataset_meta(cfg, model)
    if ds_meta:
        meta['dataset_meta'] = ds_meta
    # the checkpoint first, the pruned config last: an interrupted save never leaves a
    # pruned config beside a checkpoint that does not fit it
    atomic_write(ckpt_path, lambda p: torch.save(dict(state_dict=state, meta=meta), p),
                 overwrite=True)
    write_pruned_config(cfg, structure, out_dir, name, summary)
    return cfg_path, ckpt_path


def load_pruned(config: Union[str, Config], checkpoint: str) -> nn.Module:
    """Build a pruned model from its config and load its checkpoint (CPU)."""
    model, _ = build_model(config, checkpoint)
    return model
