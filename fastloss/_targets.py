"""The project's performance targets, as data: ``python -m fastloss bench`` reports
which of them its run meets (a report, not a test).

A key is ``(loss, size)``: ``loss`` a registry name, "pointwise" (every pointwise loss),
"rows" (every row loss) or "*"; ``size`` a size key of the bench ("256", "65536",
"1024x1000"), a size class ("small", "medium", "large") or "*".  A value maps metrics to
bounds, all for float32 with the bench's highest thread count (2 here):

- ``max_us``: time per value_and_grad call, at most this many microseconds;
- ``vs_torch`` / ``vs_numpy`` / ``vs_jax``: at least this many times faster than the peer
  (PyTorch forward+backward through autograd, the NumPy reference, JAX jit(value_and_grad));
- ``vs_best``: at least this many times faster than the fastest peer measured;
- ``bandwidth_fraction``: bytes moved (y_pred and y_true read, gradient written) per
  second, as a fraction of the STREAM "add" bandwidth measured in the same run;
- ``thread_speedup``: time with 1 thread over time with the most threads (needs
  ``--threads 1,2``, the default on a 2-core machine).
"""
SPARSE_CE = "sparse_categorical_cross_entropy"
BCE = "binary_cross_entropy"       # benchmarked from logits

TARGETS = {
    # small: <= 2 us per call; >= 10x PyTorch fwd+bwd; >= 3x NumPy
    (SPARSE_CE, "64x10"): {"max_us": 2.0, "vs_torch": 10.0, "vs_numpy": 3.0},
    ("mse", "256"): {"max_us": 2.0, "vs_torch": 10.0, "vs_numpy": 3.0},
    ("huber", "256"): {"max_us": 2.0, "vs_torch": 10.0, "vs_numpy": 3.0},
    (BCE, "256"): {"max_us": 2.0, "vs_torch": 10.0, "vs_numpy": 3.0},
    # in cache: >= 4x PyTorch (pointwise), >= 2.5x (cross-entropy); >= 3x NumPy
    ("pointwise", "65536"): {"vs_torch": 4.0, "vs_numpy": 3.0},
    (SPARSE_CE, "4096x10"): {"vs_torch": 2.5, "vs_numpy": 3.0},
    (SPARSE_CE, "1024x1000"): {"vs_torch": 2.5, "vs_numpy": 3.0},
    # beyond cache: >= 80 % of the measured memory bandwidth; >= 2x PyTorch
    ("pointwise", "16777216"): {"bandwidth_fraction": 0.8, "vs_torch": 2.0},
    (SPARSE_CE, "8192x1000"): {"bandwidth_fraction": 0.8, "vs_torch": 2.0},
    (SPARSE_CE, "512x32000"): {"bandwidth_fraction": 0.8, "vs_torch": 2.0},
    # threads: 2 threads >= 1.7x 1 thread on large cases; small cases never slower than
    # 1 thread (they take the same serial path: 0.95 leaves room for timing noise)
    ("*", "large"): {"thread_speedup": 1.7},
    ("*", "small"): {"thread_speedup": 0.95},
    # every case: faster than the best of PyTorch, JAX and NumPy by >= 1.5x
    ("*", "*"): {"vs_best": 1.5},
}
