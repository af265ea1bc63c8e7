"""Would Winograd F(2x2,3x3) convolutions train the fast recipe faster on this CPU?

    .venv/bin/python benchmarks/winograd.py [--batch 384]

Winograd's F(2x2,3x3) turns a 3x3 convolution into 16 independent matrix products over 4x4
input tiles (2.25x fewer multiply-adds on large images, 1.7-2x on the fast network's 7x7 and
15x15 ones) plus linear transforms of the tiles. For the fast network's heavy layers, batch
as the 6-minute budget trains them, forward and both backward passes, channels-last, this
prints the time of

- oneDNN's direct convolution (what cifarlab runs),
- a Winograd convolution written with plain PyTorch operations (exact to ~1e-5), and
- its 16 matrix products alone, forward and backward, which bound any Winograd kernel from
  below however well its transforms were fused: if they alone are no faster than the
  direct convolution, Winograd cannot pay on this CPU.

Each timing is the best of three, the two kinds interleaved.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from cifarlab import machine

# (input channels, filters, image size): the fast network's heavy 3x3 convolutions
LAYERS = [(128, 128, 7), (32, 128, 15), (24, 32, 31), (32, 32, 15)]
G = torch.tensor([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])


def input_transform(d: torch.Tensor) -> torch.Tensor:
    """B^T d along dim 0 (length 4), as additions."""
    return torch.stack([d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]])


def output_transform(m: torch.Tensor) -> torch.Tensor:
    """A^T m along dim 0 (length 4 -> 2)."""
    return torch.stack([m[0] + m[1] + m[2], m[1] - m[2] - m[3]])


def winograd_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A 3x3 'same' convolution of x (N, C, H, W) by w (O, C, 3, 3), F(2x2,3x3)."""
    n, c, h, width = x.shape
    o = w.shape[0]
    th, tw = (h + 1) // 2, (width + 1) // 2
    tiles = F.pad(x, (1, 2 * tw + 1 - width, 1, 2 * th + 1 - h)).unfold(2, 4, 2).unfold(3, 4, 2)
    v = input_transform(tiles.permute(4, 5, 0, 2, 3, 1))  # rows, then columns
    v = input_transform(v.transpose(0, 1)).transpose(0, 1).reshape(16, n * th * tw, c)
    u = torch.einsum("ik,ockl,jl->ijco", G.to(w.dtype), w, G.to(w.dtype)).reshape(16, c, o)
    m = torch.bmm(v, u).reshape(4, 4, n, th, tw, o)
    y = output_transform(output_transform(m).transpose(0, 1)).transpose(0, 1)
    y = y.permute(2, 5, 3, 0, 4, 1).reshape(n, o, 2 * th, 2 * tw)[:, :, :h, :width]
    return y.contiguous(memory_format=torch.channels_last)


def best_of(fns: dict, repeats: int = 3) -> dict:
    times = {k: float("inf") for k in fns}
    for f in fns.values():
        f()  # warm-up
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            fns[name]()
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=384)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"# {machine.describe()}, {torch.get_num_threads()} threads, batch {args.batch}")
    print("| convolution | direct (ms) | Winograd, plain ops (ms) | its 16 GEMMs alone (ms) "
          "| direct / GEMMs alone | largest error |")
    print("|---|---|---|---|---|---|")
    for c, o, s in LAYERS:
        cl = torch.channels_last
        x = torch.randn(args.batch, c, s, s).contiguous(memory_format=cl).requires_grad_()
        w = (torch.randn(o, c, 3, 3) / (3 * c ** .5)).contiguous(memory_format=cl)
        w.requires_grad_()
        gy = torch.randn(args.batch, o, s, s).contiguous(memory_format=cl)
        tiles = args.batch * ((s + 1) // 2) ** 2
        v = torch.randn(16, tiles, c, requires_grad=True)
        u = torch.randn(16, c, o, requires_grad=True)
        gm = torch.randn(16, tiles, o)

        def train_step(conv):
            x.grad = w.grad = None
            conv(x, w).backward(gy)

        def gemms():
            v.grad = u.grad = None
            torch.bmm(v, u).backward(gm)
        error = (winograd_conv(x, w) - F.conv2d(x, w, padding=1)).abs().max().item()
        t = best_of({"direct": lambda: train_step(lambda a, b: F.conv2d(a, b, padding=1)),
                     "winograd": lambda: train_step(winograd_conv), "gemms": gemms})
        print(f"| {c}x{s}x{s} -> {o} | {t['direct'] * 1e3:.0f} | {t['winograd'] * 1e3:.0f} | "
              f"{t['gemms'] * 1e3:.0f} | {t['direct'] / t['gemms']:.2f}x | {error:.0e} |",
              flush=True)


if __name__ == "__main__":
    main()
