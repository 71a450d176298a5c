# DeepLabV3+ (depthwise-separable ASPP + low-level decoder) with the ImageNet MobileNetV2
# backbone at output stride 16 (last two stages dilated) and an auxiliary FCN head, on CamVid;
# data, pipelines, schedule and evaluator from the Semantic FPN config next to it.
# Get the data and the backbone: see fpn_mbv2_camvid.py.
# Train:  python $(python -c 'import mmseg,os;print(os.path.dirname(mmseg.__file__))')/.mim/tools/train.py THIS
_base_ = ['./fpn_mbv2_camvid.py']

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(strides=(1, 2, 2, 2, 1, 1, 1), dilations=(1, 1, 1, 1, 1, 2, 2)),
    neck=None,
    decode_head=dict(
        _delete_=True, type='DepthwiseSeparableASPPHead', in_channels=320, in_index=3,
        channels=64, dilations=(1, 6, 12, 18), c1_in_channels=24, c1_channels=12,
        dropout_ratio=0.1, num_classes=11, norm_cfg=norm_cfg, align_corners=False,
        ignore_index=11,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    # loss-only head on the stride-16 96-channel stage: pruning must keep it consistent
    auxiliary_head=dict(
        type='FCNHead', in_channels=96, in_index=2, channels=32, num_convs=1, concat_input=False,
        dropout_ratio=0.1, num_classes=11, norm_cfg=norm_cfg, align_corners=False,
        ignore_index=11,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)))
