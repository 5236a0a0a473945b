"""Whole training loops with fastloss.torch against torch.nn.functional.

Four loops, each in three forms (eager; ``torch.compile`` of model and loss; eager under
``torch.autocast("cpu", dtype=torch.bfloat16)``):

- ``cnn``: a small convolutional classifier (two conv layers, 10 classes, batch 64 of
  1x28x28 images), cross-entropy;
- ``lm_head``: an LM head (hidden 256 -> 32,000 tokens, 512 tokens a step), cross-entropy
  with label smoothing 0.1 and ignore_index (every 16th token ignored);
- ``multilabel``: a two-layer multi-label head (256 -> 50 labels, batch 256),
  binary cross-entropy from logits with a pos_weight per label;
- ``regression``: a two-layer regression head (64 -> 16 outputs, batch 1,024), mse.

Run ``python benchmarks/training_loops.py [--steps N] [--loops a,b] [--forms eager,...]``:
for each loop and form, the time per training step (forward, loss, backward, SGD
update; best of rounds) with fastloss.torch and with torch.nn.functional from the same
initial weights, the ratio, and the largest difference between the two runs' losses.
The test suite runs the same loops (smaller) to check the losses agree.
"""
import argparse
import contextlib

import torch
import torch.nn.functional as F

import fastloss
import fastloss.torch as FL
from timing import best_time


class Loop:
    """A model, its data and its loss; ``loss(functions, outputs, targets)`` computes the
    loss with ``functions`` (fastloss.torch or torch.nn.functional)."""

    def __init__(self, name, make_model, make_batch, loss, scale=1.0):
        self.name, self.make_model, self.make_batch = name, make_model, make_batch
        self.loss, self.scale = loss, scale

    def batch(self, scale=1.0, seed=0):
        return self.make_batch(torch.Generator().manual_seed(seed), scale)


def _cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 7 * 7, 10))


def _cnn_batch(gen, scale):
    n = max(2, int(64 * scale))
    return torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _lm_head_batch(gen, scale):
    n, vocab = max(16, int(512 * scale)), max(100, int(32000 * scale))
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[::16] = -100
    return torch.randn(n, 256, generator=gen), labels


def _lm_head_model(scale):
    return torch.nn.Linear(256, max(100, int(32000 * scale)))


def _multilabel_batch(gen, scale):
    n = max(8, int(256 * scale))
    return (torch.randn(n, 256, generator=gen),
            (torch.rand(n, 50, generator=gen) < 0.1).float())


def _regression_batch(gen, scale):
    n = max(8, int(1024 * scale))
    x = torch.randn(n, 64, generator=gen)
    return x, x[:, :16] * 0.5 + 0.1 * torch.randn(n, 16, generator=gen)


POS_WEIGHT = torch.linspace(1.0, 9.0, 50)

LOOPS = {
    "cnn": Loop("cnn", lambda scale: _cnn(), _cnn_batch,
                lambda fn, out, y: fn.cross_entropy(out, y)),
    "lm_head": Loop("lm_head", _lm_head_model, _lm_head_batch,
                    lambda fn, out, y: fn.cross_entropy(out, y, label_smoothing=0.1,
                                                        ignore_index=-100)),
    "multilabel": Loop("multilabel", lambda scale: torch.nn.Sequential(
        torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 50)),
        _multilabel_batch,
        lambda fn, out, y: fn.binary_cross_entropy_with_logits(out, y, pos_weight=POS_WEIGHT)),
    "regression": Loop("regression", lambda scale: torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16)),
        _regression_batch, lambda fn, out, y: fn.mse_loss(out, y)),
}
FORMS = ("eager", "compiled", "bf16_autocast")


def make_step(loop, functions, form, scale=1.0, seed=0, backend="inductor"):
    """A training step closure (returns the loss as a float) and its model, from
    initial weights fixed by ``seed``."""
    torch.manual_seed(seed)
    model = loop.make_model(scale)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    inputs, targets = loop.batch(scale, seed)

    def forward(x, y):
        return loop.loss(functions, model(x), y)

    if form == "compiled":
        forward = torch.compile(forward, backend=backend, fullgraph=True)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if form == "bf16_autocast"
                else contextlib.nullcontext())

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = forward(inputs, targets)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step, model


def run_losses(loop, functions, form, steps, **kwargs):
    step, _ = make_step(loop, functions, form, **kwargs)
    return [step() for _ in range(steps)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--steps", type=int, default=5, help="steps compared for losses")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fastloss.set_num_threads(args.threads)
    loaded = FL.build_extension(wait=True)   # the eager fast path, as a loop would have it
    print(f"training steps, {args.threads} threads; torch {torch.__version__}, "
          f"fastloss {fastloss.__version__}; eager calls through the C++ fast path: "
          f"{'yes' if loaded else 'no (' + FL.extension_status()[1] + ')'}")
    print(f"{'loop':<11} {'form':<14} {'fastloss':>10} {'torch':>10} {'ratio':>6}  "
          f"max |loss difference| over {args.steps} steps")
    for name in args.loops.split(","):
        loop = LOOPS[name]
        for form in args.forms.split(","):
            ours = run_losses(loop, FL, form, args.steps)
            theirs = run_losses(loop, F, form, args.steps)
            difference = max(abs(a - b) for a, b in zip(ours, theirs))
            t_ours = best_time(make_step(loop, FL, form)[0], rounds=5)
            t_theirs = best_time(make_step(loop, F, form)[0], rounds=5)
            print(f"{name:<11} {form:<14} {t_ours * 1e3:8.2f}ms {t_theirs * 1e3:8.2f}ms "
                  f"{t_theirs / t_ours:5.2f}x  {difference:.2e}", flush=True)


if __name__ == "__main__":
    main()
