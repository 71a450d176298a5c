# RetinaNet with an ImageNet MobileNetV2 backbone (torchvision weights, converted) on BCCD
# blood-cell detection: 3 classes, 205 train / 87 val images at 640x480, resized to 384x288.
# Get the data:  git clone https://github.com/Shenggan/BCCD_Dataset && ln -s $PWD/BCCD_Dataset/BCCD data/bccd
# Get the backbone:  python tools/convert_mobilenetv2.py mobilenet_v2-b0353104.pth \
#                        checkpoints/mobilenetv2_mmdet.pth --style mmdet
# Train:  python $(python -c 'import mmdet,os;print(os.path.dirname(mmdet.__file__))')/.mim/tools/train.py THIS
_base_ = ['mmdet::_base_/default_runtime.py']

data_root = 'data/bccd/'
backbone_checkpoint = 'checkpoints/mobilenetv2_mmdet.pth'
classes = ('RBC', 'WBC', 'Platelets')
scale = (384, 288)

model = dict(
    type='RetinaNet',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(type='MobileNetV2', out_indices=(2, 4, 6), frozen_stages=-1,
                  norm_cfg=dict(type='BN', requires_grad=True), act_cfg=dict(type='ReLU6'),
                  init_cfg=dict(type='Pretrained', checkpoint=backbone_checkpoint)),
    neck=dict(type='FPN', in_channels=[32, 96, 320], out_channels=64, start_level=0,
              add_extra_convs='on_input', num_outs=5),
    bbox_head=dict(
        type='RetinaHead', num_classes=len(classes), in_channels=64, stacked_convs=2,
        feat_channels=64,
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
                              ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                        target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    train_cfg=dict(
        assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                      ignore_iof_thr=-1),
        sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1, debug=False),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                  nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5, direction=['horizontal', 'vertical']),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
# mmdet's VOCDataset reads the VOC layout; two BCCD boxes have zero area: bbox_min_size=1
# marks them ignored in training.
train_dataloader = dict(
    batch_size=8, num_workers=2, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(type='VOCDataset', data_root=data_root, metainfo=dict(classes=classes),
                 ann_file='ImageSets/Main/train.txt', data_prefix=dict(sub_data_root=''),
                 filter_cfg=dict(filter_empty_gt=True, min_size=32, bbox_min_size=1),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='VOCDataset', data_root=data_root, metainfo=dict(classes=classes),
                 ann_file='ImageSets/Main/val.txt', data_prefix=dict(sub_data_root=''),
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
# VOC-style mAP@0.5 (area under the interpolated PR curve, as VOC2010+)
val_evaluator = dict(type='VOCMetric', metric='mAP', eval_mode='area', iou_thrs=[0.5])
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=4)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
                     clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs,
         eta_min=1e-4),
]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=4, max_keep_ckpts=2,
                                     save_best='pascal_voc/mAP', rule='greater'),
                     logger=dict(type='LoggerHook', interval=10))
auto_scale_lr = dict(enable=False, base_batch_size=8)
