"""Accuracy of the exp, log, log1p and tanh every kernel inlines (_numerics.h).

The functions run through ``kernels.vector_math``: plain loops compiled with the kernels'
flags, so the code measured is the vectorised code the losses use.  float32 results are
compared with the float64 libm result (exact to far below a float32 ulp), float64 results
with the long-double one (x86-64: 64-bit mantissa, 11 bits beyond a double's); the error
is in ulp of the exact value, which must be <= 2.  Where the reference rounds to NaN,
+-inf or 0 the result must be that value, with libm's sign of zero.
"""
import numpy as np
import pytest

from fastloss import _dispatch

kernels = _dispatch.kernels

FUNCTIONS = ("exp", "log", "log1p", "tanh")
MAX_ULP = 2.0
LONG_DOUBLE_IS_WIDER = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant


def run(name, x):
    out = np.empty_like(x)
    kernels.vector_math(name, x, out)
    return out


def reference(name, x):
    """name(x) in the next wider type: float64 for float32, long double for float64."""
    wide = np.float64 if x.dtype == np.float32 else np.longdouble
    with np.errstate(all="ignore"):
        return getattr(np, name)(x.astype(wide))


def ulp_errors(got, exact, dtype):
    """|got - exact| in ulp of ``exact`` (the subnormal spacing below the normal range)."""
    info = np.finfo(dtype)
    _, e = np.frexp(exact)
    ulp = np.ldexp(np.ones_like(exact), np.maximum(e - (info.nmant + 1),
                                                   info.minexp - info.nmant))
    return np.abs(got.astype(exact.dtype) - exact) / ulp


def check(name, x):
    """Assert the accuracy of name over the array x; returns the largest ulp error."""
    got = run(name, x)
    exact = reference(name, x)
    with np.errstate(all="ignore"):
        rounded = exact.astype(x.dtype)
    special = ~np.isfinite(rounded) | (rounded == 0)
    same = ((got == rounded) & (np.signbit(got) == np.signbit(rounded))
            | np.isnan(got) & np.isnan(rounded))
    wrong = special & ~same
    assert not wrong.any(), (name, x[wrong][:5], got[wrong][:5], rounded[wrong][:5])
    errors = ulp_errors(got[~special], exact[~special], x.dtype)
    worst = float(errors.max(initial=0))
    if worst > MAX_ULP:
        i = np.argmax(errors)
        pytest.fail(f"{name}({x[~special][i]!r}) = {got[~special][i]!r}: {worst:.2f} ulp, "
                    f"exact {exact[~special][i]!r}")
    return worst


def float32_range(lo, hi, most=1_000_000):
    """Every float32 in [lo, hi], or, for more than ``most`` of them, evenly spaced ones
    (in bit pattern: as many in each binade)."""
    if lo < 0 < hi:
        return np.concatenate([float32_range(lo, -0.0, most // 2),
                               float32_range(0.0, hi, most // 2)])
    a, b = np.array([lo, hi], np.float32).view(np.int32)   # sign and magnitude
    a, b = int(min(a, b)), int(max(a, b))
    step = -(-(b - a + 1) // most)
    return np.arange(a, b + 1, step, dtype=np.int64).astype(np.int32).view(np.float32)


def both_signs(x):
    return np.concatenate([x, -x])


def bit_pattern_sample(dtype, n, rng):
    """n values spread over every bit pattern (every sign, binade and NaN payload)."""
    bits = np.uint32 if dtype == np.float32 else np.uint64
    return rng.integers(0, np.iinfo(bits).max, n, dtype=bits, endpoint=True).view(dtype)


def edge_values(dtype):
    info = np.finfo(dtype)
    tiny, smallest = info.tiny, info.smallest_subnormal
    values = [np.nan, np.inf, -np.inf, 0.0, -0.0, smallest, -smallest, tiny, -tiny,
              tiny * (1 - info.eps), info.max, -info.max, 1.0, -1.0, 2.0, 0.5, info.eps,
              -info.eps, info.eps / 2, -info.eps / 2, 2.0 ** -30, -2.0 ** -30, 0.55, -0.55,
              20.0, -20.0, 1e30, -1e30, -1 + info.epsneg, -1 - info.eps]
    return np.array(values, dtype=dtype)


#: every float32 of the ranges where a function changes regime
FLOAT32_RANGES = {
    "exp": [(-104.0, -87.0), (85.0, 89.0), (-2.0 ** -20, 2.0 ** -20), (-0.36, 0.36)],
    "log": [(0.0, np.finfo(np.float32).tiny), (0.9, 1.1), (0.70, 0.71), (1.41, 1.42)],
    "log1p": [(-1.0, -0.999), (-2.0 ** -10, 2.0 ** -10), (-0.3, 0.42), (1.0e7, 1.0e8)],
    "tanh": [(-2.0 ** -10, 2.0 ** -10), (0.5, 0.6), (8.9, 9.2), (-0.6, -0.5)],
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_float32_ranges_and_sample(name, rng):
    parts = [edge_values(np.float32), bit_pattern_sample(np.float32, 4_000_000, rng)]
    for lo, hi in FLOAT32_RANGES[name]:
        parts.append(float32_range(lo, hi))
    check(name, np.concatenate(parts))


@pytest.mark.slow
@pytest.mark.parametrize("name", FUNCTIONS)
def test_float32_every_value(name):
    for chunk in range(256):
        bits = np.arange(chunk << 24, (chunk + 1) << 24, dtype=np.uint64)
        check(name, bits.astype(np.uint32).view(np.float32))


def float64_inputs(name, rng):
    n = 400_000
    uniform = {
        "exp": [(-750, 750), (-1, 1), (-746, -707), (705, 710)],
        "log": [(0, 3), (0.99, 1.01), (1e-310, 1e-300)],
        "log1p": [(-1, 1), (-1, -0.999), (1e10, 1e20)],
        "tanh": [(-1, 1), (-25, 25), (0.5, 0.6)],
    }[name]
    tiny = both_signs(rng.uniform(1, 2, n) * 2.0 ** rng.integers(-1074, -20, n))
    parts = [edge_values(np.float64), bit_pattern_sample(np.float64, 2_000_000, rng), tiny,
             np.nextafter(np.float64(1), np.inf) + np.arange(1000) * 2.0 ** -52,
             np.nextafter(np.float64(1), 0) - np.arange(1000) * 2.0 ** -53]
    parts += [rng.uniform(lo, hi, n) for lo, hi in uniform]
    return np.concatenate(parts)


@pytest.mark.skipif(not LONG_DOUBLE_IS_WIDER, reason="long double is a double here")
@pytest.mark.parametrize("name", FUNCTIONS)
def test_float64(name, rng):
    check(name, float64_inputs(name, rng))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_special_values_as_libm(dtype):
    inf, nan = np.inf, np.nan
    x = np.array([nan, inf, -inf, 0.0, -0.0, 1.0, -1.0, -2.0], dtype)
    want = {
        "exp": [nan, inf, 0.0, 1.0, 1.0, np.e, 1 / np.e, np.exp(-2.0)],
        "log": [nan, inf, nan, -inf, -inf, 0.0, nan, nan],
        "log1p": [nan, inf, nan, 0.0, -0.0, np.log(2.0), -inf, nan],
        "tanh": [nan, 1.0, -1.0, 0.0, -0.0, np.tanh(1.0), -np.tanh(1.0), np.tanh(-2.0)],
    }
    for name in FUNCTIONS:
        got = run(name, x)
        expected = np.array(want[name], dtype)
        nan = np.isnan(expected)
        exact = nan | np.isinf(expected) | (expected == 0)
        np.testing.assert_array_equal(np.isnan(got), nan, name)
        np.testing.assert_array_equal(got[exact & ~nan], expected[exact & ~nan], name)
        np.testing.assert_array_equal(np.signbit(got[~nan]), np.signbit(expected[~nan]), name)
        assert ulp_errors(got[~exact], expected[~exact].astype(np.longdouble),
                          dtype).max(initial=0) <= MAX_ULP, name
    # exp's subnormal results, and the underflow and overflow thresholds
    info = np.finfo(dtype)
    lo = np.log(np.longdouble(info.smallest_subnormal) / 2)   # below: rounds to 0
    hi = np.log(np.longdouble(info.max))
    x = np.array([lo * (1 + 1e-6), lo * (1 - 1e-6), hi * (1 - 1e-7), hi * (1 + 1e-6)], dtype)
    got = run("exp", x)
    assert got[0] == 0 and 0 < got[1] < info.tiny
    assert np.isfinite(got[2]) and got[3] == inf
    # log of every power of two down to the smallest subnormal: k log 2 to 2 ulp
    k = np.arange(info.minexp - info.nmant, info.maxexp)
    got = run("log", np.ldexp(np.ones(k.size, dtype), k))
    assert ulp_errors(got[k != 0], k[k != 0] * np.log(np.longdouble(2)), dtype).max() <= 1
    assert got[k == 0] == 0


def test_bad_arguments():
    x = np.ones(4)
    with pytest.raises(ValueError, match="name"):
        kernels.vector_math("sin", x, np.empty_like(x))
    with pytest.raises(TypeError, match="x, out"):
        kernels.vector_math("exp", x, np.empty(4, np.float32))
    with pytest.raises(TypeError, match="x, out"):
        kernels.vector_math("exp", x[::2], np.empty(2))
