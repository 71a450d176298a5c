# FCOS-R50 (caffe-style backbone, GN head) on COCO: prune the official dense model to 50 %
# of its FLOPs (group L2-norm channel importance, 3 progressive steps at epochs 0, 1, 2), then
# finetune. Finetune schedule: the 1x schedule (12 epochs, lr steps at 8 and 11) with a
# tenth of the dense learning rate and no warmup, starting from the dense checkpoint below.
# Not measured here: no result of this recipe is filled in anywhere yet.
# Run:   python tools/prune_train.py configs/coco/fcos_r50-caffe_fpn_gn-head_prune-flops50_coco.py
#   or   the host's tools/train.py with this config (the pruning hook is in the config).
# Data:  data/coco/annotations/instances_{train,val}2017.json, data/coco/{train,val}2017/
_base_ = 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py'

# official dense box AP 36.6 (mmdet metafile)
load_from = 'https://download.openmmlab.com/mmdetection/v2.0/fcos/fcos_r50_caffe_fpn_gn-head_1x_coco/fcos_r50_caffe_fpn_gn-head_1x_coco-821213aa.pth'  # noqa

custom_hooks = [
    dict(type='mmprune.PruningHook', importance='group_l2', target_flops=0.5,
         begin=0, end=3, interval=1, by_epoch=True),
]

train_cfg = dict(max_epochs=12)
optim_wrapper = dict(optimizer=dict(lr=0.001))  # dense: 0.01 (bias lr x2, grad clip 35 kept)
param_scheduler = [  # the dense run's 500-iteration warmup is dropped
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
