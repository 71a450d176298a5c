"""Does a training run's dataloader, refilling its queues, move a target_latency reading?

    python benchmarks/results/landing_2026-12-04/loader_probe.py CONFIG CYCLES OUT.json

A dense CamVid FPN-MobileNetV2 and a width-pruned copy (ratio 0.5) timed against each other
the way LatencyRatio does (>= 20 rounds and 2 s, interleaved; quieter-half median of the
per-round ratios, and the all-rounds median beside it), alternately: 'idle' (3 s of sleep
before) and 'loader' (four batches taken from the config's persistent-worker train dataloader just
before, which empties its prefetch queues, so its workers refill them while the
timing runs: an iter-based PruningHook step's situation), and 'after_step' (right after a
training iteration, forward + backward + SGD step on a third copy, on a batch of that loader:
what a step does just before the hook prunes).
"""
import copy, statistics, sys, time, json
import torch
import mmprune
from mmengine.runner import Runner
from mmprune.timing import interleaved_runs, quiet_rounds, steady_malloc
from mmprune.tracing import make_batch, inference_forward

cfg_path = sys.argv[1] if len(sys.argv) > 1 else 'configs/camvid/fpn_mbv2_camvid.py'
cycles = int(sys.argv[2]) if len(sys.argv) > 2 else 8
steady_malloc()
model, cfg = mmprune.build_model(cfg_path)
dense = copy.deepcopy(model).eval()
mmprune.prune(model, cfg=cfg, pruning_ratio=0.5, remove_blocks=0)
model.eval()
batch = make_batch(dense, cfg)
loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)

def reading():
    t0 = time.time()
    with torch.no_grad():
        t = interleaved_runs({'d': lambda: inference_forward(dense, batch),
                              'p': lambda: inference_forward(model, batch)}, 20, None, 2.0)
    q = quiet_rounds(t['p'], t['d'])
    return dict(quiet=statistics.median(p / d for p, d in q),
                all=statistics.median(p / d for p, d in zip(t['p'], t['d'])),
                dense_ms=statistics.median(t['d']), rounds=len(t['d']), s=time.time() - t0)

trainee = copy.deepcopy(dense).train()
optim = torch.optim.SGD(trainee.parameters(), lr=1e-4)
train_it = iter(loader)


def train_step():
    data = trainee.data_preprocessor(next(train_it), True)
    losses = trainee(**data, mode='loss')
    loss = sum(v.mean() for k, v in losses.items() if 'loss' in k)
    optim.zero_grad(); loss.backward(); optim.step()


out = {'idle': [], 'loader': [], 'after_step': []}
for c in range(cycles):
    time.sleep(3)
    out['idle'].append(reading())
    t0 = time.time()
    for _ in range(4):  # empty the prefetch queues (2 workers x 2): all refill while timed
        next(train_it)
    r = reading(); r['drain_s'] = time.time() - t0 - r.pop('s')
    out['loader'].append(r)
    time.sleep(3)
    train_step()
    out['after_step'].append(reading())
    print(c, {k: {kk: round(vv, 3) for kk, vv in v[-1].items()} for k, v in out.items()}, flush=True)
for k, v in out.items():
    for est in ('quiet', 'all'):
        xs = [x[est] for x in v]
        print(f'{k:7s} {est:6s} mean {statistics.mean(xs):.3f} sd {statistics.stdev(xs):.3f} '
              f'range {min(xs):.3f}-{max(xs):.3f}')
    print(k, 'seconds per reading', [round(x['s'], 1) for x in v if 's' in x])
json.dump(out, open(sys.argv[3] if len(sys.argv) > 3 else 'work_dirs/probe/loader_probe.json', 'w'), indent=1)
