"""Table of the depth/width runs: python collect.py [runs_speed.json]"""
import glob, json, os, re, sys
ROOT = os.path.dirname(os.path.abspath(__file__))
SAME_BUDGET = dict(bccd_retinanet=86.26, camvid_fpn=67.12, bccd_fcos=89.25, camvid_dlv3p=54.79)
NAMES = dict(bccd_retinanet='RetinaNet, BCCD', camvid_fpn='Semantic FPN, CamVid',
             bccd_fcos='FCOS, BCCD', camvid_dlv3p='DeepLabV3+, CamVid')
retimed = {}
if len(sys.argv) > 1:
    for r in json.load(open(sys.argv[1]))['records']:
        retimed[os.path.basename(r['work_dir'].rstrip('/'))] = r['speedup']
rows = []
for f in glob.glob(os.path.join(ROOT, '*/prune_train_summary.json')):
    name = os.path.basename(os.path.dirname(f))
    model, mode, x, cwd, seed = re.match(r'(.*)_(width|both|depth|auto)(_x1.5)?(_cwd)?_s(\d)',
                                         name).groups()
    s = json.load(open(f))
    comp = {c['tag']: c for c in s['compare']}
    key = [k for k in s['metrics'] if k.endswith('mAP') or k == 'mIoU'][0]
    m = s['metrics'][key] * (100 if 'mAP' in key else 1)
    p, d = comp['pruned']['cpu_latency_ms'], comp['dense']['cpu_latency_ms']
    log = open(f.replace('/prune_train_summary.json', '.log')).read()
    blocks = sum(int(b) for b in re.findall(r'removing (\d+):', log))
    if mode == 'auto':  # each step logs the blocks it removed, counting from 1
        blocks = len(re.findall(r'block\(s\) removed \(', log))
    rows.append(dict(model=model, asked='1.5x' if x else '2x', seed=int(seed),
                     mode=mode + (' + distill (cwd)' if cwd else ''),
                     metric=m, flops=s['flops_ratio'], params=s['params_ratio'], blocks=blocks,
                     closing=d / p, retimed=retimed.get(name), name=name))
order = dict(width=0, depth=1, both=2, auto=3)
rows.sort(key=lambda r: (list(SAME_BUDGET).index(r['model']), -float(r['asked'][:-1]),
                         order[r['mode'].split()[0]], r['mode'], r['seed']))
print('| model, data | asked | mode | seed | blocks | FLOPs | params | speed-up, re-timed '
      '| speed-up, closing table | metric | of same-budget dense |')
print('|---|---|---|---|---|---|---|---|---|---|---|')
prev = None
for r in rows:
    head = NAMES[r['model']] if r['model'] != prev else '″'
    prev = r['model']
    rt = '-' if r['retimed'] is None else f"{r['retimed']:.2f}x"
    print(f"| {head} | {r['asked']} | {r['mode']} | {r['seed']} | {r['blocks']} | "
          f"{r['flops']:.1%} | {r['params']:.1%} | {rt} | {r['closing']:.2f}x | "
          f"{r['metric']:.2f} | {r['metric'] / SAME_BUDGET[r['model']]:.1%} |")
