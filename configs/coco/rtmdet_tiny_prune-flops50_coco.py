# RTMDet-tiny on COCO: prune the official dense model to 50 % of its FLOPs (group L2-norm channel
# importance, 3 progressive steps at epochs 0, 1, 2), then finetune.
# Finetune schedule: 30 epochs (the dense run trains 300) at a tenth of the dense learning
# rate, no warmup: flat for epochs 0-15, cosine over 15-30 (the dense shape, scaled), and
# the stage-2 pipeline (no Mosaic/MixUp) with validation every epoch for the last 5 epochs
# (PipelineSwitchHook at epoch 25). The base's EMAHook is kept; the EMA copy is pruned with
# the model.
# Not measured here: no result of this recipe is filled in anywhere yet.
# Run:   python tools/prune_train.py configs/coco/rtmdet_tiny_prune-flops50_coco.py
#   or   the host's tools/train.py with this config (the pruning hook is in the config).
# Data:  data/coco/annotations/instances_{train,val}2017.json, data/coco/{train,val}2017/
_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'

# official dense box AP 40.9 (mmdet metafile)
load_from = 'https://download.openmmlab.com/mmdetection/v3.0/rtmdet/rtmdet_tiny_8xb32-300e_coco/rtmdet_tiny_8xb32-300e_coco_20220902_112414-78e30dcc.pth'  # noqa

max_epochs = 30
stage2_num_epochs = 5
interval = 5
base_lr = 0.0004  # dense: 0.004
train_pipeline_stage2 = {{_base_.train_pipeline_stage2}}

train_cfg = dict(max_epochs=max_epochs, val_interval=interval,
                 dynamic_intervals=[(max_epochs - stage2_num_epochs, 1)])
optim_wrapper = dict(optimizer=dict(lr=base_lr))
param_scheduler = [
    dict(type='CosineAnnealingLR', eta_min=base_lr * 0.05, begin=max_epochs // 2,
         end=max_epochs, T_max=max_epochs // 2, by_epoch=True, convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(interval=interval, max_keep_ckpts=3))

custom_hooks = [
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True,
         priority=49),
    dict(type='PipelineSwitchHook', switch_epoch=max_epochs - stage2_num_epochs,
         switch_pipeline=train_pipeline_stage2),
    dict(type='mmprune.PruningHook', importance='group_l2', target_flops=0.5,
         begin=0, end=3, interval=1, by_epoch=True),
]
