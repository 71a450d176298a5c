"""Depth pruning: residual blocks found from the model, removed, saved and reloaded."""
import copy

import pytest
import torch
from mmengine.config import Config

import mmprune
from mmprune.apis import load_config
from mmprune.depth import SkippedBlock, find_blocks
from mmprune.loss import model_loss
from mmprune.tracing import make_batch

from conftest import state_equal, tensor_outputs, tiny

#: one small host model per block kind: (base config, model overrides, input (h, w),
#: the block class expected)
KINDS = {
    'basic': (tiny('retinanet_r18_tiny'), {}, (96, 128), 'BasicBlock'),
    'bottleneck': (tiny('retinanet_r18_tiny'), dict(
        backbone=dict(depth=50, base_channels=8),
        neck=dict(in_channels=[32, 64, 128, 256])), (96, 128), 'Bottleneck'),
    'res2net': (tiny('retinanet_r18_tiny'), dict(
        backbone=dict(_delete_=True, type='Res2Net', depth=50, base_channels=8, base_width=4,
                      scales=2, out_indices=(0, 1, 2, 3), init_cfg=None),
        neck=dict(in_channels=[32, 64, 128, 256])), (96, 128), 'Bottle2neck'),
    'inverted_residual': (tiny('pspnet_r18_tiny'), dict(
        backbone=dict(_delete_=True, type='MobileNetV2', widen_factor=0.25,
                      strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4, 4),
                      out_indices=(1, 2, 4, 6)),
        decode_head=dict(in_channels=80), auxiliary_head=dict(in_channels=24)),
        (64, 64), 'InvertedResidual'),
    'csp_darknet': ('mmdet::yolox/yolox_tiny_8xb8-300e_coco.py', dict(
        backbone=dict(deepen_factor=0.33, widen_factor=0.125),
        neck=dict(in_channels=[32, 64, 128], out_channels=32),
        bbox_head=dict(in_channels=32, feat_channels=32)), (64, 64), 'DarknetBottleneck'),
    'cspnext': ('mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py', dict(
        backbone=dict(widen_factor=0.125, init_cfg=None),
        neck=dict(in_channels=[32, 64, 128], out_channels=32),
        bbox_head=dict(in_channels=32, feat_channels=32)), (64, 64), 'CSPNeXtBlock'),
    'mit': ('mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py', dict(
        backbone=dict(embed_dims=8, init_cfg=None),
        decode_head=dict(in_channels=[8, 16, 40, 64], channels=32)), (64, 64),
        'TransformerEncoderLayer'),
    'swin': ('mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py', dict(
        backbone=dict(embed_dims=24, depths=(2, 2, 2, 2), init_cfg=None),
        neck=dict(in_channels=[48, 96, 192], out_channels=32),
        bbox_head=dict(in_channels=32, feat_channels=32, stacked_convs=1)), (64, 64),
        'SwinBlock'),
    'pvt': ('mmdet::pvt/retinanet_pvt-t_fpn_1x_coco.py', dict(
        backbone=dict(embed_dims=16, num_layers=[1, 1, 1, 2], init_cfg=None),
        neck=dict(in_channels=[16, 32, 80, 128], out_channels=32),
        bbox_head=dict(in_channels=32, feat_channels=32, stacked_convs=1)), (64, 64),
        'PVTEncoderLayer'),
    'vit': ('mmseg::vit/vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py', dict(
        pretrained=None, backbone=dict(img_size=(64, 64), embed_dims=32, num_layers=4,
                                       num_heads=2, out_indices=(1, 3)),
        neck=dict(in_channels=[32, 32], out_channels=32, scales=[2, 0.5]),
        decode_head=dict(in_channels=[32, 32], in_index=[0, 1], channels=16,
                         pool_scales=(1, 2)),
        auxiliary_head=dict(in_channels=32, in_index=1, channels=16)), (64, 64),
        'TransformerEncoderLayer'),
    'beit': ('mmseg::beit/beit-base_upernet_8xb2-160k_ade20k-640x640.py', dict(
        pretrained=None, backbone=dict(img_size=(64, 64), embed_dims=32, num_layers=4,
                                       num_heads=2, out_indices=(0, 1, 2, 3)),
        neck=dict(embed_dim=32),
        decode_head=dict(in_channels=[32] * 4, channels=16, pool_scales=(1, 2)),
        auxiliary_head=dict(in_channels=32, channels=16)), (64, 64),
        'BEiTTransformerEncoderLayer'),
}


def build(kind: str):
    base, overrides, shape, _ = KINDS[kind]
    cfg = load_config(base)
    cfg.merge_from_dict(dict(model=copy.deepcopy(overrides)))  # merging pops _delete_
    if 'data_preprocessor' in cfg:  # mmseg pads to its crop size
        cfg.data_preprocessor['size'] = shape
    if isinstance(cfg.model.get('data_preprocessor'), dict) \
            and 'size' in cfg.model.data_preprocessor:
        cfg.model.data_preprocessor['size'] = shape
    model, cfg = mmprune.build_model(cfg)
    return model, cfg, shape


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_a_block_of_each_kind_is_removed_saved_reloaded_and_trained(kind, tmp_path):
    model, cfg, shape = build(kind)
    want = KINDS[kind][3]
    result = mmprune.prune(model, pruning_ratio=0.25, cfg=cfg, input_shape=shape,
                           remove_blocks=1, round_to=None)
    assert len(result.removed_blocks) == 1
    name = result.removed_blocks[0]
    skipped = model.get_submodule(name)
    assert isinstance(skipped, SkippedBlock) and skipped.block == want
    # the absence is in the structure and the state dict
    assert result.structure['version'] == 2
    assert result.structure['removed'] == {name: skipped.spec()}
    assert not any(k.startswith(name + '.') for k in model.state_dict())
    assert result.flops[1] < result.flops[0] and result.params[1] < result.params[0]
    cfg_path, ckpt_path = mmprune.save_pruned(model, result.structure, cfg, str(tmp_path),
                                              name=kind)
    reloaded = mmprune.load_pruned(cfg_path, ckpt_path)
    assert isinstance(reloaded.get_submodule(name), SkippedBlock)
    assert state_equal(model.state_dict(), reloaded.state_dict())
    batch = make_batch(model, cfg, shape, seed=3)
    a, b = tensor_outputs(model, batch), tensor_outputs(reloaded, batch)
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    # one training step
    reloaded.train()
    optimizer = torch.optim.SGD(reloaded.parameters(), lr=1e-3)
    loss = model_loss(reloaded, make_batch(reloaded, cfg, shape, batch_size=2, training=True,
                                           seed=4))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


# ---- blocks found from the model: toys --------------------------------------------------
class ConvNeXtBlock(torch.nn.Module):
    """ConvNeXt's block: depthwise 7x7, LayerNorm, MLP, layer scale, then the skip."""

    def __init__(self, c):
        super().__init__()
        self.dwconv = torch.nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = torch.nn.LayerNorm(c)
        self.pw1, self.pw2 = torch.nn.Linear(c, 4 * c), torch.nn.Linear(4 * c, c)
        self.gamma = torch.nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pw2(torch.nn.functional.gelu(self.pw1(y)))
        return x + y.permute(0, 3, 1, 2)


class PostNormSelfAttention(torch.nn.Module):
    """DETR's sub-layer: the skip comes in by keyword (``identity``), or is the query."""

    def __init__(self, c):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(c, 2, batch_first=True)

    def forward(self, query, key=None, identity=None):
        identity = query if identity is None else identity
        return identity + self.attn(query, query, query)[0]


class PositionEmbedding(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.pos = torch.nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x):
        return x + self.pos


class Toy(torch.nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, c, 3, padding=1)
        self.pos = PositionEmbedding(c)  # adds a parameter, has no layer: not a block
        self.plain = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, padding=1),
                                         torch.nn.ReLU())  # same shapes, no skip
        self.chain = torch.nn.Sequential(ConvNeXtBlock(c), ConvNeXtBlock(c))
        self.attn = PostNormSelfAttention(c)
        self.norm = torch.nn.LayerNorm(c)

    def forward(self, x):
        x = self.chain(self.plain(self.pos(self.stem(x))))
        tokens = x.flatten(2).transpose(1, 2)
        return self.norm(self.attn(query=tokens, identity=tokens))


def _toy_forward(model, batch):
    return model(batch['inputs'])


def test_blocks_are_found_from_the_graph_not_from_a_list():
    from mmprune.depth import remove_blocks
    model = Toy().eval()
    batch = dict(inputs=torch.randn(2, 3, 8, 8))
    blocks = find_blocks(model, batch, _toy_forward)
    # a chain of blocks offers its blocks; the keyword skip of a post-norm layer is found
    assert [(b.name, b.type, b.input, b.position) for b in blocks] == [
        ('chain.0', 'ConvNeXtBlock', 'x', 0), ('chain.1', 'ConvNeXtBlock', 'x', 0),
        ('attn', 'PostNormSelfAttention', 'query', 0)]
    with torch.no_grad():
        tokens = model.stem(batch['inputs'])
        tokens = model.chain[1](model.plain(model.pos(tokens))).flatten(2).transpose(1, 2)
        want = model.norm(tokens)
        remove_blocks(model, [blocks[0], blocks[2]])  # each becomes its skip path
        assert torch.equal(model(batch['inputs']), want)


def test_blocks_are_chosen_by_what_skipping_them_changes():
    from mmprune.depth import score_blocks
    model, cfg, shape = build('basic')
    torch.manual_seed(1)
    for name, m in model.backbone.named_modules():  # every block does some work ...
        if type(m).__name__ == 'BasicBlock':
            torch.nn.init.uniform_(m.norm2.weight, 0.5, 1.0)
    torch.nn.init.zeros_(model.backbone.layer3[1].norm2.weight)  # ... but this one
    torch.nn.init.zeros_(model.backbone.layer3[1].norm2.bias)
    batches = [make_batch(model, cfg, shape, training=True, seed=s) for s in (1, 2)]
    blocks = find_blocks(model, batches[0])
    for criterion in ('output', 'loss'):
        scores = score_blocks(model, blocks, batches, criterion)
        assert scores['backbone.layer3.1'] == 0
        assert all(v != 0 for k, v in scores.items() if k != 'backbone.layer3.1')
    scores = score_blocks(model, blocks, batches, 'output')
    assert min(scores, key=scores.get) == 'backbone.layer3.1'
    result = mmprune.prune(model, pruning_ratio=0.0, cfg=cfg, input_shape=shape,
                           remove_blocks=1)
    assert result.removed_blocks == ['backbone.layer3.1']
    assert result.options['remove_blocks'] == 1
    assert result.options['removed_blocks'] == ['backbone.layer3.1']


# ---- bad requests -------------------------------------------------------------------------
@pytest.mark.parametrize('request_, error', [
    (['backbone.layer2.0'], r"'backbone.layer2.0' \(BasicBlock\) cannot be removed: it is not "
                            r"a residual block"),
    (['backbone.layer9'], r"names 'backbone.layer9', which is not a module"),
    (6, r'asks for 6 blocks, but RetinaNet has 5 removable ones'),
])
def test_a_block_that_cannot_go_is_one_clear_error_and_the_model_stays(request_, error):
    model, cfg, shape = build('basic')
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=error):
        mmprune.prune(model, pruning_ratio=0.3, cfg=cfg, input_shape=shape,
                      remove_blocks=request_)
    assert state_equal(model.state_dict(), before)
    assert not any(isinstance(m, SkippedBlock) for m in model.modules())


def test_a_prune_failing_after_the_blocks_went_puts_them_back():
    model, cfg, shape = build('basic')
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match='unreachable'):
        mmprune.prune(model, cfg=cfg, input_shape=shape, remove_blocks=2, target_flops=0.05,
                      max_pruning_ratio=0.2)
    assert state_equal(model.state_dict(), before)
    assert not any(isinstance(m, SkippedBlock) for m in model.modules())


@pytest.mark.parametrize('value', [1.5, -1, [], ['a', 'a'], [3], True])
def test_bad_remove_blocks_values(value):
    with pytest.raises(ValueError, match='remove_blocks'):
        mmprune.PruneOptions(remove_blocks=value)
    assert mmprune.PruneOptions(remove_blocks=1.0).remove_blocks == 1.0  # all of them
    with pytest.raises(ValueError, match='block_criterion'):
        mmprune.PruneOptions(remove_blocks=1, block_criterion='gradient')


def test_structure_with_removed_blocks_is_checked_before_anything_changes(tmp_path):
    from mmprune.structure import apply_structure, compose
    model, cfg, shape = build('basic')
    result = mmprune.prune(model, pruning_ratio=0.0, cfg=cfg, input_shape=shape,
                           remove_blocks=['backbone.layer2.1'])
    structure = result.structure
    fresh, _ = mmprune.build_model(cfg)
    before = copy.deepcopy(fresh.state_dict())
    for bad in (dict(structure, version=1),
                dict(structure, removed={'backbone.layer2.1': {'input': 3}}),
                dict(structure, removed={'backbone.nothing': {'input': 'x'}})):
        with pytest.raises((ValueError, KeyError)):
            apply_structure(fresh, bad)
        assert state_equal(fresh.state_dict(), before)
    # layers inside a block removed later leave the composed structure
    inner = dict(version=1, layers={'backbone.layer2.1.conv1': {'out_channels': 8}},
                 shapes={'backbone.layer2.1.conv1.weight': [8, 32, 3, 3]})
    assert compose(inner, structure) == structure
    # a dense checkpoint into the depth-pruned config is refused, nothing loaded
    cfg_path, ckpt_path = mmprune.save_pruned(model, structure, cfg, str(tmp_path), name='d')
    dense_path = str(tmp_path / 'dense.pth')
    torch.save(dict(state_dict=before), dense_path)
    from mmdet.apis import init_detector
    with pytest.raises(ValueError, match='blocks the pruned structure removed'):
        init_detector(cfg_path, dense_path, device='cpu')


@pytest.mark.parametrize('flag, count', [(['1'], 1), (['0.4'], 2),
                                         (['backbone.layer1.1', 'backbone.layer4.1'], 2)])
def test_prune_command_removes_blocks(flag, count, tmp_path):
    from mmprune.cli import prune as prune_cli
    summary = prune_cli.main([tiny('retinanet_r18_tiny'), '--ratio', '0', '--input-shape',
                              '96', '128', '--out-dir', str(tmp_path), '--remove-blocks', *flag])
    assert len(summary['removed_blocks']) == count
    if count == 2 and len(flag) == 2:
        assert summary['removed_blocks'] == flag
    model = mmprune.load_pruned(summary['pruned_config'], summary['pruned_checkpoint'])
    assert sorted(n for n, m in model.named_modules() if isinstance(m, SkippedBlock)) == \
        sorted(summary['removed_blocks'])


def test_blocks_are_scored_on_training_batches_of_unequal_image_sizes():
    """The run's own batches (PruningHook passes them) hold random crops of unequal sizes,
    which an mmseg preprocessor pads in training mode only."""
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    model, cfg, shape = build('inverted_residual')
    batch = dict(inputs=[], data_samples=[])
    for h, w in ((64, 64), (48, 56)):
        batch['inputs'].append(torch.randint(0, 255, (3, h, w), dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 11, (1, h, w)))
        batch['data_samples'].append(sample)
    result = mmprune.prune(model, cfg=cfg, input_shape=shape, pruning_ratio=0.0,
                           remove_blocks=1, data=[batch])
    assert len(result.removed_blocks) == 1
