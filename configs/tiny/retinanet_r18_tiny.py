# A tiny RetinaNet (ResNet-18 at 1/4 width, 3 classes) for tests and CPU demos.
_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'
model = dict(
    backbone=dict(base_channels=16, frozen_stages=1, init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
    bbox_head=dict(num_classes=3, in_channels=32, feat_channels=32, stacked_convs=2))
