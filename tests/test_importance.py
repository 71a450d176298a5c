import pytest
import torch_pruning as tp

from mmprune.importance import IMPORTANCES, build_importance


@pytest.mark.parametrize('name', sorted(IMPORTANCES))
def test_every_name_builds_a_torch_pruning_importance(name):
    assert isinstance(build_importance(name), tp.importance.Importance)


def test_kwargs_and_errors():
    imp = build_importance(dict(type='group_l2', group_reduction='max'))
    assert imp.group_reduction == 'max' and imp.p == 2
    with pytest.raises(ValueError, match="Unknown importance 'nope'"):
        build_importance('nope')
    with pytest.raises(ValueError, match='Bad arguments'):
        build_importance(dict(type='l1', nonsense=True))
