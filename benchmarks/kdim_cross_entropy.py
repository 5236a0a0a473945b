"""fastloss.torch.cross_entropy against torch.nn.functional.cross_entropy, forward and
backward on (N, C, d1, ..., dk) logits with the classes on axis 1, NCHW (contiguous) and
channels-last memory, float32: best of rounds, both libraries interleaved; also the
classes moved last by hand (the adapter's path for spatial input before it read them in
place) and the kernel alone.
``python -m fastloss bench --adapter-only`` times the same two layouts among the
adapter's other cases.

    PYTHONPATH=. python benchmarks/kdim_cross_entropy.py [--threads 2] [--rounds 7] [--shape 8,21,64,64]
"""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

import fastloss as fl
import fastloss.torch as FL
from timing import best_time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--shape", default="8,21,64,64")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    fl.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=gen)
    # the machine is shared: a busy neighbour shows in the load and in the times
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; shape {shape} "
          f"float32, {args.threads} threads, kernels {fl.config()['isa_level']}")
    for layout in ("NCHW", "channels_last"):
        x = torch.randn(shape, generator=gen)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last if len(shape) == 4
                     else torch.channels_last_3d)
        x.requires_grad_(True)

        def run(function):
            def step():
                x.grad = None
                function(x, labels).backward()
            return step

        def as_rows(input, target):
            # the classes moved last by hand: one copy of NCHW input (a view of
            # channels-last), as fastloss.torch used to compute spatial input
            return FL.cross_entropy(input.movedim(1, -1).reshape(-1, shape[1]),
                                    target.reshape(-1))

        times = {}
        for _ in range(2):  # interleaved
            for name, function in (("torch", F.cross_entropy), ("fastloss", FL.cross_entropy),
                                   ("rows", as_rows)):
                t = best_time(run(function), args.rounds)
                times[name] = min(times.get(name, t), t)
        print(f"{layout:14s} torch {times['torch'] * 1e3:7.3f} ms   fastloss "
              f"{times['fastloss'] * 1e3:7.3f} ms   x{times['torch'] / times['fastloss']:.2f}"
              f"   (classes moved last by hand: {times['rows'] * 1e3:.3f} ms)")
    # the kernel alone: the NumPy API into a reused gradient buffer
    x = torch.randn(shape, generator=gen).numpy()
    y = labels.numpy()
    out = np.empty_like(x)
    loss = fl.SparseCategoricalCrossEntropy(from_logits=True, axis=1)
    kernel = best_time(lambda: loss.value_and_grad(x, y, out=out), args.rounds)
    print(f"{'kernel (NumPy)':14s} value_and_grad(axis=1, out=) {kernel * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
