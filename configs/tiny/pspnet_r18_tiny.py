# A tiny PSPNet (ResNet-18-D8 at 1/4 width, SyncBN, auxiliary FCN head, 11 classes).
_base_ = 'mmseg::pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py'
model = dict(
    pretrained=None,
    backbone=dict(stem_channels=16, base_channels=16),
    decode_head=dict(in_channels=128, channels=32, num_classes=11),
    auxiliary_head=dict(in_channels=64, channels=16, num_classes=11))
