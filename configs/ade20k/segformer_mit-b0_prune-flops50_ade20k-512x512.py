# SegFormer-MiT-B0 on ADE20K (512x512 crops): prune the official dense model to 50 % of its
# FLOPs (group L2-norm channel importance, 3 progressive steps at iterations 0, 1000, 2000), then
# finetune.
# Finetune schedule: 40k iterations (the dense run trains 160k), the dense AdamW lr 6e-5
# (head x10) with its 1500-iteration linear warmup, then linear decay to 0 at 40k;
# validation and a checkpoint every 4k iterations.
# Not measured here: no result of this recipe is filled in anywhere yet.
# Run:   python tools/prune_train.py configs/ade20k/segformer_mit-b0_prune-flops50_ade20k-512x512.py
#   or   the host's tools/train.py with this config (the pruning hook is in the config).
# Data:  data/ade/ADEChallengeData2016/{images,annotations}/{training,validation}/
_base_ = 'mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py'

# official dense mIoU 37.41 (single scale; 38.34 ms+flip) (mmseg metafile)
load_from = 'https://download.openmmlab.com/mmsegmentation/v0.5/segformer/segformer_mit-b0_512x512_160k_ade20k/segformer_mit-b0_512x512_160k_ade20k_20210726_101530-8ffa8fda.pth'  # noqa

custom_hooks = [
    dict(type='mmprune.PruningHook', importance='group_l2', target_flops=0.5,
         begin=0, end=3000, interval=1000, by_epoch=False),
]

max_iters = 40000
interval = 4000
train_cfg = dict(max_iters=max_iters, val_interval=interval)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False),
]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=interval, max_keep_ckpts=3))
