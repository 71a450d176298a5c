# The embedded demo: a small RetinaNet (ResNet-18 at 1/4 width) on mmprune's drawn shapes
# (3 classes, 240 train / 60 val images of 160x128, drawn from a seed into data/shapes/ on
# first use; nothing is downloaded). Trained from scratch in a few minutes on a 2-core CPU.
#   python tools/demo.py          # dense training, prune to 50 % FLOPs, finetune, table + plot
_base_ = '../tiny/retinanet_r18_tiny.py'

data_root = 'data/shapes/'
scale = (160, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
model = dict(backbone=dict(frozen_stages=-1),
             bbox_head=dict(anchor_generator=dict(octave_base_scale=3)))
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(_delete_=True, type='mmprune.ShapesDetection', data_root=data_root,
                 split='train', filter_cfg=dict(filter_empty_gt=True), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(_delete_=True, type='mmprune.ShapesDetection', data_root=data_root,
                 split='val', test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
# the json is drawn with the images when the val dataset is first built (before the metric)
val_evaluator = dict(_delete_=True, type='CocoMetric', ann_file=data_root + 'val.json',
                     metric='bbox')
test_evaluator = val_evaluator

max_epochs = 24
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
                     clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=60),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs,
         eta_min=2e-5),
]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=max_epochs),
                     logger=dict(type='LoggerHook', interval=10))
