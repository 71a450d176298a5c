"""Zoo coverage: prune one representative config of every mmdet / mmseg family.

    python benchmarks/coverage.py [--codebase mmdet mmseg] [--families a b] [--timeout 600]
                                  [--ratio 0.3 | --target-flops 0.5] [--out work_dirs/coverage.json]

For each family (a folder of the installed host's config zoo) one config is
built with random init (nothing is downloaded; ViT backbones get ``img_size`` =
the test size, distillation teachers are built from the zoo without weights)
and, in a subprocess with a timeout: the dense model runs tensor, loss and predict (else the failure is the
host's); ``mmprune.prune`` removes 30 % of the channels with l2 (or, with
``--target-flops``, searches the ratio that leaves that fraction of the FLOPs;
``MMPRUNE_CHECK_FLOPS=1`` then checks every trial's count against a full one); the pruned
model must keep its tensor-output shapes, run loss + backward on 2 images, run
predict, and be rebuilt from its structure (``mmprune.PrunedModel``) with the
same outputs. The input is 256x256 unless the dense model fails there, then
the config's own crop or test size. FLOPs are counted on the host's inference
forward; a record's ``flops_forward`` says where its tensor mode failed and the
pruner's traced graph was counted instead (marked "traced" in the tables).
Prints a table and writes JSON; each record names the commit that produced it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

#: families the benchmark does not try, with the reason
SKIPPED = {
    'mmdet': {
        **dict.fromkeys(['bytetrack', 'deepsort', 'ocsort', 'qdtrack', 'masktrack_rcnn',
                         'mask2former_vis', 'sort', 'strongsort', 'reid', 'mot'],
                        'tracking / video, not single-image'),
        **dict.fromkeys(['glip', 'grounding_dino', 'mm_grounding_dino', 'xdecoder'],
                        'text-prompted (needs a language model and text inputs)'),
        **dict.fromkeys(['_base_', 'common', 'misc', 'legacy_1.x', 'dsdl'],
                        'no model of its own (shared fragments / dataset formats)'),
        **dict.fromkeys(['cityscapes', 'deepfashion', 'lvis', 'objects365', 'openimages',
                         'pascal_voc', 'wider_face', 'crowdhuman'],
                        'dataset variant of a family tried elsewhere'),
        **dict.fromkeys(['albu_example', 'instaboost', 'simple_copy_paste',
                         'strong_baselines', 'soft_teacher', 'selfsup_pretrain'],
                        'training recipe of a family tried elsewhere'),
        'timm_example': 'needs the optional timm package',
        'carafe': 'mmcv 2.1 has no CPU kernel for CARAFE (GPU only)',
        'guided_anchoring': 'mmcv 2.1 has no CPU kernel for masked_conv2d (GPU only)',
    },
    'mmseg': {
        '_base_': 'shared fragments',
        'dsdl': 'dataset format',
        'vpd': 'needs Stable Diffusion weights and text encoder',
        'san': 'text-prompted (CLIP)',
    },
}

#: the family's own idea where the plainest name would pick something else
#: host failures of the dense model traced to a known upstream cause: reason text -> note
HOST_BUGS = {
    "'SSDHead' object has no attribute 'loss_cls'":
        'mmdet 3.3.0 bug: SSDHead never builds loss_cls, which predict reads '
        '(open-mmlab/mmdetection#11780, fix in unmerged PR #11524)',
    'upper bound and lower bound inconsistent with step sign':
        ("random weights: the untrained box head puts boxes wholly outside the image, where "
         "mmdet's CPU mask paste (skip_empty) builds an empty, reversed range"),
}


def host_note(r: dict) -> str:
    """The known upstream cause of a host failure, or ''."""
    if r.get('stage') not in ('build', 'dense'):
        return ''
    return next((note for key, note in HOST_BUGS.items() if key in (r.get('reason') or '')), '')


PREFERRED = {'cascade_rpn': 'cascade-rpn_faster-rcnn_r50-caffe_fpn_1x_coco.py',  # the RPN-only one does not build
             'nas_fpn': 'retinanet_r50_nasfpn_crop640-50e_coco.py',  # not the plain baseline
             'dcn': 'faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py',
             'dcnv2': 'faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py'}

def _commit() -> str | None:
    git = ['git', '-C', ROOT]
    head = subprocess.run(git + ['rev-parse', '--short', 'HEAD'], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(git + ['status', '--porcelain', '--untracked-files=no'],
                           capture_output=True, text=True).stdout.strip()
    return (head + ('-dirty' if dirty else '')) or None


COMMIT = _commit()

STAGES = ('build', 'dense', 'prune', 'tensor', 'loss', 'predict', 'reload')


def config_root(codebase: str) -> str:
    import importlib
    pkg = importlib.import_module(codebase)
    return os.path.join(os.path.dirname(pkg.__file__), '.mim', 'configs')


def representative(folder: str) -> str | None:
    """The family's plainest config: R-50 / 1x / COCO or Cityscapes-like, shortest name."""
    files = [f for f in os.listdir(folder) if f.endswith('.py')]
    if not files:
        return None
    if PREFERRED.get(os.path.basename(folder)) in files:
        return PREFERRED[os.path.basename(folder)]

    def score(f: str):
        return ('r50' not in f, 'caffe' in f, 'ms-' in f or 'ms_' in f,
                'tta' in f, not ('coco' in f or 'cityscapes' in f or 'ade20k' in f),
                len(f), f)
    return sorted(files, key=score)[0]


def families(codebase: str):
    root = config_root(codebase)
    for fam in sorted(os.listdir(root)):
        if not os.path.isdir(os.path.join(root, fam)):
            continue
        skip = SKIPPED[codebase].get(fam)
        cfg = representative(os.path.join(root, fam))
        if cfg is None:
            skip = skip or 'no config files'
        yield fam, (f'{codebase}::{fam}/{cfg}' if cfg else None), skip


def candidate_shapes(model, cfg, shape) -> list:
    """Input sizes to try: a backbone's fixed ``img_size`` first (ViTs' position
    embeddings), then the small default, then the config's own crop / test size
    (models whose pooling kernels need their native size)."""
    from mmprune.tracing import config_input_shape
    out = []
    size = getattr(getattr(model, 'backbone', None), 'img_size', None)
    if isinstance(size, int):
        out.append((size, size))
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        out.append(tuple(int(s) for s in size))
    out.append(tuple(shape))
    crop = getattr(model.data_preprocessor, 'size', None)
    if crop:
        out.append(tuple(int(s) for s in crop))
    native = config_input_shape(cfg)
    if native:
        out.append(tuple(native))
    return list(dict.fromkeys(out))


def dense_run(model, cfg, shape):
    """The dense model's tensor, predict and loss + backward at ``shape``."""
    import torch

    from mmprune.tracing import make_batch, tensor_forward
    if getattr(model.data_preprocessor, 'size', None):
        model.data_preprocessor.size = shape  # mmseg pads training crops to this size
    batch = make_batch(model, cfg, shape)
    train_batch = make_batch(model, cfg, shape, batch_size=2, training=True, seed=1)
    model.eval()
    with torch.no_grad():
        dense_out = [o.shape for o in tensor_forward(model, batch)]
        model(batch['inputs'], batch['data_samples'], mode='predict')
    model.train()
    loss, _ = model.parse_losses(
        model(train_batch['inputs'], train_batch['data_samples'], mode='loss'))
    loss.backward()
    model.zero_grad(set_to_none=True)
    return batch, train_batch, dense_out


def build(config: str, shape):
    """A zoo config's model with random init and nothing downloaded."""
    import mmprune
    cfg = mmprune.apis.load_config(config)
    if cfg.model.get('teacher_config'):  # distillation: teacher from the same zoo, no download
        teacher = cfg.model.teacher_config
        if isinstance(teacher, str) and teacher.startswith('configs/'):
            cfg.model.teacher_config = os.path.join(config_root(config.split('::')[0]),
                                                    teacher[len('configs/'):])
        cfg.model.teacher_ckpt = None
    if cfg.model.get('teacher_ckpt'):  # LAD builds its teacher inline: random init, no download
        cfg.model.teacher_ckpt = None
    backbone = cfg.model.get('backbone') or {}
    if 'img_size' in backbone:  # ViTs: position embeddings at the small test size
        backbone['img_size'] = tuple(shape) if not isinstance(backbone['img_size'], int) \
            else shape[0]
    return mmprune.build_model(cfg)


def check_pruned(model, cfg, structure, batch, dense_out, shape):
    """The pruned model's checks, one stage at a time (a generator: yields each
    stage's name before running it): tensor outputs keep their shapes, loss +
    backward on a fresh training batch, predict, and a model rebuilt from the
    structure (``mmprune.PrunedModel``'s builder) loads the weights strictly and
    gives the same outputs."""
    import copy

    import torch
    from mmengine.registry import init_default_scope

    from mmprune.apis import _without_pretrained, drop_aliases
    from mmprune.tracing import make_batch, tensor_forward
    from mmprune.models import build_pruned_model
    yield 'tensor'
    model.eval()
    with torch.no_grad():
        out = tensor_forward(model, batch)
    shapes = [o.shape for o in out]
    if shapes != dense_out:
        raise AssertionError(f'output shapes changed: {dense_out[:4]} -> {shapes[:4]}')
    yield 'loss'
    model.train()  # a fresh batch: some hosts consume their inputs (Fast R-CNN's proposals)
    train_batch = make_batch(model, cfg, shape, batch_size=2, training=True, seed=1)
    loss, _ = model.parse_losses(
        model(train_batch['inputs'], train_batch['data_samples'], mode='loss'))
    if not torch.isfinite(loss):
        raise AssertionError(f'loss is {loss}')
    loss.backward()
    model.zero_grad(set_to_none=True)
    yield 'predict'
    model.eval()
    with torch.no_grad():
        model(batch['inputs'], batch['data_samples'], mode='predict')
    yield 'reload'
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    arch = _without_pretrained(copy.deepcopy(cfg.model))
    rebuilt = build_pruned_model(arch, structure)
    rebuilt.load_state_dict(drop_aliases(model.state_dict(), rebuilt.state_dict()), strict=True)
    rebuilt.eval()
    with torch.no_grad():  # same seed: some heads draw random bases (SegNeXt's NMF)
        torch.manual_seed(0)
        again = tensor_forward(rebuilt, batch)
        torch.manual_seed(0)
        out = tensor_forward(model, batch)
    if not all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out, again)):
        raise AssertionError('rebuilt model gives different outputs')


def run_one(config: str, ratio: float, shape, target_flops=None) -> dict:
    """All stages for one config, in this process. Returns a record."""
    import torch

    import mmprune

    torch.manual_seed(0)
    rec: dict = dict(config=config, stage=None, reason=None, stage_s={})
    clock = [time.perf_counter()]

    def enter(name):
        now = time.perf_counter()
        if stage is not None:
            rec['stage_s'][stage] = round(now - clock[0], 2)
        clock[0] = now
        return name

    from mmengine.logging import MessageHub
    for key in ('iter', 'epoch'):  # losses with warm-up read them (BoxInst, TOOD)
        MessageHub.get_current_instance().update_info(key, 0)
    stage = None
    stage = enter('build')
    try:
        model, cfg = build(config, shape)
        stage = enter('dense')
        shapes = candidate_shapes(model, cfg, shape)
        for i, shape in enumerate(shapes):
            try:
                batch, train_batch, dense_out = dense_run(model, cfg, shape)
                break
            except Exception:  # noqa: BLE001 - the next, native size may suit the host
                if i == len(shapes) - 1:
                    raise
        rec['shape'] = list(shape)
        stage = enter('prune')
        t0 = time.perf_counter()
        how = dict(pruning_ratio=ratio) if target_flops is None else \
            dict(target_flops=target_flops)
        result = mmprune.prune(model, importance='l2', cfg=cfg, input_shape=shape, **how)
        rec.update(prune_s=round(time.perf_counter() - t0, 2),
                   params=list(result.params), flops=list(result.flops),
                   flops_forward=result.flops_forward, output_layers=result.output_layers,
                   structure_hash=mmprune.structure_hash(result.structure),
                   **({} if target_flops is None else dict(target_flops=target_flops)))
        for name in check_pruned(model, cfg, result.structure, batch, dense_out, shape):
            stage = enter(name)
        stage = enter(None)
    except BaseException as e:  # noqa: BLE001 - every failure is recorded
        rec['reason'] = f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'
        rec['trace'] = traceback.format_exc()[-3000:]
    rec['stage'] = stage
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--codebase', nargs='+', default=['mmdet', 'mmseg'])
    p.add_argument('--families', nargs='+', help='only these families')
    p.add_argument('--ratio', type=float, default=0.3)
    p.add_argument('--target-flops', type=float,
                   help='prune to this fraction of the FLOPs instead of at --ratio')
    p.add_argument('--shape', type=int, nargs=2, default=[256, 256])
    p.add_argument('--timeout', type=int, default=600)
    p.add_argument('--out', default='work_dirs/coverage.json')
    p.add_argument('--markdown', nargs='+', metavar='JSON',
                   help='print the support matrix of earlier runs as markdown and exit')
    p.add_argument('--compare-hashes', nargs=2, metavar=('BEFORE', 'AFTER'),
                   help='print, per family, whether two runs (at the same options) pruned '
                        'to the same structure, and exit')
    p.add_argument('--one', help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.markdown:
        records = [r for f in args.markdown for r in json.load(open(f))['records']]
        print(markdown(records))
        return
    if args.compare_hashes:
        print(compare_hashes(*(json.load(open(f))['records'] for f in args.compare_hashes)))
        return

    if args.one:
        import logging
        from mmengine.logging import MMLogger
        MMLogger.get_current_instance().setLevel(logging.ERROR)
        print('RESULT ' + json.dumps(run_one(args.one, args.ratio, tuple(args.shape),
                                             args.target_flops)))
        return

    records = []
    done = {}
    if os.path.exists(args.out):  # resume a partial run
        for r in json.load(open(args.out)).get('records', []):
            done[(r['codebase'], r['family'])] = r
    for codebase in args.codebase:
        for fam, config, skip in families(codebase):
            if (codebase, fam) in done and not (args.families and fam in args.families):
                records.append(done[(codebase, fam)])  # kept from the earlier run
                continue
            if args.families and fam not in args.families:
                continue
            rec = dict(codebase=codebase, family=fam, config=config, commit=COMMIT)
            if skip:
                rec.update(skipped=skip)
            else:
                t0 = time.perf_counter()
                try:
                    proc = subprocess.run(
                        [sys.executable, __file__, '--one', config, '--ratio', str(args.ratio),
                         '--shape', *map(str, args.shape)] + (
                            ['--target-flops', str(args.target_flops)]
                            if args.target_flops is not None else []),
                        capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
                    line = [x for x in proc.stdout.splitlines() if x.startswith('RESULT ')]
                    if line:
                        rec.update(json.loads(line[-1][7:]))
                    else:
                        rec.update(stage='crash', reason=(proc.stderr.strip().splitlines()
                                                          or ['no output'])[-1][:300])
                except subprocess.TimeoutExpired:
                    rec.update(stage='timeout', reason=f'over {args.timeout}s')
                rec['seconds'] = round(time.perf_counter() - t0, 1)
            records.append(rec)
            print(row(rec), flush=True)
            save(args.out, records)
    print_table(records)
    save(args.out, records)


def compare_hashes(before: list, after: list) -> str:
    """Markdown: per family tried in both runs, the pruned structure's hash in each."""
    def hashes(records):
        return {(r['codebase'], r['family']): r for r in records if 'skipped' not in r}
    b, a = hashes(before), hashes(after)
    lines = ['| codebase | family | before | after | same structure |', '|---|---|---|---|---|']
    same = 0
    for key in sorted(set(b) & set(a)):
        hb, ha = b[key].get('structure_hash'), a[key].get('structure_hash')
        equal = hb is not None and hb == ha
        same += equal
        lines.append(f'| {key[0]} | {key[1]} | {hb or b[key].get("stage")} | '
                     f'{ha or a[key].get("stage")} | {"yes" if equal else "**no**"} |')
    lines.append(f'\n{same} of {len(set(b) & set(a))} families pruned to the same structure.')
    return '\n'.join(lines)


def save(path: str, records: list) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(dict(records=records, totals=totals(records)), f, indent=1)
    os.replace(tmp, path)


def totals(records: list) -> dict:
    out = {}
    for cb in sorted({r['codebase'] for r in records}):
        rs = [r for r in records if r['codebase'] == cb and not r.get('skipped')]
        host = [r for r in rs if r.get('stage') in ('build', 'dense')]
        ok = [r for r in rs if r.get('stage') is None]
        out[cb] = dict(tried=len(rs), passed=len(ok), host_failures=len(host),
                       skipped=sum(1 for r in records if r['codebase'] == cb and r.get('skipped')))
    return out


def _short(config: str | None) -> str:
    return re.sub(r'^mm\w+::[^/]+/', '', config or '-')[:48]


def _traced(r: dict) -> bool:
    """FLOPs counted on the pruner's traced graph (the host's tensor mode failed)."""
    return r.get('flops_forward') == 'tensor_forward'


def row(r: dict) -> str:
    if r.get('skipped'):
        return f"{r['codebase']:6s} {r['family']:24s} {'skipped':8s} {r['skipped']}"
    status = 'pass' if r.get('stage') is None else f"FAIL@{r['stage']}"
    sizes = ''
    if r.get('params'):
        p0, p1 = r['params']
        f0, f1 = r['flops']
        sizes = f'{p0 / 1e6:6.1f}M->{p1 / 1e6:6.1f}M {f0 / 1e9:6.1f}G->{f1 / 1e9:6.1f}G' + (
            ' traced' if _traced(r) else '')
    reason = f" {r.get('reason')}" if r.get('reason') else ''
    return (f"{r['codebase']:6s} {r['family']:24s} {status:12s} {_short(r.get('config')):48s} "
            f'{sizes:32s}{reason}')


def markdown(records: list) -> str:
    lines = ['| codebase | family | config | result | params (M) | FLOPs (G MACs) | reason | commit |',
             '|---|---|---|---|---|---|---|---|']
    for r in records:
        if r.get('skipped'):
            continue
        sizes = ('', '')
        if r.get('params'):
            sizes = (f"{r['params'][0] / 1e6:.1f} → {r['params'][1] / 1e6:.1f}",
                     f"{r['flops'][0] / 1e9:.2f} → {r['flops'][1] / 1e9:.2f}"
                     + (' (traced)' if _traced(r) else ''))
        if r.get('stage') is None:
            status = 'pass'
        elif r['stage'] in ('build', 'dense'):
            status = f"host fails ({r['stage']})"
        else:
            status = f"fails at {r['stage']}"
        reason = (r.get('reason') or '').replace('|', '/').replace('\n', ' ')[:140]
        if host_note(r):
            reason = f'{reason} — {host_note(r)}'
        lines.append(f"| {r['codebase']} | {r['family']} | `{_short(r.get('config'))}` | "
                     f"{status} | {sizes[0]} | {sizes[1]} | {reason} | {r.get('commit') or '-'} |")
    lines.append('')
    for cb, t in totals(records).items():
        lines.append(f"- {cb}: {t['passed']}/{t['tried']} families tried pass every stage; "
                     f"{t['host_failures']} of the failures are the host's own (the dense model "
                     f"fails before pruning); {t['skipped']} families skipped")
    skipped = [r for r in records if r.get('skipped')]
    if skipped:
        lines.append('- skipped: ' + '; '.join(f"{r['family']} ({r['skipped']})" for r in skipped))
    return '\n'.join(lines)


def print_table(records: list) -> None:
    print(f"\n{'code':6s} {'family':24s} {'status':12s} {'config':48s} "
          f"{'params':16s} {'FLOPs (MACs)':16s} reason")
    for r in records:
        print(row(r))
    for cb, t in totals(records).items():
        rate = t['passed'] / max(t['tried'], 1)
        print(f"{cb}: {t['passed']}/{t['tried']} families pass all stages ({rate:.0%}); "
              f"{t['host_failures']} fail in the host before pruning; {t['skipped']} skipped")


if __name__ == '__main__':
    main()
