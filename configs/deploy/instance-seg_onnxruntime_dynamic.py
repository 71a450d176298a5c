# Deploy settings for mmdeploy: an mmdet instance segmentation model (Mask R-CNN ...) to
# ONNX Runtime, end to end, any input size. The graph outputs the mask head's raw masks
# per detection; mmdeploy's backend model pastes them into the image.
_base_ = ['./detection_onnxruntime_dynamic.py']
onnx_config = dict(
    output_names=['dets', 'labels', 'masks'],
    dynamic_axes=dict(masks={0: 'batch', 1: 'num_dets', 2: 'height', 3: 'width'}))
codebase_config = dict(post_processing=dict(export_postprocess_mask=False))
