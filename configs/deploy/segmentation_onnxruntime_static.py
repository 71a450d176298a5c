# Deploy settings for mmdeploy: an mmseg segmentor to ONNX Runtime with a fixed input size,
# its logits as the output. `mmprune deploy` sets input_shape ([W, H])
# from --shape or from the config's test resize: the test images must come out of the
# pipeline at that size. mmdeploy turns adaptive pooling into fixed pooling for this size,
# so a PSPNet needs H/8 and W/8 to be multiples of its pooling bins (1, 2, 3, 6).
# Opset 13: torch 2.9's nn.MultiheadAttention (SegFormer's MiT) emits aten::unflatten,
# which opset 11 cannot express.
onnx_config = dict(
    type='onnx', export_params=True, keep_initializers_as_inputs=False, opset_version=13,
    save_file='end2end.onnx', input_names=['input'], output_names=['output'],
    input_shape=[512, 512], optimize=True)
# the logits leave the graph, and mmprune's backend model resizes them to the image and
# takes the argmax as mmseg does (mmdeploy's own argmaxes first and resizes the labels:
# mmprune/deploy/seg_model.py); a plain ONNX Runtime user argmaxes the `output` logits
codebase_config = dict(type='mmseg', task='Segmentation', with_argmax=False,
                       model_type='mmprune_host_postprocess')
backend_config = dict(type='onnxruntime')
