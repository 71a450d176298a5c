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
from mmengine.config import Config
from mmengine.model import BaseModule
from mmseg.registry import MODELS as SEG_MODELS

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

