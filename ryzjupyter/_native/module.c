/* module.c: the ryzjupyter._native module: CPU detection, ISA selection, the
 * kernel registry behind native_info(), thread settings, and the functions of
 * every kernel family (families.h). */
#include <stdlib.h>
#include <string.h>

#include "families.h"
#include "ryz_py.h"

#define DECLARE_FAMILY(f)                 \
    void ryz_##f##_select(ryz_isa isa);   \
    extern PyMethodDef ryz_##f##_methods[];
RYZ_FAMILIES(DECLARE_FAMILY)
/* composed steps with no ISA code of their own (they call the families' tables) */
extern PyMethodDef ryz_recurrent_decode_methods[];

/* ---- kernel registry: name -> variant in use ------------------------------- */
#define MAX_KERNELS 128
typedef struct {
    const char *name, *variant;
} kernel_entry;
static kernel_entry g_kernels[MAX_KERNELS];
static int g_nkernels = 0;

void ryz_register_kernel(const char *name, const char *variant) {
    for (int i = 0; i < g_nkernels; i++)
        if (strcmp(g_kernels[i].name, name) == 0) {
            g_kernels[i].variant = variant;
            return;
        }
    if (g_nkernels < MAX_KERNELS) g_kernels[g_nkernels++] = (kernel_entry){name, variant};
}

static ryz_isa g_active = RYZ_ISA_SCALAR;
ryz_isa ryz_active_isa(void) { return g_active; }

static void select_all(ryz_isa isa) {
    g_active = isa;
#define SELECT_FAMILY(f) ryz_##f##_select(isa);
    RYZ_FAMILIES(SELECT_FAMILY)
}

/* ---- Python functions ------------------------------------------------------ */
static PyObject *cpu_feature_list(void) {
    const ryz_cpu_features *f = ryz_cpu();
    PyObject *l = PyList_New(0);
    if (!l) return NULL;
#define ADD(flag, nm)                                                        \
    if (f->flag) {                                                           \
        PyObject *s = PyUnicode_FromString(nm);                              \
        if (!s || PyList_Append(l, s) < 0) { Py_XDECREF(s); Py_DECREF(l); return NULL; } \
        Py_DECREF(s);                                                        \
    }
    ADD(sse2, "sse2") ADD(avx, "avx") ADD(avx2, "avx2") ADD(fma, "fma") ADD(f16c, "f16c")
    ADD(avx512f, "avx512f") ADD(avx512bw, "avx512bw") ADD(avx512vl, "avx512vl")
    ADD(avx512dq, "avx512dq") ADD(avx512vnni, "avx512vnni") ADD(avx512bf16, "avx512bf16")
    ADD(avx512vbmi, "avx512vbmi") ADD(avxvnni, "avxvnni") ADD(os_ymm, "os_ymm") ADD(os_zmm, "os_zmm")
#undef ADD
    return l;
}

PyDoc_STRVAR(info_doc, "info() -> dict\n\nisa, best_isa, supported_isas, cpu_features, threads, "
                       "physical_cores, kernels (name -> variant in use), version, sanitized.");
static PyObject *py_info(PyObject *self, PyObject *noargs) {
    RYZ_UNUSED(self);
    RYZ_UNUSED(noargs);
    PyObject *kernels = PyDict_New(), *supported = PyList_New(0), *feats = cpu_feature_list();
    if (!kernels || !supported || !feats) goto fail;
    for (int i = 0; i < g_nkernels; i++) {
        PyObject *v = PyUnicode_FromString(g_kernels[i].variant);
        if (!v || PyDict_SetItemString(kernels, g_kernels[i].name, v) < 0) { Py_XDECREF(v); goto fail; }
        Py_DECREF(v);
    }
    for (int i = 0; i < RYZ_ISA_COUNT; i++)
        if (ryz_isa_supported((ryz_isa)i)) {
            PyObject *v = PyUnicode_FromString(ryz_isa_name((ryz_isa)i));
            if (!v || PyList_Append(supported, v) < 0) { Py_XDECREF(v); goto fail; }
            Py_DECREF(v);
        }
#if defined(__SANITIZE_ADDRESS__)
    int sanitized = 1;
#else
    int sanitized = 0;
#endif
    PyObject *d = Py_BuildValue("{s:s,s:s,s:N,s:N,s:i,s:i,s:N,s:s,s:O}",
        "isa", ryz_isa_name(g_active), "best_isa", ryz_isa_name(ryz_best_isa()),
        "supported_isas", supported, "cpu_features", feats,
        "threads", ryz_num_threads(), "physical_cores", ryz_physical_cores(),
        "kernels", kernels, "version", RYZ_VERSION, "sanitized", sanitized ? Py_True : Py_False);
    return d;
fail:
    Py_XDECREF(kernels);
    Py_XDECREF(supported);
    Py_XDECREF(feats);
    return NULL;
}

static int set_isa_by_name(const char *name, const char *source) {
    ryz_isa isa;
    if (ryz_isa_from_name(name, &isa) != 0) {
        PyErr_Format(PyExc_ValueError, "%s=%.40s is not an ISA level; use scalar, avx2 or avx512vnni",
                     source, name);
        return -1;
    }
    if (!ryz_isa_supported(isa)) {
        PyErr_Format(PyExc_RuntimeError, "%s=%s: this CPU (or its OS) does not support %s; the best "
                     "level here is %s", source, name, name, ryz_isa_name(ryz_best_isa()));
        return -1;
    }
    select_all(isa);
    return 0;
}

PyDoc_STRVAR(set_isa_doc, "set_isa(name) -> None\n\nPoint every kernel family at the variants of "
                          "one ISA level (scalar, avx2, avx512vnni).\nRaises RuntimeError if the "
                          "CPU lacks it. Not thread-safe: call while no kernel runs.");
static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    const char *name;
    if (!PyArg_ParseTuple(args, "s:set_isa", &name)) return NULL;
    if (set_isa_by_name(name, "isa") != 0) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(set_num_threads_doc, "set_num_threads(n) -> None\n\nResize the thread pool (1..1024).");
static PyObject *py_set_num_threads(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    int n;
    if (!PyArg_ParseTuple(args, "i:set_num_threads", &n)) return NULL;
    if (n < 1 || n > 1024) {
        PyErr_Format(PyExc_ValueError, "threads must be between 1 and 1024, got %d", n);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ryz_set_num_threads(n);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_SetString(PyExc_RuntimeError, "could not resize the thread pool");
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(set_thread_limit_doc,
"set_thread_limit(n) -> int\n\n"
"The calling Python thread's native jobs use at most n of the pool's threads (n <= 0: all of\n"
"them) until it sets another limit; returns the previous limit (0: none). Other threads and\n"
"the pool's size are not affected (the encoder runs a one-query call on one thread: on a\n"
"shared machine a second thread's barrier costs more than it saves, docs/memory.md).");
static PyObject *py_set_thread_limit(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    int n;
    if (!PyArg_ParseTuple(args, "i:set_thread_limit", &n)) return NULL;
    return PyLong_FromLong(ryz_set_thread_limit(n));
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    RYZ_UNUSED(self);
    RYZ_UNUSED(noargs);
    return PyLong_FromLong(ryz_num_threads());
}

static PyMethodDef core_methods[] = {
    {"info", py_info, METH_NOARGS, info_doc},
    {"set_isa", py_set_isa, METH_VARARGS, set_isa_doc},
    {"set_num_threads", py_set_num_threads, METH_VARARGS, set_num_threads_doc},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"set_thread_limit", py_set_thread_limit, METH_VARARGS, set_thread_limit_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "ryzjupyter._native",
    "C kernels of ryzjupyter, dispatched at run time to the best ISA the CPU has.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

static int add_methods(PyObject *m, PyMethodDef *defs) {
    for (PyMethodDef *d = defs; d->ml_name; d++) {
        PyObject *f = PyCFunction_NewEx(d, NULL, PyModule_GetNameObject(m));
        if (!f || PyModule_AddObject(m, d->ml_name, f) < 0) {
            Py_XDECREF(f);
            return -1;
        }
    }
    return 0;
}

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (add_methods(m, core_methods) < 0) goto fail;
#define ADD_FAMILY(f) if (add_methods(m, ryz_##f##_methods) < 0) goto fail;
    RYZ_FAMILIES(ADD_FAMILY)
    if (add_methods(m, ryz_recurrent_decode_methods) < 0) goto fail;
    const char *env = getenv("RYZ_ISA");
    if (env && *env) {
        if (set_isa_by_name(env, "RYZ_ISA") != 0) goto fail;
    } else {
        select_all(ryz_best_isa());
    }
    if (PyModule_AddStringConstant(m, "__version__", RYZ_VERSION) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
