# YOLOX-S on COCO: prune the official dense model to 50 % of its FLOPs (group L2-norm channel
# importance, 3 progressive steps at epochs 0, 1, 2), then finetune.
# Finetune schedule: 30 epochs (the dense run trains 300) at a tenth of the dense learning
# rate, no warmup: cosine over epochs 0-25, then the last 5 epochs at a constant lr with
# Mosaic/MixUp off and the L1 loss on (YOLOXModeSwitchHook, num_last_epochs=5).
# The base's SyncNormHook and EMAHook are kept; the EMA copy is pruned with the model.
# Not measured here: no result of this recipe is filled in anywhere yet.
# Run:   python tools/prune_train.py configs/coco/yolox_s_prune-flops50_coco.py
#   or   the host's tools/train.py with this config (the pruning hook is in the config).
# Data:  data/coco/annotations/instances_{train,val}2017.json, data/coco/{train,val}2017/
_base_ = 'mmdet::yolox/yolox_s_8xb8-300e_coco.py'

# official dense box AP 40.5 (mmdet metafile)
load_from = 'https://download.openmmlab.com/mmdetection/v2.0/yolox/yolox_s_8x8_300e_coco/yolox_s_8x8_300e_coco_20211121_095711-4592a793.pth'  # noqa

max_epochs = 30
num_last_epochs = 5
interval = 5
base_lr = 0.001  # dense: 0.01

train_cfg = dict(max_epochs=max_epochs, val_interval=interval)
optim_wrapper = dict(optimizer=dict(lr=base_lr))
param_scheduler = [
    dict(type='CosineAnnealingLR', eta_min=base_lr * 0.05, begin=0,
         T_max=max_epochs - num_last_epochs, end=max_epochs - num_last_epochs,
         by_epoch=True, convert_to_iter_based=True),
    dict(type='ConstantLR', by_epoch=True, factor=1,
         begin=max_epochs - num_last_epochs, end=max_epochs),
]
default_hooks = dict(checkpoint=dict(interval=interval, max_keep_ckpts=3))

custom_hooks = [
    dict(type='YOLOXModeSwitchHook', num_last_epochs=num_last_epochs, priority=48),
    dict(type='SyncNormHook', priority=48),
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0001, update_buffers=True,
         priority=49),
    dict(type='mmprune.PruningHook', importance='group_l2', target_flops=0.5,
         begin=0, end=3, interval=1, by_epoch=True),
]
