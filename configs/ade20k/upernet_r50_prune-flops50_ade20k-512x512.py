# UPerNet-R50 on ADE20K (512x512 crops): prune the official dense model (160k schedule) to
# 50 % of its FLOPs (group L2-norm channel importance, 3 progressive steps at iterations 0, 1000,
# 2000), then finetune.
# Finetune schedule: 40k iterations (the dense run trains 160k), the dense SGD lr 0.01 with
# its poly decay over the 40k; validation and a checkpoint every 4k iterations.
# Not measured here: no result of this recipe is filled in anywhere yet.
# Run:   python tools/prune_train.py configs/ade20k/upernet_r50_prune-flops50_ade20k-512x512.py
#   or   the host's tools/train.py with this config (the pruning hook is in the config).
# Data:  data/ade/ADEChallengeData2016/{images,annotations}/{training,validation}/
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'

# official dense mIoU 42.05 (single scale; 42.78 ms+flip) (mmseg metafile)
load_from = 'https://download.openmmlab.com/mmsegmentation/v0.5/upernet/upernet_r50_512x512_160k_ade20k/upernet_r50_512x512_160k_ade20k_20200615_184328-8534de8d.pth'  # noqa

custom_hooks = [
    dict(type='mmprune.PruningHook', importance='group_l2', target_flops=0.5,
         begin=0, end=3000, interval=1000, by_epoch=False),
]

max_iters = 40000
interval = 4000
train_cfg = dict(max_iters=max_iters, val_interval=interval)
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False),
]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=interval, max_keep_ckpts=3))
