/* ryz_py.h: checked access to numpy arrays (any buffer-protocol object) for the
 * bindings, and the chunked runner that releases the GIL and honours Ctrl-C.
 * Every binding validates dtype, contiguity, rank and shape here before C code
 * touches memory, and raises TypeError/ValueError naming the argument. */
#ifndef RYZ_PY_H
#define RYZ_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "ryz.h"

/* dtype codes accepted by ryz_arr_get */
typedef enum { RYZ_F32, RYZ_I8, RYZ_U8, RYZ_I32, RYZ_I64, RYZ_U16, RYZ_F16 } ryz_dtype;

typedef struct {
    Py_buffer view;
    int held;
    const char *name; /* argument name for messages */
} ryz_arr;

#define RYZ_MAX_ARRS 12
typedef struct {
    ryz_arr a[RYZ_MAX_ARRS];
    int n;
} ryz_args;

/* Acquire `obj` as a C-contiguous array of `dtype` with `ndim` dims (ndim < 0:
 * any). writable != 0 requires a writable buffer. Returns a pointer into args or
 * NULL with an exception set. Release everything with ryz_args_release. */
ryz_arr *ryz_arr_get(ryz_args *args, PyObject *obj, const char *name, ryz_dtype dtype,
                     int ndim, int writable);
void ryz_args_release(ryz_args *args);

static inline int64_t ryz_dim(const ryz_arr *a, int i) { return (int64_t)a->view.shape[i]; }
static inline void *ryz_data(const ryz_arr *a) { return a->view.buf; }
static inline int64_t ryz_size(const ryz_arr *a) {
    return (int64_t)(a->view.len / (a->view.itemsize ? a->view.itemsize : 1));
}

/* The checks below return 0, or -1 with TypeError / ValueError set naming the argument (and
 * the value it has, and what it must be). */

/* a.shape[i] must equal expected (what: where expected comes from, e.g. "x.shape[1]") */
int ryz_check_dim(const ryz_arr *a, int i, int64_t expected, const char *what);
/* a must have ref's rank and shape (the message names ref.shape[i]) */
int ryz_check_same_shape(const ryz_arr *a, const ryz_arr *ref);
/* a.shape[i], a kernel's K (the length it sums over), must be at most limit */
int ryz_check_k_limit(const ryz_arr *a, int i, int64_t limit);
/* The memory of out and in must not overlap (outputs must not alias inputs). */
int ryz_check_no_overlap(const ryz_arr *out, const ryz_arr *in);
/* ... nor that of out and any other array held in `held` (out itself may be one of them: every
 * argument of a call is in one ryz_args, and an output must overlap none of the others) */
int ryz_check_no_overlap_any(const ryz_arr *out, const ryz_args *held);
/* out may be exactly in (same memory and size: element-wise in place is safe); any other
 * overlap is refused */
int ryz_check_alias_exact(const ryz_arr *out, const ryz_arr *in);

/* Scalars: o as a finite float (*out); v finite; v finite and >= low (strict: > low). */
int ryz_get_finite(PyObject *o, const char *name, double *out);
int ryz_check_finite(double v, const char *name);
int ryz_check_min(double v, const char *name, double low, int strict);

/* Prefix the pending exception's message with the formatted text (same type), e.g.
 * ryz_prefix_error("layer %d: ", l) when a per-layer check failed. */
void ryz_prefix_error(const char *fmt, ...);

/* Run fn over [0, n) in chunks of `chunk` items: for each chunk the GIL is
 * released, the pool splits the chunk over threads (grain items at a time), the
 * GIL is taken back and PyErr_CheckSignals() runs, so Ctrl-C / the Jupyter stop
 * button interrupts a long call between chunks. Call WITH the GIL held.
 * Returns 0, or -1 with the exception (KeyboardInterrupt) set. */
int ryz_run_chunked(ryz_task_fn fn, void *ctx, int64_t n, int64_t chunk, int64_t grain);

/* The `chunk` for ryz_run_chunked when each item costs about work_per_item multiply-adds: about
 * 2^26 of them between Ctrl-C checks, and at least two items per thread. */
int64_t ryz_chunk_items(int64_t work_per_item);

#endif /* RYZ_PY_H */
