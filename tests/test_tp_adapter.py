"""The torch-pruning adapter: its version check, and its fixes on only while open."""
import importlib.metadata

import pytest
from torch_pruning.dependency import DependencyGraph, index_mapping, shape_infer
from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

from mmprune import tp_adapter


def _originals():
    return (index_mapping.update_concat_index_mapping,
            index_mapping.update_reshape_index_mapping,
            shape_infer.infer_out_channels_recursively, _FlattenIndexMapping.__call__)


def test_the_installed_release_is_a_tested_one():
    assert tp_adapter.check_version() in tp_adapter.TESTED_VERSIONS


def test_an_untested_release_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.metadata, 'version', lambda name: '9.9.9')
    monkeypatch.delenv(tp_adapter.UNTESTED_ENV, raising=False)
    with pytest.raises(RuntimeError, match=r'tested with torch-pruning 1\.6\.1, but 9\.9\.9 is '
                                           r'installed.*pip install torch-pruning==1\.6\.1'):
        tp_adapter.check_version()
    before = _originals()
    with pytest.raises(RuntimeError, match='9.9.9'):
        with tp_adapter.torch_pruning_fixes():
            pass  # pragma: no cover - refused before anything is patched
    assert _originals() == before
    monkeypatch.setenv(tp_adapter.UNTESTED_ENV, '1')
    assert tp_adapter.check_version() == '9.9.9'  # on with a warning


def test_fixes_are_on_only_inside_the_context_even_when_it_fails():
    from torch_pruning import dependency
    before = _originals()
    with pytest.raises(KeyError):
        with tp_adapter.torch_pruning_fixes():
            inside = _originals()
            assert all(a is not b for a, b in zip(inside, before))
            with tp_adapter.torch_pruning_fixes():  # nested: the same fixes, not wrapped twice
                assert _originals() == inside
            assert _originals() == inside
            raise KeyError('boom')
    assert _originals() == before
    assert dependency.DependencyGraph is DependencyGraph
