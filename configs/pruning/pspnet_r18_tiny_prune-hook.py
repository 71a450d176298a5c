# Progressive pruning while training: a tiny PSPNet on a tiny Cityscapes-layout dataset
# (img/*.png, ann/*.png with labels 0..10), pruned at iterations 0, 2 and 4 towards 50 %
# of its dense FLOPs, then trained on. Train with mmseg's own tools/train.py.
_base_ = '../tiny/pspnet_r18_tiny.py'

data_root = 'data/tiny_seg/'
crop = (64, 64)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop),
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomCrop', crop_size=crop),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
dataset = dict(type='CityscapesDataset', data_root=data_root,
               data_prefix=dict(img_path='img', seg_map_path='ann'),
               img_suffix='.png', seg_map_suffix='.png')
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        sampler=dict(type='InfiniteSampler', shuffle=True),
                        dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

train_cfg = dict(type='IterBasedTrainLoop', max_iters=8, val_interval=8)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005))
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=8, by_epoch=False)]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4),
                     logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False))

custom_hooks = [
    dict(type='mmprune.PruningHook', importance='l2', target_flops=0.5,
         begin=0, end=6, interval=2, by_epoch=False),
]
