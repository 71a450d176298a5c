"""prune() on a model that lives on the GPU: width, blocks, target_latency timed there;
the pruned models' forward, loss and backward on the GPU; interleaved GPU latency."""
import copy
import json
import sys
import time
import traceback

try:
    import mmcv._ext  # noqa: F401
except ImportError:
    import mmcv_ext_shim  # noqa: F401
import torch

import mmprune
from mmprune.flops import count_flops_params
from mmprune.timing import device_sync, interleaved_ms
from mmprune.tracing import inference_forward, make_batch

dev, out = sys.argv[1], sys.argv[2]
res = dict(device=dev, gpu=torch.cuda.get_device_name() if dev.startswith('cuda') else None,
           torch=torch.__version__)
models = {}
for cfgp, shape in [('configs/bccd/retinanet_mbv2_fpn_bccd.py', (288, 384)),
                    ('configs/camvid/fpn_mbv2_camvid.py', (360, 480))]:
    torch.manual_seed(0)
    dense, cfg = mmprune.build_model(cfgp)
    dense.to(dev).eval()
    batch = make_batch(dense, cfg, shape)
    f0, p0 = count_flops_params(dense, batch)
    name = cfgp.split('/')[-1][:-3]
    variants = {'dense': dense}
    for label, kw in [('width 0.3', dict(pruning_ratio=0.3)),
                      ('blocks 3', dict(remove_blocks=3)),
                      ('target_latency 0.667', dict(target_latency=0.667)),
                      ('blocks all + target_latency 0.5', dict(remove_blocks=1.0,
                                                               target_latency=0.5))]:
        key = f'{name} {label}'
        t0 = time.time()
        m = copy.deepcopy(dense)
        try:
            r = mmprune.prune(m, cfg=cfg, input_shape=shape, **kw)
            devices = sorted({str(p.device) for p in m.parameters()}
                             | {str(b.device) for b in m.buffers()})
            m.train()
            tb = make_batch(m, cfg, shape, training=True, batch_size=2)
            losses = m(**tb, mode='loss')
            loss = sum(v.sum() for k, v in losses.items() if 'loss' in k and
                       isinstance(v, torch.Tensor)) + sum(
                sum(x.sum() for x in v) for k, v in losses.items()
                if 'loss' in k and isinstance(v, (list, tuple)))
            loss.backward()
            m.zero_grad(set_to_none=True)
            m.eval()
            f, p = count_flops_params(m, batch)
            res[key] = dict(ok=True, s=round(time.time() - t0, 1), devices=devices,
                            loss=float(loss), flops=round(f / f0, 4), params=round(p / p0, 4),
                            search_latency=r.options.get('latency_ratio'),
                            pruning_ratio=r.options.get('pruning_ratio'),
                            removed=len(r.options.get('removed_blocks', [])))
            variants[label] = m
        except Exception as e:
            res[key] = dict(ok=False, error=f'{type(e).__name__}: {e}'[:500],
                            tb=traceback.format_exc()[-1500:])
        print(key, json.dumps(res[key]), flush=True)
    with torch.no_grad():
        ms = interleaved_ms({k: (lambda v=v: inference_forward(v, batch))
                             for k, v in variants.items()}, 100, device_sync(dev))
    res[f'{name} ms'] = {k: round(v, 3) for k, v in ms.items()}
    res[f'{name} latency vs dense'] = {k: round(v / ms['dense'], 3) for k, v in ms.items()}
    print(name, json.dumps(res[f'{name} ms']), json.dumps(res[f'{name} latency vs dense']),
          flush=True)
    json.dump(res, open(out, 'w'), indent=1)
