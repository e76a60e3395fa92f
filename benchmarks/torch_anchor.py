"""The paper-size network and its three training steps in plain PyTorch, for speed comparison.

Run side by side with `launch.benchmark --torch_anchor=benchmarks/torch_anchor.py` on the same
machine (not installed; needs PyTorch, which the project does not depend on):

  python3 -m venv ../torch-venv && ../torch-venv/bin/pip install torch numpy
  ../torch-venv/bin/python benchmarks/torch_anchor.py [--threads N] [--iters 3]

Prints patches/s for: the source step (16 labelled patches: three view towers, classifier at
the centre, deep-supervision heads, Adam + L2), one critic update (16 source + 16 target
patches through the towers without gradient, then the critic, RMSprop, clipping) and the
generator step (16 source + 16 target patches, L_adv + alpha * L_cls, RMSprop).

Network (the paper's sizes): each tower 3x3 convs with 32 channels and dilations
1,1,2,4,8,16,32, one more 3x3, a 1x1 to 32 features, ELU after each (155x155 -> 25x25);
classifier 96 -> 128 -> 7 (dropout 0.35); critic: seven 3x3 convs 128,128,256,128,64,32,1 with
BatchNorm + ReLU, then a linear layer from the 11x11 map to one score.
"""

import argparse
import time

import torch
from torch import nn

DILATIONS = (1, 1, 2, 4, 8, 16, 32)
P, O, B = 155, 25, 16


def tower():
  layers, c = [], 1
  for d in DILATIONS + (1,):
    layers += [nn.Conv2d(c, 32, 3, dilation=d), nn.ELU()]
    c = 32
  layers += [nn.Conv2d(32, 32, 1), nn.ELU()]
  return nn.Sequential(*layers)


class Generator(nn.Module):
  def __init__(self):
    super().__init__()
    self.towers = nn.ModuleList([tower() for _ in range(3)])

  def forward(self, views):  # (3, B, 1, P, P) -> (B, 96, O, O)
    return torch.cat([t(v) for t, v in zip(self.towers, views)], 1)


def critic():
  layers, c = [], 96
  for ch in (128, 128, 256, 128, 64, 32, 1):
    layers += [nn.Conv2d(c, ch, 3), nn.BatchNorm2d(ch), nn.ReLU()]
    c = ch
  return nn.Sequential(*layers, nn.Flatten(), nn.Linear(11 * 11, 1))


def timed(fn, iters):
  fn()
  t = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - t) / iters


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
  ap.add_argument("--iters", type=int, default=3)
  a = ap.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  g = Generator()
  cls = nn.Sequential(
    nn.Dropout(0.35), nn.Linear(96, 128), nn.ELU(), nn.Dropout(0.35), nn.Linear(128, 7)
  )
  heads = nn.ModuleList([nn.Conv2d(32, 7, 1) for _ in range(3)])
  d = critic()
  xs, xt = torch.randn(3, B, 1, P, P), torch.randn(3, B, 1, P, P)
  ys = torch.randint(0, 7, (3, B, O, O))
  ce = nn.CrossEntropyLoss()

  opt_src = torch.optim.Adam(
    list(g.parameters()) + list(cls.parameters()) + list(heads.parameters()),
    lr=5e-4,
    weight_decay=5e-5,
  )

  def source_step():
    f = g(xs)
    loss = ce(cls(f[:, :, O // 2, O // 2]), ys[0, :, O // 2, O // 2])
    for v in range(3):
      loss = loss + 0.05 * ce(heads[v](f[:, 32 * v : 32 * (v + 1)]), ys[v])
    opt_src.zero_grad()
    loss.backward()
    opt_src.step()

  opt_d = torch.optim.RMSprop(d.parameters(), lr=5e-4)

  def critic_step():
    with torch.no_grad():
      fs, ft = g(xs), g(xt)
    loss = d(ft).mean() - d(fs).mean()
    opt_d.zero_grad()
    loss.backward()
    opt_d.step()
    with torch.no_grad():
      for p in d.parameters():
        p.clamp_(-0.1, 0.1)

  opt_g = torch.optim.RMSprop(g.parameters(), lr=5e-5)
  for p in d.parameters():
    p.requires_grad_(False)
  for p in cls.parameters():
    p.requires_grad_(False)

  def generator_step():
    loss = -d(g(xt)).mean() + 2.0 * ce(cls(g(xs)[:, :, O // 2, O // 2]), ys[0, :, O // 2, O // 2])
    opt_g.zero_grad()
    loss.backward()
    opt_g.step()

  print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
  g.train()
  cls.train()
  t = timed(source_step, a.iters)
  print(f"source step      {B:3d} patches  {t:8.3f} s  {B / t:8.2f} patches/s")
  for p in d.parameters():
    p.requires_grad_(True)
  t = timed(critic_step, a.iters)
  print(f"critic update    {2 * B:3d} patches  {t:8.3f} s  {2 * B / t:8.2f} patches/s")
  for p in d.parameters():
    p.requires_grad_(False)
  cls.eval()
  t = timed(generator_step, a.iters)
  print(f"generator step   {2 * B:3d} patches  {t:8.3f} s  {2 * B / t:8.2f} patches/s")


if __name__ == "__main__":
  main()
