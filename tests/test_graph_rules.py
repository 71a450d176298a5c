"""Patterns that broke zoo families, packed into one small segmentor.

``QuirkyNet`` has a concat whose first piece is untraced (CGNet concatenates
the down-sampled image), a one-channel gate broadcast over a wide feature
(PIDNet's boundary attention), a layer whose output feeds a no-grad region and
is contracted with a constant matrix (EMANet's bases), and a grouped conv that
is not depthwise (ResNeSt, BiSeNetV2). Pruning must leave the channels the
rules keep, still prune the rest, and give a model that runs every mode and
rebuilds from its structure. (The zoo families themselves are exercised by
``benchmarks/coverage.py``; this toy does not trigger every torch-pruning bug
the rules work around.)
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmcv.ops import DeformConv2d, ModulatedDeformConv2dPack
from mmengine.config import Config
from mmengine.model import BaseModule
from mmseg.models.decode_heads import FCNHead
from mmseg.registry import MODELS as SEG_MODELS
from mmseg.structures import SegDataSample

import mmprune
from mmprune.tracing import make_batch, tensor_forward
from mmprune.models import build_pruned_model

from conftest import state_equal

BN = dict(type='BN')


@SEG_MODELS.register_module(force=True)
class QuirkyNet(BaseModule):

    def __init__(self):
        super().__init__()
        self.stem = ConvModule(3, 16, 3, stride=2, padding=1, norm_cfg=BN)
        self.body = ConvModule(16 + 3, 32, 3, padding=1, norm_cfg=BN)
        self.gate = ConvModule(32, 1, 1, norm_cfg=BN, act_cfg=None)
        self.side = ConvModule(32, 32, 1, norm_cfg=BN)
        self.mid = nn.Conv2d(32, 32, 1)
        self.register_buffer('bases', torch.randn(1, 32, 4))
        self.grouped = nn.Conv2d(32, 64, 3, padding=1, groups=2)
        self.out = ConvModule(64, 32, 1, norm_cfg=BN)

    def forward(self, x):
        image = F.avg_pool2d(x, 2)  # untraced: no layer defines its channels
        stem = self.stem(x)
        f = self.body(torch.cat([image, stem], 1))
        gate = torch.sigmoid(self.gate(f))  # one channel broadcast over 32
        f = gate * f + (1 - gate) * self.side(f)
        m = self.mid(f)
        bases = self.bases.expand(m.shape[0], -1, -1)
        with torch.no_grad():  # mid's output only feeds this region
            att = torch.einsum('bchw,bck->bkhw', m, bases).softmax(1)
        f = f + torch.einsum('bkhw,bck->bchw', att, bases)
        f = f + torch.einsum('bchw,bck->bkhw', f, bases).mean(1, keepdim=True)
        return (self.out(self.grouped(f)),)


def _cfg():
    return Config(dict(
        default_scope='mmseg',
        model=dict(
            type='EncoderDecoder',
            data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.7, 116.3, 103.5],
                                   std=[58.4, 57.1, 57.4], bgr_to_rgb=True, size=(64, 64)),
            backbone=dict(type='QuirkyNet'),
            decode_head=dict(type='FCNHead', in_channels=32, channels=16, num_convs=1,
                             concat_input=False, num_classes=3, norm_cfg=BN),
            train_cfg=dict(), test_cfg=dict(mode='whole'))))


def _built(backbone: str):
    """The toy segmentor with ``backbone``, built with seed 0."""
    torch.manual_seed(0)
    cfg = _cfg()
    cfg.model.backbone = dict(type=backbone)
    return mmprune.build_model(cfg)


def _built_dense(backbone: str):
    """:func:`_built`, an example batch and the dense model's output shapes."""
    model, cfg = _built(backbone)
    batch = make_batch(model, cfg, (64, 64))
    model.eval()
    with torch.no_grad():
        dense = [o.shape for o in tensor_forward(model, batch)]
    return model, cfg, batch, dense


def test_quirky_patterns_prune_into_a_working_model():
    torch.manual_seed(0)
    model, cfg = mmprune.build_model(_cfg())
    batch = make_batch(model, cfg, (64, 64))
    model.eval()
    with torch.no_grad():
        dense = [o.shape for o in tensor_forward(model, batch)]
    result = mmprune.prune(model, 0.5, cfg=cfg, input_shape=(64, 64))
    bb = model.backbone
    assert bb.stem.conv.out_channels < 16 and bb.body.conv.in_channels == bb.stem.conv.out_channels + 3
    assert bb.gate.conv.out_channels == 1
    # the grouped conv keeps both sides, and so does what feeds the no-grad region
    assert (bb.grouped.in_channels, bb.grouped.out_channels) == (32, 64)
    assert bb.mid.out_channels == 32 and 'backbone.mid' in result.output_layers
    assert model.decode_head.convs[0].conv.out_channels < 16  # the head is still pruned

    model.eval()
    with torch.no_grad():
        assert [o.shape for o in tensor_forward(model, batch)] == dense
        model(batch['inputs'], batch['data_samples'], mode='predict')
    model.train()
    train_batch = make_batch(model, cfg, (64, 64), batch_size=2, training=True)
    loss, _ = model.parse_losses(model(train_batch['inputs'], train_batch['data_samples'],
                                       mode='loss'))
    loss.backward()

    _assert_rebuilds(model, cfg, result, batch)


def _assert_rebuilds(model, cfg, result, batch):
    """The config plus the structure rebuild ``model``: same weights, same outputs."""
    rebuilt = build_pruned_model(copy.deepcopy(cfg.model), result.structure)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        for a, b in zip(tensor_forward(model, batch), tensor_forward(rebuilt, batch)):
            assert torch.allclose(a, b, atol=1e-6)


@SEG_MODELS.register_module(force=True)
class ChunkyNet(BaseModule):
    """Channel chunks mixed across branches (Res2Net), a flatten into a Linear
    in a model that also has token Linears (Swin + RoI head), a Linear's output
    cut into ranges (KNet's and Sparse R-CNN's dynamic convs) and a layer's
    weight read as a feature (KNet's first kernels)."""

    def __init__(self):
        super().__init__()
        self.stem = ConvModule(3, 16, 3, stride=2, padding=1, norm_cfg=BN)
        self.conv1 = ConvModule(16, 24, 1, norm_cfg=BN)
        self.convs = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1) for _ in range(2)])
        self.conv3 = ConvModule(24, 32, 1, norm_cfg=BN)
        self.tokens = nn.Linear(32, 32)
        self.pre = nn.Conv2d(32, 16, 1)
        self.fc = nn.Linear(16 * 4, 32)
        self.dynamic = nn.Linear(32, 64)
        self.cls = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        x = self.stem(x)
        spx = torch.split(self.conv1(x), 8, 1)
        sp = self.convs[0](spx[0])
        out = [sp]
        sp = self.convs[1](sp + spx[1])
        f = self.conv3(torch.cat(out + [sp, spx[2]], 1))
        b, c, h, w = f.shape
        t = self.tokens(f.flatten(2).transpose(1, 2))  # a Linear with 3-D output
        f = f + t.transpose(1, 2).reshape(b, c, h, w)
        v = self.fc(torch.flatten(F.adaptive_avg_pool2d(self.pre(f), 2), 1))
        params = self.dynamic(v)
        scale, shift = params[:, :32], params[:, -32:]
        f = f * scale[:, :, None, None].sigmoid() + shift[:, :, None, None]
        kernels = self.cls.weight.clone()
        return (F.conv2d(f, kernels) + self.cls(f),)


def test_chunks_flatten_ranges_and_weights_as_features():
    model, cfg, batch, dense = _built_dense('ChunkyNet')
    mmprune.prune(model, 0.5, cfg=cfg, input_shape=(64, 64))
    bb = model.backbone
    assert bb.conv1.conv.out_channels == 24  # the chunked feature keeps its width
    assert bb.conv3.conv.in_channels == 16 + bb.convs[1].out_channels
    assert bb.pre.out_channels < 16 and bb.fc.in_features == 4 * bb.pre.out_channels
    assert bb.dynamic.out_features == 64
    assert (bb.cls.in_channels, bb.cls.out_channels) == (32, 32)
    model.eval()
    with torch.no_grad():
        assert [o.shape for o in tensor_forward(model, batch)] == dense
        model(batch['inputs'], batch['data_samples'], mode='predict')


@SEG_MODELS.register_module(force=True)
class AttentionNet(BaseModule):
    """SegFormer's pattern: maps to tokens, mmcv's attention wrapper (keyword call,
    batch-first transposes, a strided conv reducing keys and values) over a
    2-head ``nn.MultiheadAttention``, a residual add, and tokens back to maps
    with ``nlc_to_nchw`` (width taken from the tokens)."""

    def __init__(self):
        super().__init__()
        from mmseg.models.backbones.mit import EfficientMultiheadAttention
        self.stem = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(32)
        self.attn = EfficientMultiheadAttention(32, 2, sr_ratio=2, batch_first=True)
        self.out = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        from mmseg.models.utils import nchw_to_nlc, nlc_to_nchw
        f = self.stem(x)
        hw = f.shape[2:]
        t = nchw_to_nlc(f)
        t = self.attn(self.norm(t), hw, identity=t)
        return (self.out(nlc_to_nchw(t, hw)),)


def _kept_rows(dense: torch.Tensor, pruned: torch.Tensor) -> list:
    """Indices of the rows of ``dense`` that ``pruned`` kept (rows are unique)."""
    flat = dense.flatten(1)
    return sorted(int((flat == row).all(1).nonzero()[0]) for row in pruned.flatten(1))


def test_attention_embedding_pruned_alike_in_every_head():
    model, cfg = _built('AttentionNet')
    dense_model = copy.deepcopy(model)
    batch = make_batch(model, cfg, (64, 64))
    model.eval()
    with torch.no_grad():
        dense = [o.shape for o in tensor_forward(model, batch)]
    result = mmprune.prune(model, 0.5, cfg=cfg, input_shape=(64, 64))
    mha = model.backbone.attn.attn
    assert mha.embed_dim < 32 and mha.num_heads == 2 and mha.head_dim * 2 == mha.embed_dim
    assert model.backbone.attn.sr.out_channels == mha.embed_dim
    # the residual stream's channels (the stem's kept filters) are the same ones in both heads
    kept = _kept_rows(dense_model.backbone.stem.weight, model.backbone.stem.weight)
    assert len(kept) == mha.embed_dim
    assert [k for k in kept if k < 16] == [k - 16 for k in kept if k >= 16]
    model.eval()
    with torch.no_grad():
        assert [o.shape for o in tensor_forward(model, batch)] == dense
    _assert_rebuilds(model, cfg, result, batch)


@SEG_MODELS.register_module(force=True)
class ReassembleNet(BaseModule):
    """DPT's reassemble pattern: a Linear over tokens whose output is reshaped to
    the shape of another feature (here one whose width a constant fixes)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.register_buffer('pos', torch.randn(1, 32, 1, 1))
        self.project = nn.Linear(32, 32)
        self.out = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        f = self.stem(x) + self.pos  # a constant: the stem keeps its width
        t = self.project(f.flatten(2).transpose(1, 2))
        return (self.out(t.transpose(1, 2).reshape(f.shape)),)


def test_reshape_to_a_width_from_elsewhere_is_pruned_again_with_it_kept():
    model, cfg = _built('ReassembleNet')
    batch = make_batch(model, cfg, (64, 64))
    mmprune.prune(model, 0.5, cfg=cfg, input_shape=(64, 64))
    bb = model.backbone
    assert bb.stem.out_channels == 32 and bb.project.out_features == 32
    assert bb.out.out_channels < 32  # the rest is still pruned
    model.eval()
    with torch.no_grad():
        tensor_forward(model, batch)


@SEG_MODELS.register_module(force=True)
class FFNNet(BaseModule):
    """The DETR family's feed-forward layers: mmcv's ``FFN`` on tokens, a Linear on a
    3-D input (its output is a view) followed by ``ReLU(inplace=True)``, which rebases
    the view's autograd history."""

    def __init__(self):
        super().__init__()
        from mmcv.cnn.bricks.transformer import FFN
        self.stem = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.ffn = FFN(embed_dims=32, feedforward_channels=64)
        self.out = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        f = self.stem(x)
        b, c, h, w = f.shape
        t = self.ffn(f.flatten(2).transpose(1, 2).contiguous())  # contiguous: a view out
        return (self.out(t.transpose(1, 2).reshape(b, c, h, w)),)


def test_ffn_hidden_layer_with_inplace_activation_is_pruned():
    model, cfg, batch, dense = _built_dense('FFNNet')
    relu = model.backbone.ffn.layers[0][1]
    assert relu.inplace
    result = mmprune.prune(model, 0.5, cfg=cfg, input_shape=(64, 64))
    first, second = model.backbone.ffn.layers[0][0], model.backbone.ffn.layers[1]
    assert first.out_features == second.in_features < 64  # the hidden width is pruned
    assert 'backbone.ffn.layers.0.0' not in result.output_layers
    assert relu.inplace  # restored after tracing
    with torch.no_grad():
        assert [o.shape for o in tensor_forward(model, batch)] == dense
    _assert_rebuilds(model, cfg, result, batch)


def test_ffn_stays_prunable_across_target_flops_trials():
    """The search restores the model between trials; that must not turn the
    activations back in-place while tracing (the hidden width would then stay whole)."""
    model, cfg = _built('FFNNet')
    result = mmprune.prune(model, cfg=cfg, input_shape=(64, 64), target_flops=0.3)
    first = model.backbone.ffn.layers[0][0]
    assert abs(result.flops_ratio - 0.3) < 0.03
    assert first.out_features < 64 and model.backbone.ffn.layers[0][1].inplace
    assert not any('inplace' in attrs for attrs in result.structure['layers'].values())


def _without(monkeypatch, rule: str) -> None:
    """Prunes from now on trace with ``rule`` switched off."""
    import functools

    import mmprune.pruner as pruner
    from mmprune.tracing import TraceContext
    monkeypatch.setattr(pruner, 'TraceContext',
                        functools.partial(TraceContext, disabled=frozenset({rule})))


@pytest.mark.parametrize('rule, toy, needed', [
    # Res2Net's chunks: torch-pruning maps the chunk ranges out of bounds
    ('channel_split', 'ChunkyNet', 'fails'),
    # DPT's reshape to another feature's width: the pruned model cannot run
    ('tokens_to_maps', 'ReassembleNet', 'fails'),
    # a constant added to a feature (position encodings) fixes its width
    ('constant_operand', 'ReassembleNet', 'fails'),
    # a grouped conv that is not depthwise keeps both sides
    ('grouped_convs', 'QuirkyNet', 'structure'),
])
def test_each_rule_is_needed(rule, toy, needed, monkeypatch):
    """With the rule the toy prunes into a working model; without it the prune fails (and
    restores the model), or gives another structure (the grouped conv pruned)."""
    model, cfg, batch, dense = _built_dense(toy)
    kept = mmprune.prune(copy.deepcopy(model), 0.5, cfg=cfg, input_shape=(64, 64))
    _without(monkeypatch, rule)
    if needed == 'fails':
        state = copy.deepcopy(model.state_dict())
        with pytest.raises(RuntimeError):
            mmprune.prune(model, 0.5, cfg=cfg, input_shape=(64, 64))
        assert state_equal(state, model.state_dict())
    else:
        broken = mmprune.prune(model, 0.5, cfg=cfg, input_shape=(64, 64))
        assert broken.structure != kept.structure
        assert model.backbone.grouped.out_channels < 64  # the layer torch-pruning mis-indexes


def test_concat_with_an_untraced_piece_prunes_the_traced_pieces_channels(monkeypatch):
    """CGNet's concat of the image and a feature: with the recorded layout the body conv
    loses the input channels of the stem's pruned filters and keeps the image's three;
    without it torch-pruning's offsets start at 0 and cut into the image's columns."""
    def image_columns_kept(model, dense):
        """Whether every filter of the pruned body conv has its dense image columns."""
        pruned = model.backbone.body.conv.weight[:, :3].flatten(1)
        whole = dense.backbone.body.conv.weight[:, :3].flatten(1)
        return all(bool((whole == row).all(1).any()) for row in pruned)
    model, cfg, batch, dense = _built_dense('QuirkyNet')
    kept = copy.deepcopy(model)
    mmprune.prune(kept, 0.5, cfg=cfg, input_shape=(64, 64))
    assert image_columns_kept(kept, model)
    _without(monkeypatch, 'concat_layout')
    shifted = copy.deepcopy(model)
    mmprune.prune(shifted, 0.5, cfg=cfg, input_shape=(64, 64))
    assert not image_columns_kept(shifted, model)


@SEG_MODELS.register_module(force=True)
class GateNet(BaseModule):
    """A one-channel gate multiplied into a wide feature (PIDNet's boundary attention,
    BiSeNetV2's gates)."""

    def __init__(self):
        super().__init__()
        self.stem = ConvModule(3, 32, 3, stride=2, padding=1, norm_cfg=BN)
        self.gate = nn.Conv2d(32, 1, 1)
        self.out = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        f = self.stem(x)
        return (self.out(f * torch.sigmoid(self.gate(f))),)


def test_a_one_channel_gate_does_not_pin_the_feature_it_scales(monkeypatch):
    model, cfg, batch, dense = _built_dense('GateNet')
    pruned = copy.deepcopy(model)
    mmprune.prune(pruned, 0.5, cfg=cfg, input_shape=(64, 64))
    assert pruned.backbone.stem.conv.out_channels == pruned.backbone.gate.in_channels < 32
    assert pruned.backbone.gate.out_channels == 1
    with torch.no_grad():
        assert [o.shape for o in tensor_forward(pruned.eval(), batch)] == dense
    _without(monkeypatch, 'broadcast_gate')  # the gate's one channel couples with all 32
    mmprune.prune(model, 0.5, cfg=cfg, input_shape=(64, 64))
    assert model.backbone.stem.conv.out_channels == 32


# --- one test per rule that still lacked one: each prunes a small model with the rule on
# (specific widths kept / pruned, a working model) and shows what goes wrong without it


def _fails_and_restores(monkeypatch, rule: str, model, cfg, error=RuntimeError,
                        match=None, shape=(64, 64)) -> None:
    """With ``rule`` off the prune of ``model`` raises ``error`` and leaves it as it was."""
    _without(monkeypatch, rule)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=match):
        mmprune.prune(model, 0.5, cfg=cfg, input_shape=shape)
    assert state_equal(state, model.state_dict())


def _same_outputs(model, batch, dense) -> None:
    model.eval()
    with torch.no_grad():
        assert [o.shape for o in tensor_forward(model, batch)] == dense


@SEG_MODELS.register_module(force=True)
class SliceNet(BaseModule):
    """A dynamic conv's parameters: one Linear's output cut into a scale (the first 32
    channels) and a shift (the last 32, a negative range), as KNet and Sparse R-CNN cut
    their dynamic params."""

    def __init__(self):
        super().__init__()
        self.stem = ConvModule(3, 32, 3, stride=2, padding=1, norm_cfg=BN)
        self.dynamic = nn.Linear(32, 64)
        self.out = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        f = self.stem(x)
        params = self.dynamic(f.mean((2, 3)))
        scale, shift = params[:, :32], params[:, -32:]
        return (self.out(f * scale[:, :, None, None].sigmoid() + shift[:, :, None, None]),)


def test_channel_slice_keeps_the_width_of_a_feature_cut_into_ranges(monkeypatch):
    """Without ``channel_slice`` torch-pruning maps the ranges of ``dynamic``'s output out
    of bounds: scoring its group fails (an overflowing index)."""
    model, cfg, batch, dense = _built_dense('SliceNet')
    pruned = copy.deepcopy(model)
    mmprune.prune(pruned, 0.5, cfg=cfg, input_shape=(64, 64))
    bb = pruned.backbone
    assert bb.dynamic.out_features == 64 and bb.stem.conv.out_channels == 32
    assert bb.out.out_channels < 32  # the rest is still pruned
    _same_outputs(pruned, batch, dense)
    _fails_and_restores(monkeypatch, 'channel_slice', model, cfg, match='backbone.dynamic')


@SEG_MODELS.register_module(force=True)
class NonLocalNet(BaseModule):
    """A non-local block written with ``matmul`` (NonLocal, DANet): a product of two
    features, then one of the attention map with a third."""

    def __init__(self):
        super().__init__()
        self.stem = ConvModule(3, 32, 3, stride=2, padding=1, norm_cfg=BN)
        self.q = nn.Conv2d(32, 16, 1)
        self.k = nn.Conv2d(32, 16, 1)
        self.v = nn.Conv2d(32, 32, 1)
        self.out = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        f = self.stem(x)
        q, k, v = self.q(f).flatten(2), self.k(f).flatten(2), self.v(f).flatten(2)
        att = torch.matmul(q.transpose(1, 2), k).softmax(-1)
        return (self.out(f + torch.matmul(v, att.transpose(1, 2)).view_as(f)),)


@SEG_MODELS.register_module(force=True)
class BasesNet(BaseModule):
    """EMANet's pattern without its no-grad region: a feature contracted over its
    channels with a constant matrix (a buffer), and back."""

    def __init__(self):
        super().__init__()
        self.stem = ConvModule(3, 32, 3, stride=2, padding=1, norm_cfg=BN)
        self.mid = nn.Conv2d(32, 32, 1)
        self.register_buffer('bases', torch.randn(1, 32, 4))
        self.out = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        f = self.stem(x)
        m = self.mid(f)
        bases = self.bases.expand(m.shape[0], -1, -1)
        att = torch.einsum('bchw,bck->bkhw', m, bases).softmax(1)
        return (self.out(f + torch.einsum('bkhw,bck->bchw', att, bases)),)


@pytest.mark.parametrize('toy, kept, match', [
    # without the rule: scoring k's group indexes past its 32 channels
    ('NonLocalNet', {'q': 16, 'k': 16, 'v': 32}, 'out of bounds'),
    # without the rule: mid is pruned, and the einsum with the 32-row bases fails
    ('BasesNet', {'mid': 32}, 'einsum'),
])
def test_feature_product_keeps_the_operands_of_products(toy, kept, match, monkeypatch):
    model, cfg, batch, dense = _built_dense(toy)
    pruned = copy.deepcopy(model)
    result = mmprune.prune(pruned, 0.5, cfg=cfg, input_shape=(64, 64))
    bb = pruned.backbone
    assert {name: getattr(bb, name).out_channels for name in kept} == kept
    assert {f'backbone.{name}' for name in kept} <= set(result.output_layers)
    assert bb.out.out_channels < 32
    _same_outputs(pruned, batch, dense)
    _fails_and_restores(monkeypatch, 'feature_product', model, cfg, match=match)


@SEG_MODELS.register_module(force=True)
class KernelNet(BaseModule):
    """KNet's first kernels: the classifier's weight (8 kernels of 32 channels) read as
    8 tokens of width 32 by a kernel-update Linear."""

    def __init__(self):
        super().__init__()
        self.stem = ConvModule(3, 32, 3, stride=2, padding=1, norm_cfg=BN)
        self.cls = nn.Conv2d(32, 8, 1)
        self.kernel_fc = nn.Linear(32, 16)
        self.kernel_out = nn.Linear(16, 1)
        self.out = nn.Conv2d(8, 32, 1)

    def forward(self, x):
        f = self.stem(x)
        kernels = self.cls.weight.clone().flatten(1)  # (8, 32)
        k = self.kernel_out(self.kernel_fc(kernels).relu())  # (8, 1)
        return (self.out(self.cls(f) + k.view(1, 8, 1, 1)),)


def test_weight_as_data_fixes_both_sides_of_the_layer_read(monkeypatch):
    """Without ``weight_as_data`` the classifier's input channels are pruned with the stem
    while ``kernel_fc`` still takes 32: the pruned model's forward fails."""
    model, cfg, batch, dense = _built_dense('KernelNet')
    pruned = copy.deepcopy(model)
    mmprune.prune(pruned, 0.5, cfg=cfg, input_shape=(64, 64))
    bb = pruned.backbone
    assert (bb.cls.in_channels, bb.cls.out_channels) == (32, 8)
    assert bb.stem.conv.out_channels == bb.kernel_fc.in_features == 32
    assert bb.kernel_fc.out_features == bb.kernel_out.in_features < 16  # still pruned
    _same_outputs(pruned, batch, dense)
    _fails_and_restores(monkeypatch, 'weight_as_data', model, cfg, match='mat1 and mat2')


@SEG_MODELS.register_module(force=True)
class SampleHead(FCNHead):
    """An FCN head whose forward needs the data samples, as MaskFormer's and
    Mask2Former's do (its loss and predict pass them)."""

    def forward(self, inputs, batch_data_samples):
        return super().forward(inputs)

    def loss(self, inputs, batch_data_samples, train_cfg):
        return self.loss_by_feat(self.forward(inputs, batch_data_samples), batch_data_samples)

    def predict(self, inputs, batch_img_metas, test_cfg):
        samples = [SegDataSample(metainfo=meta) for meta in batch_img_metas]
        return self.predict_by_feat(self.forward(inputs, samples), batch_img_metas)


@SEG_MODELS.register_module(force=True)
class PlainNet(BaseModule):

    def __init__(self):
        super().__init__()
        self.stem = ConvModule(3, 16, 3, stride=2, padding=1, norm_cfg=BN)
        self.body = ConvModule(16, 32, 3, padding=1, norm_cfg=BN)

    def forward(self, x):
        return (self.body(self.stem(x)),)


def _sample_head_cfg():
    cfg = _cfg()
    cfg.model.backbone = dict(type='PlainNet')
    cfg.model.decode_head.type = 'SampleHead'
    return cfg


def _pointrend_cfg():
    """A tiny PointRend: ResNetV1c-18 at 1/4 width, FPN, FPN head and point head."""
    cfg = _cfg()
    cfg.model = dict(
        type='CascadeEncoderDecoder', num_stages=2,
        data_preprocessor=cfg.model.data_preprocessor,
        backbone=dict(type='ResNetV1c', depth=18, stem_channels=16, base_channels=16,
                      norm_cfg=BN),
        neck=dict(type='FPN', in_channels=[16, 32, 64, 128], out_channels=16, num_outs=4),
        decode_head=[
            dict(type='FPNHead', in_channels=[16] * 4, in_index=[0, 1, 2, 3],
                 feature_strides=[4, 8, 16, 32], channels=16, dropout_ratio=-1,
                 num_classes=3, norm_cfg=BN),
            dict(type='PointHead', in_channels=[16], in_index=[0], channels=16, num_fcs=2,
                 coarse_pred_each_layer=True, dropout_ratio=-1, num_classes=3)],
        train_cfg=dict(num_points=64, oversample_ratio=3, importance_sample_ratio=0.75),
        test_cfg=dict(mode='whole', subdivision_steps=2, subdivision_num_points=64,
                      scale_factor=2))
    return cfg


def _check_sample_head(model):
    bb, head = model.backbone, model.decode_head
    assert bb.body.conv.out_channels == head.convs[0].conv.in_channels < 32
    assert head.convs[0].conv.out_channels == head.conv_seg.in_channels < 16


def _check_point_head(model):
    neck, point = model.neck, model.decode_head[1]
    fine = neck.fpn_convs[0].conv.out_channels
    assert fine < 16 and point.fcs[0].conv.in_channels == fine + 3  # + the coarse scores
    assert point.fcs[0].conv.out_channels < 16


@pytest.mark.parametrize('make_cfg, check', [
    # MaskFormer-style head: without the rule the host's tensor mode calls it without samples
    (_sample_head_cfg, _check_sample_head),
    # PointRend: without the rule the host's tensor mode feeds the point head the FPN
    # features as its fine-grained points (torch.cat of a tuple fails)
    (_pointrend_cfg, _check_point_head),
], ids=['samples_head', 'pointrend'])
def test_inference_graph_traces_what_the_host_tensor_mode_cannot(make_cfg, check,
                                                                 monkeypatch):
    torch.manual_seed(0)
    model, cfg = mmprune.build_model(make_cfg())
    batch = make_batch(model, cfg, (64, 64))
    pruned = copy.deepcopy(model)
    mmprune.prune(pruned, 0.5, cfg=cfg, input_shape=(64, 64))
    check(pruned)
    pruned.eval()
    with torch.no_grad():
        out = pruned(batch['inputs'], batch['data_samples'], mode='predict')
    assert out[0].seg_logits.data.shape[0] == 3
    _fails_and_restores(monkeypatch, 'inference_graph', model, cfg, error=TypeError)


def _ddrnet_cfg():
    """A tiny DDRNet (8 base channels): in training its backbone also returns the stage-3
    spatial feature and its head runs an auxiliary head on it."""
    cfg = _cfg()
    cfg.model.backbone = dict(type='DDRNet', in_channels=3, channels=8, ppm_channels=16,
                              norm_cfg=BN)
    cfg.model.decode_head = dict(
        type='DDRHead', in_channels=32, channels=16, dropout_ratio=0., num_classes=3,
        norm_cfg=BN, loss_decode=[dict(type='CrossEntropyLoss', loss_weight=1.0),
                                  dict(type='CrossEntropyLoss', loss_weight=0.4)])
    return cfg


def test_training_branches_prune_the_auxiliary_head_with_its_feature(monkeypatch):
    """Without ``training_branches`` DDRHead's auxiliary head is not traced: its input
    stays 16 wide while the spatial feature it reads in training is pruned, and the
    pruned model fails in mode=loss (the prune fails and restores the model)."""
    torch.manual_seed(0)
    model, cfg = mmprune.build_model(_ddrnet_cfg())
    pruned = copy.deepcopy(model)
    result = mmprune.prune(pruned, 0.5, cfg=cfg, input_shape=(64, 64))
    spatial = pruned.backbone.compression_1.conv.out_channels  # the stage-3 spatial width
    aux = pruned.decode_head.aux_head
    assert spatial < 16 and aux[0].conv.in_channels == aux[0].bn.num_features == spatial
    assert 'decode_head.aux_cls_seg' in result.output_layers
    pruned.train()
    train_batch = make_batch(pruned, cfg, (64, 64), batch_size=2, training=True)
    losses = pruned(train_batch['inputs'], train_batch['data_samples'], mode='loss')
    assert {'decode.loss_context', 'decode.loss_spatial'} <= set(losses)  # both heads run
    _fails_and_restores(monkeypatch, 'training_branches', model, cfg, match='mode=loss')


def _cascade_cfg():
    """A tiny two-stage Cascade R-CNN (ResNet-18 at 1/4 width, 3 classes)."""
    from mmprune.apis import load_config
    cfg = load_config('mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py')
    model = cfg.model
    model.backbone.update(depth=18, base_channels=16, frozen_stages=1, init_cfg=None)
    model.neck.update(in_channels=[16, 32, 64, 128], out_channels=32)
    model.rpn_head.update(in_channels=32, feat_channels=32)
    roi = model.roi_head
    roi.update(num_stages=2, stage_loss_weights=[1, 0.5])
    roi.bbox_roi_extractor.update(out_channels=32)
    roi.bbox_head = roi.bbox_head[:2]
    for head in roi.bbox_head:
        head.update(in_channels=32, fc_out_channels=64, num_classes=3)
    model.train_cfg.rcnn = model.train_cfg.rcnn[:2]
    return cfg


def test_detached_rois_let_a_cascade_prune_its_neck(monkeypatch):
    """Stage 2's RoIs are stage 1's boxes regressed by ``fc_reg``. Without
    ``detached_rois`` torch-pruning couples those box coordinates with the RoI features:
    the FPN's outputs (and the first fc of every stage) are left unpruned. (With the
    default three stages torch-pruning's grouping does not even finish: a group grows
    without bound.)"""
    torch.manual_seed(0)
    model, cfg = mmprune.build_model(_cascade_cfg())
    batch = make_batch(model, cfg, (64, 64))
    pruned = copy.deepcopy(model)
    mmprune.prune(pruned, 0.5, cfg=cfg, input_shape=(64, 64))
    width = pruned.neck.fpn_convs[0].conv.out_channels
    assert width < 32
    assert all(c.conv.out_channels == width for c in pruned.neck.fpn_convs)
    assert [h.shared_fcs[0].in_features for h in pruned.roi_head.bbox_head] == [49 * width] * 2
    pruned.eval()
    with torch.no_grad():
        pruned(batch['inputs'], batch['data_samples'], mode='predict')

    _without(monkeypatch, 'detached_rois')
    mmprune.prune(model, 0.5, cfg=cfg, input_shape=(64, 64))
    assert [c.conv.out_channels for c in model.neck.fpn_convs] == [32] * 4
    assert [h.shared_fcs[0].in_features for h in model.roi_head.bbox_head] == [49 * 32] * 2


class _Unbounded(Exception):
    pass


def _bounded_groups(monkeypatch, limit: int = 1000) -> None:
    """torch-pruning's groups raise :class:`_Unbounded` past ``limit`` members instead of
    growing forever (its grouping loop has no bound of its own)."""
    from torch_pruning.dependency.group import Group
    add_dep = Group.add_dep

    def bounded(self, dep, idxs):
        add_dep(self, dep, idxs)
        if len(self) > limit:
            raise _Unbounded(f'a group of {len(self)} members; last {dep}')

    monkeypatch.setattr(Group, 'add_dep', bounded)


@SEG_MODELS.register_module(force=True)
class DeformNet(BaseModule):
    """A DCNv2 layer (mmcv's ``ModulatedDeformConv2dPack``: its ``conv_offset`` predicts
    offsets and masks from the layer's input), as in DCNv2 backbones."""

    def __init__(self):
        super().__init__()
        self.stem = ConvModule(3, 32, 3, stride=2, padding=1, norm_cfg=BN)
        self.dcn = ModulatedDeformConv2dPack(32, 32, 3, padding=1)
        self.out = ConvModule(32, 32, 1, norm_cfg=BN)

    def forward(self, x):
        return (self.out(self.dcn(self.stem(x))),)


def test_deformable_offsets_keep_the_dcn_group_finite(monkeypatch):
    """Without ``deformable_offsets`` the offsets and masks (chunked, concatenated,
    sigmoid) reach the deformable conv's input in torch-pruning's graph, and the group of
    its input channels grows without bound: the indices shift on every turn of the
    cycle, so the prune never ends (here it is stopped at 1000 members; with the rule a
    group has a handful)."""
    _bounded_groups(monkeypatch)
    model, cfg, batch, dense = _built_dense('DeformNet')
    pruned = copy.deepcopy(model)
    mmprune.prune(pruned, 0.5, cfg=cfg, input_shape=(64, 64))
    bb = pruned.backbone
    assert bb.dcn.conv_offset.in_channels == bb.dcn.in_channels == bb.stem.conv.out_channels
    assert bb.dcn.conv_offset.out_channels == 27  # 2 x 9 offsets and 9 masks
    assert bb.out.conv.out_channels < 32
    _same_outputs(pruned, batch, dense)
    _fails_and_restores(monkeypatch, 'deformable_offsets', model, cfg, error=_Unbounded)


@SEG_MODELS.register_module(force=True)
class OffsetNet(BaseModule):
    """A deformable conv given offsets predicted by another layer (DyHead, RepPoints,
    VFNet)."""

    def __init__(self):
        super().__init__()
        self.stem = ConvModule(3, 32, 3, stride=2, padding=1, norm_cfg=BN)
        self.offset = nn.Conv2d(32, 18, 3, padding=1)
        self.dcn = DeformConv2d(32, 32, 3, padding=1)
        self.out = ConvModule(32, 32, 1, norm_cfg=BN)

    def forward(self, x):
        f = self.stem(x)
        return (self.out(self.dcn(f, self.offset(f))),)


def test_external_offsets_keep_the_offset_layer_whole(monkeypatch):
    """Without ``external_offsets`` the offset layer's 18 outputs are pruned with the
    deformable conv's input channels, and the pruned forward fails."""
    model, cfg, batch, dense = _built_dense('OffsetNet')
    pruned = copy.deepcopy(model)
    result = mmprune.prune(pruned, 0.5, cfg=cfg, input_shape=(64, 64))
    bb = pruned.backbone
    assert bb.offset.out_channels == 18 and 'backbone.offset' in result.output_layers
    assert bb.stem.conv.out_channels == bb.offset.in_channels == bb.dcn.in_channels < 32
    _same_outputs(pruned, batch, dense)
    _fails_and_restores(monkeypatch, 'external_offsets', model, cfg,
                        match='number of channels of offset')
