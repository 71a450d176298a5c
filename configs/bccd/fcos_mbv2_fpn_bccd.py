# FCOS (anchor-free, centre-ness branch, GroupNorm head) with the ImageNet MobileNetV2 backbone
# on BCCD; data, pipelines, schedule and evaluator from the RetinaNet config next to it.
# Get the data and the backbone: see retinanet_mbv2_fpn_bccd.py.
# Train:  python $(python -c 'import mmdet,os;print(os.path.dirname(mmdet.__file__))')/.mim/tools/train.py THIS
_base_ = ['./retinanet_mbv2_fpn_bccd.py']

model = dict(
    type='FCOS',
    neck=dict(add_extra_convs='on_output', relu_before_extra_convs=True),
    bbox_head=dict(
        _delete_=True, type='FCOSHead', num_classes=3, in_channels=64, stacked_convs=2,
        feat_channels=64, strides=[8, 16, 32, 64, 128],
        norm_cfg=dict(type='GN', num_groups=16, requires_grad=True),
        centerness_on_reg=True, norm_on_bbox=True, center_sampling=True, conv_bias=True,
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    # FCOS assigns points to boxes itself: no assigner / sampler
    train_cfg=None,
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                  nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
