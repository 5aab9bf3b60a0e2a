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

/* Shape checks that raise ValueError with both names and both values. */
int ryz_check_dim(const ryz_arr *a, int i, int64_t expected, const char *what);
/* Raise ValueError if the memory of a and b overlaps (outputs must not alias inputs). */
int ryz_check_no_overlap(const ryz_arr *out, const ryz_arr *in);

/* Run fn over [0, n) in chunks of `chunk` items: for each chunk the GIL is
 * released, the pool splits the chunk over threads (grain items at a time), the
 * GIL is taken back and PyErr_CheckSignals() runs, so Ctrl-C / the Jupyter stop
 * button interrupts a long call between chunks. Call WITH the GIL held.
 * Returns 0, or -1 with the exception (KeyboardInterrupt) set. */
int ryz_run_chunked(ryz_task_fn fn, void *ctx, int64_t n, int64_t chunk, int64_t grain);

#endif /* RYZ_PY_H */
