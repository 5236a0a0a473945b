/* One kernel call described in plain C: how code outside Python (the C++ operators of
 * fastloss.torch) runs a fastloss kernel without going through NumPy.
 *
 * The kernel module hands out fastloss_native_run as a PyCapsule (native_entry());
 * the caller fills a fastloss_native_call with raw pointers into memory it has checked
 * (C-contiguous, of the call's dtype, outputs not overlapping inputs), and reads the
 * results back from the same struct.  Every field is fixed-width, so the struct has
 * one layout for the C compiler of the kernels and the C++ compiler of the caller.
 */
#ifndef FASTLOSS_NATIVE_CALL_H
#define FASTLOSS_NATIVE_CALL_H

#include <stdint.h>

#define FASTLOSS_NATIVE_ABI 1   /* bumped whenever the struct below changes */

enum fastloss_native_family {
    FASTLOSS_NATIVE_POINTWISE = 0,     /* y_pred and y_true of one shape, n elements */
    FASTLOSS_NATIVE_SPARSE_ROWS = 1,   /* (n, classes) scores, n int64 labels */
    FASTLOSS_NATIVE_DENSE_ROWS = 2     /* (n, classes) scores and targets of one dtype */
};

typedef struct fastloss_native_call {
    int32_t abi;               /* the caller's FASTLOSS_NATIVE_ABI: a mismatch is refused
                                  (flags = UNKNOWN_KERNEL) */
    /* what to run */
    int32_t family;            /* a fastloss_native_family */
    int32_t kernel;            /* the PointwiseKernel / RowKernel id */
    int32_t is_double;         /* 0: float32 arrays, 1: float64 */
    int32_t threads;           /* the thread setting (small calls run serially anyway) */
    int32_t cost;              /* the loss's relative work per element */
    int32_t want_value;        /* 0: gradient only (the value's arithmetic is skipped) */
    /* the arrays */
    const void* y_pred;
    const void* y_true;        /* like y_pred; sparse rows: int64 labels */
    const void* weight;        /* NULL, or pointwise pos_weight (weight_len, along the
                                  last axis) / rows' class weights (classes) */
    int64_t weight_len;
    void* grad;                /* NULL: not wanted */
    void* values;              /* NULL: reduced value only; else one per element/row */
    int64_t n;                 /* elements (pointwise) or rows */
    int64_t classes;           /* rows: C */
    /* options */
    const void* pointwise_params;  /* pointwise: the bytes of pointwise_parameters() */
    double grad_scale;         /* 1/n for "mean", else 1 (ignored with weighted_mean) */
    double label_smoothing;
    double z_loss;
    int64_t ignore_index;
    int32_t has_ignore_index;
    int32_t weighted_mean;     /* sparse rows: "mean" over the summed class weights */
    /* results */
    double total;              /* the sum of the (weighted) terms */
    double denominator;        /* sparse rows: the weighted-mean denominator */
    int32_t flags;             /* the kernel's Flag bits; nonzero: see the Python layer */
} fastloss_native_call;

typedef void (*fastloss_native_entry)(fastloss_native_call* call);

#endif
