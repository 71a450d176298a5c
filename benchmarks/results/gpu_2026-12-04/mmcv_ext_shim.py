"""Stand-in for mmcv's compiled ops (mmcv._ext) on a machine where mmcv 2.1.0 could not be
built: NMS and RoIAlign go through torchvision's kernels, every other op raises."""
import sys
import types

import torch
import torchvision


def nms(boxes, scores, iou_threshold, offset=0):
    assert offset == 0, 'offset=1 NMS is not provided by the shim'
    return torchvision.ops.nms(boxes.float(), scores.float(), iou_threshold)


def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height,
                      aligned_width, spatial_scale, sampling_ratio, pool_mode, aligned):
    assert pool_mode == 1, 'only avg RoIAlign in the shim'
    output.copy_(torchvision.ops.roi_align(input, rois, (aligned_height, aligned_width),
                                           spatial_scale, sampling_ratio, aligned))


def _missing(name):
    def fn(*args, **kwargs):
        raise NotImplementedError(f'mmcv op {name} is not in the shim')
    return fn


ext = types.ModuleType('mmcv._ext')
ext.nms, ext.roi_align_forward = nms, roi_align_forward


def _getattr(name):
    if name.startswith('__'):
        raise AttributeError(name)
    return _missing(name)


ext.__getattr__ = _getattr
sys.modules['mmcv._ext'] = ext
