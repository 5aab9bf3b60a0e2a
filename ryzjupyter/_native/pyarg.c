/* pyarg.c: argument checking for the bindings (ryz_py.h: arrays, shapes, overlaps, scalars,
 * error context) and the interruptible chunk runner. */
#include "ryz_py.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *dtype_name(ryz_dtype d) {
    switch (d) {
    case RYZ_F32: return "float32";
    case RYZ_I8: return "int8";
    case RYZ_U8: return "uint8";
    case RYZ_I32: return "int32";
    case RYZ_I64: return "int64";
    case RYZ_U16: return "uint16";
    case RYZ_F16: return "float16";
    }
    return "?";
}

/* Does a struct-module format string describe `d`? Byte-order prefixes are
 * accepted only when they mean native order. */
static int format_matches(const char *fmt, Py_ssize_t itemsize, ryz_dtype d) {
    if (!fmt) fmt = "B";
    if (*fmt == '@' || *fmt == '=' || *fmt == '<') fmt++;
    if (strlen(fmt) != 1) return 0;
    char c = fmt[0];
    switch (d) {
    case RYZ_F32: return c == 'f' && itemsize == 4;
    case RYZ_I8: return c == 'b' && itemsize == 1;
    case RYZ_U8: return (c == 'B' || c == 'c') && itemsize == 1;
    case RYZ_I32: return (c == 'i' || c == 'l') && itemsize == 4;
    case RYZ_I64: return (c == 'l' || c == 'q') && itemsize == 8;
    case RYZ_U16: return c == 'H' && itemsize == 2;
    case RYZ_F16: return c == 'e' && itemsize == 2;
    }
    return 0;
}

ryz_arr *ryz_arr_get(ryz_args *args, PyObject *obj, const char *name, ryz_dtype dtype,
                     int ndim, int writable) {
    if (args->n >= RYZ_MAX_ARRS) {
        PyErr_SetString(PyExc_RuntimeError, "ryzjupyter: too many array arguments (internal)");
        return NULL;
    }
    ryz_arr *a = &args->a[args->n];
    memset(a, 0, sizeof *a);
    a->name = name;
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array of %s, got %.80s", name,
                     dtype_name(dtype), Py_TYPE(obj)->tp_name);
        return NULL;
    }
    int flags = PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &a->view, flags) != 0) {
        if (writable && (PyErr_ExceptionMatches(PyExc_BufferError) ||
                         PyErr_ExceptionMatches(PyExc_ValueError))) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s must be a writable array (it is read-only)", name);
        } else if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s: cannot read its memory as an array", name);
        }
        return NULL;
    }
    a->held = 1;
    args->n++;
    if (!format_matches(a->view.format, a->view.itemsize, dtype)) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype %s (got format '%s'); convert with "
                     "np.ascontiguousarray(%s, dtype=np.%s)", name, dtype_name(dtype),
                     a->view.format ? a->view.format : "B", name, dtype_name(dtype));
        return NULL;
    }
    if (ndim >= 0 && a->view.ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", name, ndim,
                     a->view.ndim);
        return NULL;
    }
    if (!PyBuffer_IsContiguous(&a->view, 'C')) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous; pass np.ascontiguousarray(%s)",
                     name, name);
        return NULL;
    }
    return a;
}

void ryz_args_release(ryz_args *args) {
    for (int i = 0; i < args->n; i++)
        if (args->a[i].held) {
            PyBuffer_Release(&args->a[i].view);
            args->a[i].held = 0;
        }
    args->n = 0;
}

int ryz_check_dim(const ryz_arr *a, int i, int64_t expected, const char *what) {
    if (ryz_dim(a, i) != expected) {
        PyErr_Format(PyExc_ValueError, "%s.shape[%d] is %lld but must equal %s (%lld)", a->name, i,
                     (long long)ryz_dim(a, i), what, (long long)expected);
        return -1;
    }
    return 0;
}

int ryz_check_no_overlap(const ryz_arr *out, const ryz_arr *in) {
    const char *o0 = out->view.buf, *o1 = o0 + out->view.len;
    const char *i0 = in->view.buf, *i1 = i0 + in->view.len;
    if (out->view.len > 0 && in->view.len > 0 && o0 < i1 && i0 < o1) {
        PyErr_Format(PyExc_ValueError, "%s must not share memory with %s; pass a separate array",
                     out->name, in->name);
        return -1;
    }
    return 0;
}

int ryz_check_no_overlap_any(const ryz_arr *out, const ryz_args *held) {
    for (int i = 0; i < held->n; i++)
        if (&held->a[i] != out && ryz_check_no_overlap(out, &held->a[i])) return -1;
    return 0;
}

int ryz_check_alias_exact(const ryz_arr *out, const ryz_arr *in) {
    if (out->view.buf == in->view.buf && out->view.len == in->view.len) return 0;
    if (ryz_check_no_overlap(out, in) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s partially overlaps %s; pass the same array (in place) "
                     "or a separate one", out->name, in->name);
        return -1;
    }
    return 0;
}

int ryz_check_same_shape(const ryz_arr *a, const ryz_arr *ref) {
    if (a->view.ndim != ref->view.ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have the shape of %s (%d dimensions, got %d)",
                     a->name, ref->name, ref->view.ndim, a->view.ndim);
        return -1;
    }
    for (int i = 0; i < ref->view.ndim; i++) {
        char what[96];
        snprintf(what, sizeof what, "%s.shape[%d]", ref->name, i);
        if (ryz_check_dim(a, i, ryz_dim(ref, i), what) != 0) return -1;
    }
    return 0;
}

int ryz_check_k_limit(const ryz_arr *a, int i, int64_t limit) {
    if (ryz_dim(a, i) > limit) {
        PyErr_Format(PyExc_ValueError, "%s.shape[%d] (K=%lld) exceeds %lld", a->name, i, (long long)ryz_dim(a, i),
                     (long long)limit);
        return -1;
    }
    return 0;
}

/* ---- scalars ---- */
int ryz_get_finite(PyObject *o, const char *name, double *out) {
    double v = PyFloat_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a float, got %.80s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    if (!isfinite(v)) {
        PyErr_Format(PyExc_ValueError, "%s must be finite, got %R", name, o);
        return -1;
    }
    *out = v;
    return 0;
}

/* PyErr_Format has no %g: doubles are printed here first */
int ryz_check_finite(double v, const char *name) {
    if (!isfinite(v)) {
        char got[32];
        snprintf(got, sizeof got, "%g", v);
        PyErr_Format(PyExc_ValueError, "%s must be finite, got %s", name, got);
        return -1;
    }
    return 0;
}

int ryz_check_min(double v, const char *name, double low, int strict) {
    if (ryz_check_finite(v, name)) return -1;
    if (strict ? !(v > low) : !(v >= low)) {
        char lo[32], got[32];
        snprintf(lo, sizeof lo, "%g", low);
        snprintf(got, sizeof got, "%g", v);
        PyErr_Format(PyExc_ValueError, "%s must be %s %s, got %s", name, strict ? ">" : ">=", lo, got);
        return -1;
    }
    return 0;
}

void ryz_prefix_error(const char *fmt, ...) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    va_list ap;
    va_start(ap, fmt);
    PyObject *prefix = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    PyObject *msg = value ? PyObject_Str(value) : NULL;
    if (prefix && msg) {
        PyErr_Format(type, "%U%U", prefix, msg);
    } else {
        PyErr_Restore(type, value, tb);
        type = value = tb = NULL;
    }
    Py_XDECREF(prefix);
    Py_XDECREF(msg);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

int64_t ryz_chunk_items(int64_t work_per_item) {
    int64_t chunk = ((int64_t)1 << 26) / (work_per_item > 0 ? work_per_item : 1);
    const int64_t least = 2 * (int64_t)ryz_num_threads();
    return chunk < least ? least : chunk;
}

/* A task whose range is shifted by `off` (one chunk of a chunked run). */
typedef struct {
    ryz_task_fn fn;
    void *ctx;
    int64_t off;
} offset_task;

static void offset_task_run(void *ctx, int64_t b, int64_t e, int tid) {
    offset_task *t = ctx;
    t->fn(t->ctx, b + t->off, e + t->off, tid);
}

/* Wall time one chunk should take: the longest a Ctrl-C waits. */
#define CHUNK_TARGET_NS 10000000.0 /* 10 ms */

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int ryz_run_chunked(ryz_task_fn fn, void *ctx, int64_t n, int64_t chunk, int64_t grain) {
    if (grain < 1) grain = 1;
    if (chunk < 1) chunk = n > 0 ? n : 1;
    /* `chunk` is the caller's estimate of ~10 ms of work on an idle machine, and the
     * largest chunk used. Chunks then follow the measured wall time: a loaded machine
     * (or a slow ISA level) gets smaller chunks, so the interrupt latency stays near
     * CHUNK_TARGET_NS whatever else runs. Chunk boundaries never change results:
     * every item is computed by exactly one task, independently of the others. */
    /* A call of at most one chunk runs in one piece (decode's small calls pay no
     * overhead); a longer one starts with an eighth of a chunk to learn the speed. */
    int64_t cur = n <= chunk ? n : (chunk / 8 > grain ? chunk / 8 : grain);
    for (int64_t start = 0; start < n;) {
        int64_t len = n - start < cur ? n - start : cur;
        offset_task t = {fn, ctx, start};
        double t0 = now_ns(), dt;
        Py_BEGIN_ALLOW_THREADS
        ryz_parallel_for(offset_task_run, &t, len, grain);
        Py_END_ALLOW_THREADS
        dt = now_ns() - t0;
        start += len;
        if (PyErr_CheckSignals() != 0) return -1;
        if (start >= n) break;
        double want = dt > 0 ? (double)len * CHUNK_TARGET_NS / dt : (double)chunk;
        if (want > 2.0 * (double)len) want = 2.0 * (double)len; /* grow gently */
        if (want > (double)chunk) want = (double)chunk;
        cur = (int64_t)want;
        if (cur < grain) cur = grain;
    }
    return 0;
}
