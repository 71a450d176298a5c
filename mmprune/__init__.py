"""mmprune: structural channel pruning for OpenMMLab detection and segmentation models."""
from .apis import build_model, load_config, load_pruned, save_pruned
from .checkpoint import allow_mmengine_types
from .configs import config_path, configs_dir
from .distill import DistillHook
from .flops import count_flops_params
from .hooks import PruningHook
from .models import build_pruned_model
from .options import PruneOptions
from .pruner import PruneResult, prune
from .sparse import SparseOptimWrapperConstructor
from .structure import apply_structure, kept_channels, structure_hash

__version__ = '0.1.0'

# Runner checkpoints (of hook runs too) load under torch's weights_only=True default
# wherever a config names an mmprune type, e.g. init_detector(pruned config, checkpoint)
allow_mmengine_types()

__all__ = ['prune', 'PruneResult', 'PruneOptions', 'count_flops_params', 'build_model', 'load_config',
           'load_pruned', 'save_pruned', 'build_pruned_model', 'apply_structure',
           'kept_channels', 'structure_hash', 'PruningHook', 'DistillHook',
           'SparseOptimWrapperConstructor', 'config_path', 'configs_dir',
           'allow_mmengine_types', '__version__']
