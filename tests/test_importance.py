import pytest
import torch_pruning as tp

from mmprune.importance import (build_importance, importance_names, per_sample_gradients,
                                reads_gradients)


@pytest.mark.parametrize('name', importance_names())
def test_every_name_builds_a_torch_pruning_importance(name):
    assert isinstance(build_importance(name), tp.importance.Importance)


def test_kwargs_and_errors():
    imp = build_importance(dict(type='group_l2', group_reduction='max'))
    assert imp.group_reduction == 'max' and imp.p == 2
    with pytest.raises(ValueError, match="Unknown importance 'nope'"):
        build_importance('nope')
    with pytest.raises(ValueError, match='Bad arguments'):
        build_importance(dict(type='l1', nonsense=True))


def test_gradient_criteria_are_recognised_by_their_class():
    assert [n for n in importance_names() if reads_gradients(build_importance(n))] == [
        'group_hessian', 'group_taylor', 'hessian', 'taylor']
    assert [n for n in importance_names() if per_sample_gradients(build_importance(n))] == [
        'group_hessian', 'hessian']
