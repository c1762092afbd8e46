#!/usr/bin/env python3
# Copied unchanged (but for these three comment lines) from the workplace's
# shared/bench/torch_siamese_vgg.py, the PyTorch side of its speed baseline:
# launch/gpu_protocol.py runs it beside the JAX step on the same GPU.
"""PyTorch twin of the SMSDD training step, the peer to beat on speed.

Same work as the paper's step: a VGG16 conv tower (13 conv + 5 max-pool, no FC)
shared by both images of a pair, a 2-way linear classifier on the flattened
features, loss = CE + beta * contrastive (Hadsell et al. 2006), SGD with
momentum. Both images of a pair run as one concatenated batch.

  python torch_siamese_vgg.py --pairs 4 --height 110 --width 230 --steps 5 [--bf16]
  python torch_siamese_vgg.py --device cuda --pairs 256 --bf16 --compile --steps 20   # on a GPU

Prints one JSON line: median seconds per step and pairs per second.
Needs torch (CPU build is enough here): pip install torch==2.13.0. On a GPU, --compile adds
torch.compile (what a PyTorch user would turn on there); the first steps then include compilation,
so use --warmup 3 or more.
"""
import argparse, json, statistics, time

import torch
import torch.nn as nn
import torch.nn.functional as F

VGG16 = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M']


def build(width_mult, height, width):
    layers, cin = [], 3
    for v in VGG16:
        if v == 'M':
            layers.append(nn.MaxPool2d(2))
            continue
        cout = max(1, int(v * width_mult))
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
        cin = cout
    feats = nn.Sequential(*layers)
    fc = nn.Linear(cin * (height // 32) * (width // 32), 2)
    return nn.ModuleDict(dict(features=feats, classifier=fc))


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--pairs', type=int, default=4)
    p.add_argument('--height', type=int, default=110)
    p.add_argument('--width', type=int, default=230)
    p.add_argument('--width-mult', type=float, default=1.0)
    p.add_argument('--beta', type=float, default=0.01)
    p.add_argument('--margin', type=float, default=1.0)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--threads', type=int, default=0, help='0: torch default')
    p.add_argument('--nchw', action='store_true', help='default is channels_last, the faster one here')
    p.add_argument('--bf16', action='store_true', help='autocast the step to bfloat16')
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    p.add_argument('--compile', action='store_true', help='torch.compile the step')
    p.add_argument('--warmup', type=int, default=1, help='untimed steps first')
    a = p.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build(a.width_mult, a.height, a.width)
    fmt = torch.contiguous_format if a.nchw else torch.channels_last
    model = model.to(dev, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x_a = torch.randn(a.pairs, 3, a.height, a.width, device=dev).to(memory_format=fmt)
    x_b = torch.randn(a.pairs, 3, a.height, a.width, device=dev).to(memory_format=fmt)
    y_a = torch.randint(0, 2, (a.pairs,), device=dev)
    y_b = torch.randint(0, 2, (a.pairs,), device=dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            f = model['features'](torch.cat([x_a, x_b])).flatten(1).float()
            logits = model['classifier'](f).float()
        ce = F.cross_entropy(logits, torch.cat([y_a, y_b]))
        f_a, f_b = f.chunk(2)
        d = (f_a - f_b).pow(2).sum(-1).add(1e-12).sqrt()
        same = (y_a == y_b).float()
        con = 0.5 * (same * d.pow(2) + (1 - same) * F.relu(a.margin - d).pow(2)).mean()
        loss = ce + a.beta * con
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    if a.compile:
        step = torch.compile(step)
    for _ in range(max(a.warmup, 1)):
        step()
    sync()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(json.dumps(dict(impl='torch', torch=torch.__version__, threads=torch.get_num_threads(),
                          pairs=a.pairs, height=a.height, width=a.width, width_mult=a.width_mult,
                          channels_last=not a.nchw, bf16=a.bf16, device=a.device,
                          compiled=a.compile, step_s=round(med, 4),
                          pairs_per_s=round(a.pairs / med, 3))))


if __name__ == '__main__':
    main()
