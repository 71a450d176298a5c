# DeepLabV3+-R50-D8 on Cityscapes (512x1024 crops): prune the official dense model (80k
# schedule) to 50 % of its FLOPs (group L2-norm channel importance, 3 progressive steps at
# iterations 0, 1000, 2000), then finetune.
# Finetune schedule: 20k iterations (the dense run trains 80k), the dense SGD lr 0.01 with
# its poly decay over the 20k; validation and a checkpoint every 2k iterations.
# Not measured here: no result of this recipe is filled in anywhere yet.
# Run:   python tools/prune_train.py configs/cityscapes/deeplabv3plus_r50-d8_prune-flops50_cityscapes-512x1024.py
#   or   the host's tools/train.py with this config (the pruning hook is in the config).
# Data:  data/cityscapes/{leftImg8bit,gtFine}/{train,val}/ with *_gtFine_labelTrainIds.png
#        (mmseg's tools/dataset_converters/cityscapes.py writes them)
_base_ = 'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024.py'

# official dense mIoU 80.09 (single scale; 81.13 ms+flip) (mmseg metafile)
load_from = 'https://download.openmmlab.com/mmsegmentation/v0.5/deeplabv3plus/deeplabv3plus_r50-d8_512x1024_80k_cityscapes/deeplabv3plus_r50-d8_512x1024_80k_cityscapes_20200606_114049-f9fb496d.pth'  # noqa

custom_hooks = [
    dict(type='mmprune.PruningHook', importance='group_l2', target_flops=0.5,
         begin=0, end=3000, interval=1000, by_epoch=False),
]

max_iters = 20000
interval = 2000
train_cfg = dict(max_iters=max_iters, val_interval=interval)
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False),
]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=interval, max_keep_ckpts=3))
