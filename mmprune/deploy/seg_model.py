"""mmseg's own post-processing for a segmentor exported with its logits.

mmdeploy's segmentation backend model takes the argmax at the export size and
resizes the label map to the image (nearest), where mmseg resizes the logits
(bilinear) and then takes the argmax: the two disagree along class borders
whenever the image is not at the export size, which moves the mIoU. The
project's segmentation deploy config therefore exports the logits
(``with_argmax=False``) and names this backend model (``model_type``), which
post-processes them as mmseg's ``EncoderDecoder.postprocess_result`` does. It
is registered in mmdeploy's registry of segmentation backend models, so the
deploy config selects it like mmdeploy's own; importing :mod:`mmprune.deploy`
registers it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmdeploy.codebase.mmseg.deploy import segmentation_model
from mmdeploy.utils import get_codebase_config
from mmengine.structures import PixelData

#: mmdeploy's registry of segmentation backend models (a module global it names
#: ``__BACKEND_MODEL``; ``model_type`` in a deploy config picks one)
BACKEND_MODELS = getattr(segmentation_model, '__BACKEND_MODEL')
MODEL_TYPE = 'mmprune_host_postprocess'


@BACKEND_MODELS.register_module(MODEL_TYPE, force=True)
class HostPostprocessModel(segmentation_model.End2EndModel):
    """ONNX Runtime's logits resized to the image (bilinear, the decode head's
    ``align_corners``, written into the deploy config's ``codebase_config`` by
    :func:`mmprune.deploy.deploy`), then the argmax (or, for one output channel,
    the sigmoid against ``threshold``), as mmseg does."""

    def pack_result(self, batch_outputs: torch.Tensor, data_samples):
        codebase = get_codebase_config(self.deploy_cfg)
        if codebase.get('with_argmax', True):  # a label map: nothing left to do as mmseg does
            return super().pack_result(batch_outputs, data_samples)
        align_corners = codebase.get('align_corners', False)
        threshold = codebase.get('threshold', 0.3)
        predictions = []
        for logits, sample in zip(batch_outputs, data_samples):
            h, w = sample.metainfo['ori_shape'][:2]
            logits = logits.float()[None]
            if tuple(logits.shape[-2:]) != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode='bilinear',
                                       align_corners=align_corners)
            logits = logits[0]
            pred = ((logits.sigmoid() > threshold).long() if logits.shape[0] == 1
                    else logits.argmax(dim=0, keepdim=True))
            sample.set_data(dict(seg_logits=PixelData(data=logits),
                                 pred_sem_seg=PixelData(data=pred)))
            predictions.append(sample)
        return predictions
