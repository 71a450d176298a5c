# Progressive pruning while training: a tiny RetinaNet on a tiny COCO-format dataset,
# pruned at epochs 0 and 1 towards 50 % of its dense FLOPs, then trained on.
# Train with the host's own entry point (mmdet/.mim/tools/train.py) or tools/prune_train.py;
# `data_root` must hold ann.json and images/ (tests/conftest.py::make_coco writes one).
_base_ = '../tiny/retinanet_r18_tiny.py'

data_root = 'data/tiny_coco/'
classes = ('cell', 'blob', 'dot')
scale = (128, 96)
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
dataset = dict(type='CocoDataset', data_root=data_root, ann_file='ann.json',
               data_prefix=dict(img='images/'), metainfo=dict(classes=classes))
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(**dataset, filter_cfg=dict(filter_empty_gt=False), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(**dataset, test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'ann.json', metric='bbox')
test_evaluator = val_evaluator

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=3, val_interval=3)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001))
param_scheduler = [dict(type='MultiStepLR', by_epoch=True, milestones=[2], gamma=0.1)]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1),
                     logger=dict(type='LoggerHook', interval=1))
auto_scale_lr = dict(enable=False)

custom_hooks = [
    dict(type='mmprune.PruningHook', importance='l2', target_flops=0.5,
         begin=0, end=2, interval=1, by_epoch=True),
]
