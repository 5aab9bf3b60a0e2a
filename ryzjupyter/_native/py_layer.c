/* py_layer.c: Python bindings of the fused BitNet b1.58 decode (bitnet_layer.c) and of the
 * int8 lm_head for one token.
 *
 * bitnet_decode_layer(x, kc, vc, pos, weights, mults, ...)   one layer, one token
 * bitnet_decode_plan(layers, eps, theta, scale, act, ...)    checks and holds every layer's
 *                                                            weights once (a capsule)
 * bitnet_decode_token(plan, x, kcs, vcs, pos, ...)           every layer (and the int8 head)
 *                                                            for one token in one call
 * bitnet_decode_batch(plan, x, caches, pos[, logits])        the same for one token of each of
 *                                                            B streams (continuous batching)
 * lm_head_i8(out, xq, xs, wq, ws)                            the int8 head for one token
 *
 * Parsing and checking one layer's 14 arrays costs ~7 us, about 2 % of a 2B-4T decode step
 * when it sits between every two layers; the plan does it once per model, and a token call
 * checks only x, the caches and the logits. The plan holds the weights' buffers (numpy
 * arrays cannot be resized or freed while it lives). */
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "bitnet_layer.h"
#include "layer.h"
#include "matmul.h"
#include "quant.h"
#include "ryz_py.h"
#include "ternary.h"

const ryz_layer_kernels *ryz_layer = &ryz_layer_scalar;

void ryz_layer_select(ryz_isa isa) {
    static const ryz_layer_kernels *const by_isa[RYZ_ISA_COUNT] = {
        &ryz_layer_scalar, &ryz_layer_avx2, &ryz_layer_avx512};
    ryz_layer = by_isa[isa];
    ryz_register_kernel("lm_head_i8", ryz_layer->name);
    ryz_register_kernel("lm_head_i8_tokens", ryz_layer->gemm_name);
    ryz_register_kernel("bitnet_verify", ryz_layer->name); /* composes the selected tables */
    ryz_register_kernel("bitnet_decode_layer", ryz_layer->name); /* composes the selected tables */
}

/* ---- argument checks shared by the bindings --------------------------------------------- */
static const char *const W_NAMES[11] = {"attn_norm", "wq", "wk", "wv", "attn_sub_norm", "wo", "ffn_norm",
                                        "w_gate", "w_up", "ffn_sub_norm", "w_down"};
static const int W_IS_NORM[11] = {1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0};

/* The layout string: 1 for "t5", 0 for "i2", -1 (ValueError set) otherwise. */
static int parse_layout(const char *layout) {
    if (strcmp(layout, "i2") == 0) return 0;
    if (strcmp(layout, "t5") == 0) return 1;
    PyErr_Format(PyExc_ValueError, "layout must be \"i2\" or \"t5\", got \"%s\"", layout);
    return -1;
}

static int check_constants(double eps, double theta, double scale, int act) {
    if (act != 0 && act != 1) {
        PyErr_Format(PyExc_ValueError, "act must be 0 (relu2) or 1 (silu), got %d", act);
        return -1;
    }
    return ryz_check_min(eps, "eps", 0, 0) || ryz_check_min(theta, "theta", 0, 1) || ryz_check_finite(scale, "scale")
               ? -1 : 0;
}

/* One layer's weights: the 11-tuple of arrays (acquired into *held, which must be empty) and
 * the 7-tuple of w_mult floats, checked against each other. Fills w and c's D, Q, KVD, I. */
static int get_weights(ryz_args *held, PyObject *ow, PyObject *om, int t5, ryz_bitnet_weights *w,
                       ryz_bitnet_config *c) {
    if (!PyTuple_Check(ow) || PyTuple_GET_SIZE(ow) != 11) {
        PyErr_Format(PyExc_ValueError, "weights must be a tuple of 11 arrays (%s, ..., %s)", W_NAMES[0], W_NAMES[10]);
        return -1;
    }
    if (!PyTuple_Check(om) || PyTuple_GET_SIZE(om) != 7) {
        PyErr_SetString(PyExc_ValueError, "mults must be a tuple of 7 floats (q, k, v, o, gate, up, down)");
        return -1;
    }
    for (int i = 0; i < 7; i++) {
        static const char *const names[7] = {"mults[0]", "mults[1]", "mults[2]", "mults[3]", "mults[4]", "mults[5]",
                                             "mults[6]"};
        double m;
        if (ryz_get_finite(PyTuple_GET_ITEM(om, i), names[i], &m)) return -1;
        w->mult[i] = (float)m;
    }
    ryz_arr *a[11];
    for (int i = 0; i < 11; i++)
        if (!(a[i] = ryz_arr_get(held, PyTuple_GET_ITEM(ow, i), W_NAMES[i], W_IS_NORM[i] ? RYZ_F32 : RYZ_U8,
                                 W_IS_NORM[i] ? 1 : 2, 0)))
            return -1;
    int64_t (*const row_bytes)(int64_t) = t5 ? ryz_t5_row_bytes : ryz_i2_row_bytes;
    const char *const rbD = t5 ? "t5_row_bytes(D)" : "i2_row_bytes(D)";
    const char *const rbQ = t5 ? "t5_row_bytes(Q)" : "i2_row_bytes(Q)";
    const char *const rbI = t5 ? "t5_row_bytes(I)" : "i2_row_bytes(I)";
    const int64_t D = ryz_dim(a[0], 0), Q = ryz_dim(a[1], 0), KVD = ryz_dim(a[2], 0), I = ryz_dim(a[7], 0);
    /* D, Q and I are the K of the matrices that read them */
    if (ryz_check_k_limit(a[0], 0, RYZ_TERNARY_MAX_K) || ryz_check_k_limit(a[1], 0, RYZ_TERNARY_MAX_K) ||
        ryz_check_k_limit(a[7], 0, RYZ_TERNARY_MAX_K) ||
        ryz_check_dim(a[1], 1, row_bytes(D), rbD) ||
        ryz_check_dim(a[2], 1, row_bytes(D), rbD) ||
        ryz_check_dim(a[3], 0, KVD, "wk.shape[0]") || ryz_check_dim(a[3], 1, row_bytes(D), rbD) ||
        ryz_check_dim(a[4], 0, Q, "wq.shape[0]") || ryz_check_dim(a[5], 0, D, "attn_norm.shape[0]") ||
        ryz_check_dim(a[5], 1, row_bytes(Q), rbQ) || ryz_check_dim(a[6], 0, D, "attn_norm.shape[0]") ||
        ryz_check_dim(a[7], 1, row_bytes(D), rbD) || ryz_check_dim(a[8], 0, I, "w_gate.shape[0]") ||
        ryz_check_dim(a[8], 1, row_bytes(D), rbD) || ryz_check_dim(a[9], 0, I, "w_gate.shape[0]") ||
        ryz_check_dim(a[10], 0, D, "attn_norm.shape[0]") || ryz_check_dim(a[10], 1, row_bytes(I), rbI))
        return -1;
    c->D = D; c->Q = Q; c->KVD = KVD; c->I = I;
    w->attn_norm = ryz_data(a[0]); w->wq = ryz_data(a[1]); w->wk = ryz_data(a[2]); w->wv = ryz_data(a[3]);
    w->attn_sub_norm = ryz_data(a[4]); w->wo = ryz_data(a[5]); w->ffn_norm = ryz_data(a[6]);
    w->wg = ryz_data(a[7]); w->wu = ryz_data(a[8]); w->ffn_sub_norm = ryz_data(a[9]); w->wd = ryz_data(a[10]);
    return 0;
}

/* The 16-bit format of a cache array: RYZ_KV_F16 for float16, RYZ_KV_BF16 for uint16
 * (bfloat16 bits), else 0 (float32 or anything else: ryz_arr_get then names the dtype it wants). */
static int kv16_format(PyObject *o) {
    Py_buffer view;
    if (!PyObject_CheckBuffer(o) || PyObject_GetBuffer(o, &view, PyBUF_STRIDES | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        return 0;
    }
    const char *f = view.format ? view.format : "B";
    if (*f == '@' || *f == '=' || *f == '<') f++;
    const int fmt = view.itemsize == 2 && f[0] && !f[1] ? (f[0] == 'e' ? RYZ_KV_F16 : f[0] == 'H' ? RYZ_KV_BF16 : 0) : 0;
    PyBuffer_Release(&view);
    return fmt;
}

/* One layer's KV cache (acquired into *held): kc, vc [T, Hkv, hd] float32, or float16, or uint16
 * (bfloat16 bits), or int8 with ks, vs float32 [T, Hkv] (i8), checked against each other, against
 * c (KVD, Q) and pos, and for overlap with x and with the layer's weights (*weights). Sets c's Hq,
 * Hkv, hd and kv. */
static int get_cache(ryz_args *held, PyObject *okc, PyObject *ovc, PyObject *oks, PyObject *ovs, int i8,
                     const ryz_arr *x, const ryz_args *weights, int64_t pos, ryz_bitnet_config *c,
                     ryz_bitnet_kv *kv) {
    ryz_arr *kc, *vc, *ks = NULL, *vs = NULL;
    const int fmt16 = i8 ? 0 : kv16_format(okc);
    const ryz_dtype dt = i8 ? RYZ_I8 : fmt16 == RYZ_KV_F16 ? RYZ_F16 : fmt16 == RYZ_KV_BF16 ? RYZ_U16 : RYZ_F32;
    if (!(kc = ryz_arr_get(held, okc, "kc", dt, 3, 1)) || !(vc = ryz_arr_get(held, ovc, "vc", dt, 3, 1)))
        return -1;
    if (i8 && (!(ks = ryz_arr_get(held, oks, "k_scales", RYZ_F32, 2, 1)) ||
               !(vs = ryz_arr_get(held, ovs, "v_scales", RYZ_F32, 2, 1))))
        return -1;
    const int64_t T = ryz_dim(kc, 0), Hkv = ryz_dim(kc, 1), hd = ryz_dim(kc, 2);
    if (ryz_check_dim(vc, 0, T, "kc.shape[0]") || ryz_check_dim(vc, 1, Hkv, "kc.shape[1]") ||
        ryz_check_dim(vc, 2, hd, "kc.shape[2]") || ryz_check_no_overlap(x, kc) || ryz_check_no_overlap(x, vc) ||
        ryz_check_no_overlap(kc, vc))
        return -1;
    if (i8 && (ryz_check_dim(ks, 0, T, "kc.shape[0]") || ryz_check_dim(ks, 1, Hkv, "kc.shape[1]") ||
               ryz_check_dim(vs, 0, T, "kc.shape[0]") || ryz_check_dim(vs, 1, Hkv, "kc.shape[1]") ||
               ryz_check_no_overlap(ks, vs) || ryz_check_no_overlap(x, ks) || ryz_check_no_overlap(x, vs) ||
               ryz_check_no_overlap(kc, ks) || ryz_check_no_overlap(vc, vs) || ryz_check_no_overlap(kc, vs) ||
               ryz_check_no_overlap(vc, ks)))
        return -1;
    for (int i = 0; i < weights->n; i++) {
        const ryz_arr *w = &weights->a[i];
        if (ryz_check_no_overlap(kc, w) || ryz_check_no_overlap(vc, w) ||
            (i8 && (ryz_check_no_overlap(ks, w) || ryz_check_no_overlap(vs, w))))
            return -1;
    }
    if (Hkv * hd != c->KVD) {
        PyErr_Format(PyExc_ValueError, "the cache's Hkv * hd (%lld * %lld) must equal wk.shape[0] = %lld",
                     (long long)Hkv, (long long)hd, (long long)c->KVD);
        return -1;
    }
    if (hd < 2 || hd % 2 || c->Q % hd || c->Q / hd % Hkv) {
        PyErr_Format(PyExc_ValueError, "head_dim (kc.shape[2] = %lld) must be even and divide wq.shape[0] = %lld "
                     "into a multiple of Hkv = %lld heads", (long long)hd, (long long)c->Q, (long long)Hkv);
        return -1;
    }
    if (pos < 0 || pos >= T) {
        PyErr_Format(PyExc_ValueError, "pos is %lld but must be in 0..T-1 (kc.shape[0] = %lld)", (long long)pos,
                     (long long)T);
        return -1;
    }
    c->Hq = c->Q / hd; c->Hkv = Hkv; c->hd = hd;
    *kv = (ryz_bitnet_kv){0};
    if (i8) {
        kv->kc8 = ryz_data(kc); kv->vc8 = ryz_data(vc); kv->ks = ryz_data(ks); kv->vs = ryz_data(vs);
    } else if (fmt16) {
        kv->kc16 = ryz_data(kc); kv->vc16 = ryz_data(vc); kv->fmt16 = fmt16;
    } else {
        kv->kc = ryz_data(kc); kv->vc = ryz_data(vc);
    }
    return 0;
}

/* the exception for a return code of bitnet_layer.c */
static void set_decode_error(int rc) {
    if (rc == -1) PyErr_NoMemory();
    else if (rc == -3)
        PyErr_SetString(PyExc_ValueError, "a new key or value holds NaN or inf, or a value beyond float16's range "
                        "(|x| >= 65520); the 16-bit KV cache cannot hold it (kv_cache='bf16' has float32's range)");
    else PyErr_SetString(PyExc_ValueError, "the layer's activations hold NaN or inf; cannot quantize them");
}

/* ---- one layer ---------------------------------------------------------------------------- */
PyDoc_STRVAR(decode_layer_doc,
"bitnet_decode_layer(x, kc, vc, pos, weights, mults, eps, theta, scale, act[, k_scales, v_scales[, layout]]) -> None\n\n"
"One BitNet b1.58 decoder layer for one token at position pos, in one call (GIL released once):\n"
"x float32 [D] residual stream, updated in place; kc, vc float32 [T, Hkv, hd] this layer's\n"
"KV cache (row pos is written; rows 0..pos are attended; pos < T); with k_scales, v_scales float32\n"
"[T, Hkv] the cache is int8 [T, Hkv, hd] (as attention_i8kv / quantize_kv_i8); kc, vc float16, or\n"
"uint16 holding bfloat16 bits, are a 16-bit cache (as attention_kv16 / store_kv16);\n"
"weights = (attn_norm f32[D], wq u8[Q, i2_row_bytes(D)], wk u8[KVD, ..], wv u8[KVD, ..],\n"
"           attn_sub_norm f32[Q], wo u8[D, i2_row_bytes(Q)], ffn_norm f32[D],\n"
"           w_gate u8[I, i2_row_bytes(D)], w_up u8[I, ..], ffn_sub_norm f32[I], w_down u8[D, i2_row_bytes(I)])\n"
"(I2 layout; with layout = \"t5\" the seven matrices are T5-packed, t5_row_bytes), mults = the 7 w_mult floats (q, k, v, o, gate, up, down), eps (rms_norm_eps),\n"
"theta (rope_theta), scale (attention scale, head_dim**-0.5), act 0 = relu2, 1 = silu.\n"
"KVD = Hkv * hd, Q = Hq * hd; bitwise the same result as bitnet.py's attention_block + ffn_block.");

static PyObject *py_decode_layer(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *ox, *okc, *ovc, *ow, *om, *oks = Py_None, *ovs = Py_None;
    const char *layout = "i2";
    long long pos;
    double eps, theta, scale;
    int act;
    if (!PyArg_ParseTuple(args, "OOOLOOdddi|OOs:bitnet_decode_layer", &ox, &okc, &ovc, &pos, &ow, &om, &eps,
                          &theta, &scale, &act, &oks, &ovs, &layout))
        return NULL;
    const int i8 = oks != Py_None || ovs != Py_None, t5 = parse_layout(layout);
    if (t5 < 0 || check_constants(eps, theta, scale, act)) return NULL;
    if (i8 && (oks == Py_None || ovs == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "the int8 KV cache needs both k_scales and v_scales");
        return NULL;
    }
    ryz_bitnet_config c = {.eps = (float)eps, .scale = (float)scale, .theta = theta, .act = act, .t5 = t5};
    ryz_bitnet_weights w;
    ryz_bitnet_kv kv;
    ryz_args wa = {0}, xa = {0}, ca = {0};
    ryz_arr *x;
    if (get_weights(&wa, ow, om, t5, &w, &c) || !(x = ryz_arr_get(&xa, ox, "x", RYZ_F32, 1, 1)) ||
        ryz_check_dim(x, 0, c.D, "attn_norm.shape[0]") || ryz_check_no_overlap_any(x, &wa) ||
        get_cache(&ca, okc, ovc, oks, ovs, i8, x, &wa, pos, &c, &kv))
        goto fail;
    float *xp = ryz_data(x);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ryz_bitnet_decode_layer(&c, &w, &kv, xp, pos);
    Py_END_ALLOW_THREADS
    if (rc) {
        set_decode_error(rc);
        goto fail;
    }
    ryz_args_release(&ca);
    ryz_args_release(&xa);
    ryz_args_release(&wa);
    if (PyErr_CheckSignals() != 0) return NULL;
    Py_RETURN_NONE;
fail:
    ryz_args_release(&ca);
    ryz_args_release(&xa);
    ryz_args_release(&wa);
    return NULL;
}

/* ---- a plan: every layer's weights, checked and held once ----------------------------------- */
#define PLAN_CAPSULE "ryzjupyter.bitnet_decode_plan"

typedef struct {
    int n_layers;
    ryz_bitnet_config c;        /* D, Q, KVD, I and the constants; Hq, Hkv, hd come with the cache */
    ryz_bitnet_weights *w;      /* [n_layers] */
    ryz_args *held;             /* [n_layers] each layer's 11 weight arrays; [n_layers]: the head's */
    int has_head;
    ryz_bitnet_head head;
} decode_plan;

static void plan_free(decode_plan *p) {
    if (!p) return;
    if (p->held)
        for (int l = 0; l <= p->n_layers; l++) ryz_args_release(&p->held[l]);
    free(p->held);
    free(p->w);
    free(p);
}

static void plan_capsule_free(PyObject *cap) { plan_free(PyCapsule_GetPointer(cap, PLAN_CAPSULE)); }

PyDoc_STRVAR(decode_plan_doc,
"bitnet_decode_plan(layers, eps, theta, scale, act[, layout[, head]]) -> plan\n\n"
"Check every layer's weights once and hold them for bitnet_decode_token. layers: a sequence of\n"
"(weights, mults) per layer, each as bitnet_decode_layer takes them (all layers of one shape);\n"
"eps, theta, scale, act, layout as bitnet_decode_layer; head: None, or (norm f32[D], wq int8[V, D],\n"
"ws f32[V]) for the final norm and the int8 lm_head (as lm_head_i8). The plan keeps the arrays'\n"
"buffers until it is dropped.");

static PyObject *py_decode_plan(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *olayers, *ohead = Py_None;
    const char *layout = "i2";
    double eps, theta, scale;
    int act;
    if (!PyArg_ParseTuple(args, "Odddi|sO:bitnet_decode_plan", &olayers, &eps, &theta, &scale, &act, &layout,
                          &ohead))
        return NULL;
    const int t5 = parse_layout(layout);
    if (t5 < 0 || check_constants(eps, theta, scale, act)) return NULL;
    PyObject *seq = PySequence_Fast(olayers, "layers must be a sequence of (weights, mults) tuples");
    if (!seq) return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    decode_plan *p = NULL;
    if (n < 1 || n > 100000) {
        PyErr_Format(PyExc_ValueError, "layers must hold 1 to 100000 layers, got %zd", n);
        goto fail;
    }
    p = calloc(1, sizeof *p);
    if (!p || !(p->w = calloc((size_t)n, sizeof *p->w)) || !(p->held = calloc((size_t)n + 1, sizeof *p->held))) {
        PyErr_NoMemory();
        goto fail;
    }
    p->n_layers = (int)n;
    p->c = (ryz_bitnet_config){.eps = (float)eps, .scale = (float)scale, .theta = theta, .act = act, .t5 = t5};
    for (Py_ssize_t l = 0; l < n; l++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, l);
        ryz_bitnet_config cl = p->c;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_Format(PyExc_ValueError, "layers[%zd] must be a (weights, mults) tuple", l);
            goto fail;
        }
        if (get_weights(&p->held[l], PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1), t5, &p->w[l], &cl)) {
            ryz_prefix_error("layer %zd: ", l);
            goto fail;
        }
        if (l == 0) {
            p->c = cl;
        } else if (cl.D != p->c.D || cl.Q != p->c.Q || cl.KVD != p->c.KVD || cl.I != p->c.I) {
            PyErr_Format(PyExc_ValueError, "layer %zd has shapes (D %lld, Q %lld, KVD %lld, I %lld) unlike layer 0's "
                         "(%lld, %lld, %lld, %lld)", l, (long long)cl.D, (long long)cl.Q, (long long)cl.KVD,
                         (long long)cl.I, (long long)p->c.D, (long long)p->c.Q, (long long)p->c.KVD, (long long)p->c.I);
            goto fail;
        }
    }
    if (ohead != Py_None) {
        ryz_args *h = &p->held[n];
        ryz_arr *norm, *wq, *ws;
        if (!PyTuple_Check(ohead) || PyTuple_GET_SIZE(ohead) != 3) {
            PyErr_SetString(PyExc_ValueError, "head must be None or a (norm, wq, ws) tuple");
            goto fail;
        }
        if (!(norm = ryz_arr_get(h, PyTuple_GET_ITEM(ohead, 0), "head norm", RYZ_F32, 1, 0)) ||
            !(wq = ryz_arr_get(h, PyTuple_GET_ITEM(ohead, 1), "head wq", RYZ_I8, 2, 0)) ||
            !(ws = ryz_arr_get(h, PyTuple_GET_ITEM(ohead, 2), "head ws", RYZ_F32, 1, 0)) ||
            ryz_check_dim(norm, 0, p->c.D, "attn_norm.shape[0]") || ryz_check_dim(wq, 1, p->c.D, "attn_norm.shape[0]") ||
            ryz_check_dim(ws, 0, ryz_dim(wq, 0), "head wq.shape[0]"))
            goto fail;
        if (p->c.D > RYZ_MATMUL_I8_MAX_K) {
            PyErr_Format(PyExc_ValueError, "D (%lld) exceeds the int8 head's K limit %d", (long long)p->c.D,
                         RYZ_MATMUL_I8_MAX_K);
            goto fail;
        }
        p->has_head = 1;
        p->head = (ryz_bitnet_head){ryz_data(norm), ryz_data(wq), ryz_data(ws), ryz_dim(wq, 0)};
    }
    Py_DECREF(seq);
    PyObject *cap = PyCapsule_New(p, PLAN_CAPSULE, plan_capsule_free);
    if (!cap) plan_free(p);
    return cap;
fail:
    Py_DECREF(seq);
    plan_free(p);
    return NULL;
}

/* ---- arguments of a call through a plan ------------------------------------------------- */

/* the plan of bitnet_decode_plan in `o` (NULL with TypeError set) */
static decode_plan *get_plan(PyObject *o) {
    decode_plan *p = PyCapsule_GetPointer(o, PLAN_CAPSULE);
    if (!p) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "plan must come from bitnet_decode_plan");
    }
    return p;
}

/* kcs, vcs (and k_scales, v_scales: both or neither, an int8 cache) as fast sequences of one
 * array per layer in seqs[0..3]; logits (None or an array) only with a head. *i8: int8 cache.
 * The caller Py_XDECREFs seqs. */
static int get_layer_seqs(const decode_plan *p, PyObject *okcs, PyObject *ovcs, PyObject *okss, PyObject *ovss,
                          PyObject *ologits, PyObject *seqs[4], int *i8) {
    PyObject *const objs[4] = {okcs, ovcs, okss, ovss};
    static const char *const snames[4] = {"kcs", "vcs", "k_scales", "v_scales"};
    *i8 = okss != Py_None || ovss != Py_None;
    if (*i8 && (okss == Py_None || ovss == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "the int8 KV cache needs both k_scales and v_scales");
        return -1;
    }
    if (ologits != Py_None && !p->has_head) {
        PyErr_SetString(PyExc_ValueError, "logits given but the plan has no head");
        return -1;
    }
    for (int s = 0; s < (*i8 ? 4 : 2); s++) {
        if (!(seqs[s] = PySequence_Fast(objs[s], "kcs, vcs, k_scales and v_scales must be sequences of arrays")))
            return -1;
        if (PySequence_Fast_GET_SIZE(seqs[s]) != p->n_layers) {
            PyErr_Format(PyExc_ValueError, "%s holds %zd arrays but the plan has %d layers", snames[s],
                         PySequence_Fast_GET_SIZE(seqs[s]), p->n_layers);
            return -1;
        }
    }
    return 0;
}

/* Every layer's cache into ca[l], kv[l] (ca, kv: n_layers each, zeroed), checked as get_cache
 * does with rows up to `last` written, and against logits (NULL: none), `also` (NULL: none; an
 * input the caches must not overlap) and, for x and logits, the plan's weights. *c gets layer
 * 0's Hq, Hkv, hd; every layer must have the same, and with same_dtype the same 16-bit format
 * (the verify pass's stash has one dtype for all layers). */
static int get_layer_caches(const decode_plan *p, PyObject *const seqs[4], int i8, const ryz_arr *x,
                            const ryz_arr *logits, const ryz_arr *also, int64_t last, int same_dtype, ryz_args *ca,
                            ryz_bitnet_kv *kv, ryz_bitnet_config *c) {
    const int nl = p->n_layers;
    *c = p->c;
    for (int l = 0; l < nl; l++) {
        ryz_bitnet_config cl = p->c;
        if (ryz_check_no_overlap_any(x, &p->held[l]) || (logits && ryz_check_no_overlap_any(logits, &p->held[l])) ||
            get_cache(&ca[l], PySequence_Fast_GET_ITEM(seqs[0], l), PySequence_Fast_GET_ITEM(seqs[1], l),
                      i8 ? PySequence_Fast_GET_ITEM(seqs[2], l) : Py_None,
                      i8 ? PySequence_Fast_GET_ITEM(seqs[3], l) : Py_None, i8, x, &p->held[l], last, &cl, &kv[l]) ||
            (logits && (ryz_check_no_overlap(logits, &ca[l].a[0]) || ryz_check_no_overlap(logits, &ca[l].a[1]))) ||
            (also && (ryz_check_no_overlap(&ca[l].a[0], also) || ryz_check_no_overlap(&ca[l].a[1], also)))) {
            ryz_prefix_error("layer %d: ", l);
            return -1;
        }
        if (l == 0) {
            *c = cl;
        } else if (cl.Hkv != c->Hkv || cl.hd != c->hd) {
            PyErr_Format(PyExc_ValueError, "layer %d: the cache has %lld kv heads of %lld but layer 0's %lld of %lld",
                         l, (long long)cl.Hkv, (long long)cl.hd, (long long)c->Hkv, (long long)c->hd);
            return -1;
        } else if (same_dtype && kv[l].fmt16 != kv[0].fmt16) {
            PyErr_Format(PyExc_ValueError, "layer %d: the cache's dtype differs from layer 0's", l);
            return -1;
        }
    }
    return p->has_head && ryz_check_no_overlap_any(x, &p->held[nl]) ? -1 : 0;
}

/* ---- one token through a plan ------------------------------------------------------------- */
PyDoc_STRVAR(decode_token_doc,
"bitnet_decode_token(plan, x, kcs, vcs, pos[, k_scales, v_scales[, logits]]) -> (float, float)\n\n"
"Every layer of a bitnet_decode_plan for the token at position pos, in one call (GIL released\n"
"once): x float32 [D] (the token's embedding) is updated in place to the last layer's output;\n"
"kcs, vcs: one KV cache per layer, as bitnet_decode_layer takes them (k_scales, v_scales: one per\n"
"layer, or None for float32 caches). With a plan made with a head and logits float32 [1, V], the\n"
"final norm and the int8 lm_head follow (x stays the last layer's output). Bitwise the same as\n"
"bitnet_decode_layer for each layer, then rmsnorm, quantize_rows_i8 and lm_head_i8. Returns\n"
"the seconds the layers and the head took (0.0 without it), measured in C.");

static PyObject *py_decode_token(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oplan, *ox, *okcs, *ovcs, *okss = Py_None, *ovss = Py_None, *ologits = Py_None;
    long long pos;
    if (!PyArg_ParseTuple(args, "OOOOL|OOO:bitnet_decode_token", &oplan, &ox, &okcs, &ovcs, &pos, &okss, &ovss,
                          &ologits))
        return NULL;
    decode_plan *p = get_plan(oplan);
    if (!p) return NULL;
    const int n = p->n_layers;
    int i8;
    PyObject *seqs[4] = {NULL, NULL, NULL, NULL};
    ryz_args xa = {0}, *ca = NULL;
    ryz_bitnet_kv *kv = NULL;
    PyObject *ret = NULL;
    if (get_layer_seqs(p, okcs, ovcs, okss, ovss, ologits, seqs, &i8)) goto done;
    ryz_arr *x, *logits = NULL;
    if (!(x = ryz_arr_get(&xa, ox, "x", RYZ_F32, 1, 1)) || ryz_check_dim(x, 0, p->c.D, "attn_norm.shape[0]"))
        goto done;
    if (ologits != Py_None &&
        (!(logits = ryz_arr_get(&xa, ologits, "logits", RYZ_F32, 2, 1)) ||
         ryz_check_dim(logits, 0, 1, "1 (one token)") || ryz_check_dim(logits, 1, p->head.V, "the head's V") ||
         ryz_check_no_overlap(logits, x) || ryz_check_no_overlap_any(logits, &p->held[n])))
        goto done;
    ca = calloc((size_t)n, sizeof *ca);
    kv = calloc((size_t)n, sizeof *kv);
    if (!ca || !kv) {
        PyErr_NoMemory();
        goto done;
    }
    ryz_bitnet_config c;
    if (get_layer_caches(p, seqs, i8, x, logits, NULL, pos, 0, ca, kv, &c)) goto done;
    float *xp = ryz_data(x), *lp = logits ? ryz_data(logits) : NULL;
    const ryz_bitnet_head *head = logits ? &p->head : NULL;
    int64_t ns[2] = {0, 0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ryz_bitnet_decode_token(&c, p->w, kv, n, xp, pos, head, lp, ns);
    Py_END_ALLOW_THREADS
    if (rc) {
        set_decode_error(rc);
        goto done;
    }
    ret = Py_BuildValue("(dd)", (double)ns[0] * 1e-9, (double)ns[1] * 1e-9);
done:
    if (ca)
        for (int l = 0; l < n; l++) ryz_args_release(&ca[l]);
    free(ca);
    free(kv);
    ryz_args_release(&xa);
    for (int s = 0; s < 4; s++) Py_XDECREF(seqs[s]);
    if (ret && PyErr_CheckSignals() != 0) Py_CLEAR(ret);
    return ret;
}

/* ---- one token of each of B streams through a plan (continuous batching) ------------------ */
PyDoc_STRVAR(decode_batch_doc,
"bitnet_decode_batch(plan, x, caches, pos[, logits]) -> (float, float)\n\n"
"One decode step for B sequences at once (bitnet_batch.c; GIL released once): x float32 [B, D]\n"
"holds each stream's token embedding and is updated in place; caches: B entries, each (kcs, vcs)\n"
"for float32 caches or (kcs, vcs, k_scales, v_scales) for int8 ones (one array per layer, as\n"
"bitnet_decode_token takes them; every stream of the same kind, no two streams sharing cache\n"
"memory); pos int64 [B]: each stream's position (its row pos[m] is written, rows 0..pos[m]\n"
"attended). With a plan made with a head and logits float32 [B, V], the final norm and the int8\n"
"head follow. Stream m's logits and cache rows are bitwise those of bitnet_decode_token for it\n"
"alone; the linears run as GEMMs over the B tokens (each weight row read once for all).\n"
"Returns the seconds the layers and the head took, measured in C.");

static PyObject *py_decode_batch(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oplan, *ox, *ocaches, *opos, *ologits = Py_None;
    if (!PyArg_ParseTuple(args, "OOOO|O:bitnet_decode_batch", &oplan, &ox, &ocaches, &opos, &ologits)) return NULL;
    decode_plan *p = get_plan(oplan);
    if (!p) return NULL;
    if (ologits != Py_None && !p->has_head) {
        PyErr_SetString(PyExc_ValueError, "logits given but the plan has no head");
        return NULL;
    }
    const int n = p->n_layers;
    PyObject *streams = PySequence_Fast(ocaches, "caches must be a sequence of (kcs, vcs[, k_scales, v_scales])");
    if (!streams) return NULL;
    const Py_ssize_t B = PySequence_Fast_GET_SIZE(streams);
    ryz_args xa = {0}, *ca = NULL;
    ryz_bitnet_kv *kv = NULL;
    PyObject **seqs = NULL;   /* [B * 4]: each stream's kcs, vcs, k_scales, v_scales as fast sequences */
    PyObject *ret = NULL;
    int i8 = -1;
    if (B < 1 || B > 4096) {
        PyErr_Format(PyExc_ValueError, "caches must hold 1 to 4096 streams, got %zd", B);
        goto done;
    }
    ryz_arr *x, *pa, *logits = NULL;
    if (!(x = ryz_arr_get(&xa, ox, "x", RYZ_F32, 2, 1)) || ryz_check_dim(x, 0, B, "len(caches)") ||
        ryz_check_dim(x, 1, p->c.D, "attn_norm.shape[0]") || !(pa = ryz_arr_get(&xa, opos, "pos", RYZ_I64, 1, 0)) ||
        ryz_check_dim(pa, 0, B, "len(caches)"))
        goto done;
    if (ologits != Py_None &&
        (!(logits = ryz_arr_get(&xa, ologits, "logits", RYZ_F32, 2, 1)) || ryz_check_dim(logits, 0, B, "len(caches)") ||
         ryz_check_dim(logits, 1, p->head.V, "the head's V") || ryz_check_no_overlap(logits, x) ||
         ryz_check_no_overlap_any(logits, &p->held[n])))
        goto done;
    if (p->has_head && ryz_check_no_overlap_any(x, &p->held[n])) goto done;
    const int64_t *pos = ryz_data(pa);
    seqs = calloc((size_t)B * 4, sizeof *seqs);
    ca = calloc((size_t)B * (size_t)n, sizeof *ca);
    kv = calloc((size_t)B * (size_t)n, sizeof *kv);
    if (!seqs || !ca || !kv) {
        PyErr_NoMemory();
        goto done;
    }
    static const char *const snames[4] = {"kcs", "vcs", "k_scales", "v_scales"};
    ryz_bitnet_config c = p->c;
    for (Py_ssize_t m = 0; m < B; m++) {
        PyObject *entry = PySequence_Fast_GET_ITEM(streams, m);
        const Py_ssize_t k = PyTuple_Check(entry) ? PyTuple_GET_SIZE(entry) : -1;
        if (k != 2 && k != 4) {
            PyErr_Format(PyExc_ValueError, "caches[%zd] must be a tuple (kcs, vcs) or (kcs, vcs, k_scales, v_scales)", m);
            goto done;
        }
        if (i8 < 0) i8 = k == 4;
        if ((k == 4) != i8) {
            PyErr_SetString(PyExc_ValueError, "every stream's cache must be of the same kind (all float32 or all int8)");
            goto done;
        }
        for (int s = 0; s < k; s++) {
            if (!(seqs[m * 4 + s] = PySequence_Fast(PyTuple_GET_ITEM(entry, s), "caches hold sequences of arrays")))
                goto done;
            if (PySequence_Fast_GET_SIZE(seqs[m * 4 + s]) != n) {
                PyErr_Format(PyExc_ValueError, "caches[%zd]: %s holds %zd arrays but the plan has %d layers", m,
                             snames[s], PySequence_Fast_GET_SIZE(seqs[m * 4 + s]), n);
                goto done;
            }
        }
        for (int l = 0; l < n; l++) {
            ryz_bitnet_config cl = p->c;
            ryz_args *cml = &ca[m * n + l];
            if ((m == 0 && (ryz_check_no_overlap_any(x, &p->held[l]) || (logits && ryz_check_no_overlap_any(logits, &p->held[l])))) ||
                get_cache(cml, PySequence_Fast_GET_ITEM(seqs[m * 4], l), PySequence_Fast_GET_ITEM(seqs[m * 4 + 1], l),
                          i8 ? PySequence_Fast_GET_ITEM(seqs[m * 4 + 2], l) : Py_None,
                          i8 ? PySequence_Fast_GET_ITEM(seqs[m * 4 + 3], l) : Py_None, i8, x, &p->held[l], pos[m],
                          &cl, &kv[m * n + l]) ||
                (logits && ryz_check_no_overlap_any(logits, cml))) {
                ryz_prefix_error("stream %zd: layer %d: ", m, l);
                goto done;
            }
            for (Py_ssize_t o = 0; o < m; o++)   /* no two streams write the same cache */
                for (int i = 0; i < cml->n; i++)
                    for (int j = 0; j < ca[o * n + l].n; j++)
                        if (ryz_check_no_overlap(&cml->a[i], &ca[o * n + l].a[j])) {
                            PyErr_Format(PyExc_ValueError, "streams %zd and %zd share cache memory (layer %d); "
                                         "each stream needs a cache of its own", o, m, l);
                            goto done;
                        }
            if (m == 0 && l == 0) {
                c = cl;
            } else if (cl.Hkv != c.Hkv || cl.hd != c.hd) {
                PyErr_Format(PyExc_ValueError, "stream %zd layer %d: the cache has %lld kv heads of %lld but stream 0's "
                             "layer 0 %lld of %lld", m, l, (long long)cl.Hkv, (long long)cl.hd, (long long)c.Hkv,
                             (long long)c.hd);
                goto done;
            }
        }
    }
    float *xp = ryz_data(x), *lp = logits ? ryz_data(logits) : NULL;
    const ryz_bitnet_head *head = logits ? &p->head : NULL;
    int64_t ns[2] = {0, 0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ryz_bitnet_decode_batch(&c, p->w, kv, n, (int64_t)B, xp, pos, head, lp, ns);
    Py_END_ALLOW_THREADS
    if (rc) {
        set_decode_error(rc);
        goto done;
    }
    ret = Py_BuildValue("(dd)", (double)ns[0] * 1e-9, (double)ns[1] * 1e-9);
done:
    if (ca)
        for (Py_ssize_t i = 0; i < B * n; i++) ryz_args_release(&ca[i]);
    if (seqs)
        for (Py_ssize_t i = 0; i < B * 4; i++) Py_XDECREF(seqs[i]);
    free(seqs);
    free(ca);
    free(kv);
    ryz_args_release(&xa);
    Py_DECREF(streams);
    if (ret && PyErr_CheckSignals() != 0) Py_CLEAR(ret);
    return ret;
}

/* ---- the verify pass of speculative decoding: n tokens (a chain or a tree) ---------------- */
#define VERIFY_MAX_NODES 256

PyDoc_STRVAR(verify_doc,
"bitnet_verify(plan, x, kcs, vcs, pos, depth[, k_scales, v_scales[, logits[, stash]]]) -> (float, float)\n\n"
"The verify pass of speculative decoding: n tokens through every layer of a bitnet_decode_plan as one\n"
"batch (each weight row read once for all of them), GIL released once. x float32 [n, D]: the tokens'\n"
"embeddings, updated in place to the last layer's output. depth int32 [n]: node i sits at position\n"
"pos + depth[i]; the nodes form a tree in depth-first preorder (depth[0] = 0, 1 <= depth[i] <=\n"
"depth[i-1] + 1, a node's parent is the last earlier node one level up; a chain is 0, 1, 2, ...).\n"
"Row i of the results is bitwise what bitnet_decode_token gives for token i decoded right after its\n"
"ancestors (and the cached rows 0..pos-1). kcs, vcs (k_scales, v_scales) as bitnet_decode_token; rows\n"
"pos + d are written as the walk goes and hold its last path afterwards. logits float32 [n, V]: with a\n"
"plan made with a head, the final norm and the int8 lm_head follow. stash: None, or (k, v) float32\n"
"[n_layers, n, Hkv * hd] for a float cache (float16 / uint16 for a 16-bit one), (k, v, k_scales,\n"
"v_scales) int8 [n_layers, n, Hkv * hd] and float32 [n_layers, n, Hkv] for an int8 one: every node's key / value row of every layer, so the caller\n"
"can copy an accepted path into place. Returns the seconds of the layers and of the head (measured in C).");

static PyObject *py_verify(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oplan, *ox, *okcs, *ovcs, *odepth, *okss = Py_None, *ovss = Py_None, *ologits = Py_None,
             *ostash = Py_None;
    long long pos;
    if (!PyArg_ParseTuple(args, "OOOOLO|OOOO:bitnet_verify", &oplan, &ox, &okcs, &ovcs, &pos, &odepth, &okss,
                          &ovss, &ologits, &ostash))
        return NULL;
    decode_plan *p = get_plan(oplan);
    if (!p) return NULL;
    const int nl = p->n_layers;
    int i8;
    PyObject *seqs[4] = {NULL, NULL, NULL, NULL};
    ryz_args xa = {0}, sa = {0}, *ca = NULL;
    ryz_bitnet_kv *kv = NULL;
    ryz_bitnet_stash *st = NULL;
    PyObject *ret = NULL;
    if (get_layer_seqs(p, okcs, ovcs, okss, ovss, ologits, seqs, &i8)) goto done;
    ryz_arr *x, *dep, *logits = NULL;
    if (!(x = ryz_arr_get(&xa, ox, "x", RYZ_F32, 2, 1)) || ryz_check_dim(x, 1, p->c.D, "attn_norm.shape[0]") ||
        !(dep = ryz_arr_get(&xa, odepth, "depth", RYZ_I32, 1, 0)))
        goto done;
    const int64_t n = ryz_dim(x, 0);
    if (n < 1 || n > VERIFY_MAX_NODES) {
        PyErr_Format(PyExc_ValueError, "x must hold 1 to %d tokens, got %lld", VERIFY_MAX_NODES, (long long)n);
        goto done;
    }
    if (ryz_check_dim(dep, 0, n, "x.shape[0]") || ryz_check_no_overlap(x, dep)) goto done;
    const int32_t *depth = ryz_data(dep);
    int32_t max_depth = 0;
    for (int64_t i = 0; i < n; i++) {
        const int32_t d = depth[i];
        if ((i == 0 && d != 0) || (i > 0 && (d < 1 || d > depth[i - 1] + 1))) {
            PyErr_Format(PyExc_ValueError, "depth[%lld] = %d: a tree in depth-first preorder needs depth[0] = 0 and "
                         "1 <= depth[i] <= depth[i-1] + 1", (long long)i, (int)d);
            goto done;
        }
        max_depth = d > max_depth ? d : max_depth;
    }
    if (pos < 0) {
        PyErr_Format(PyExc_ValueError, "pos must be >= 0, got %lld", pos);
        goto done;
    }
    if (ologits != Py_None &&
        (!(logits = ryz_arr_get(&xa, ologits, "logits", RYZ_F32, 2, 1)) || ryz_check_dim(logits, 0, n, "x.shape[0]") ||
         ryz_check_dim(logits, 1, p->head.V, "the head's V") || ryz_check_no_overlap(logits, x) ||
         ryz_check_no_overlap(logits, dep) || ryz_check_no_overlap_any(logits, &p->held[nl])))
        goto done;
    ca = calloc((size_t)nl, sizeof *ca);
    kv = calloc((size_t)nl, sizeof *kv);
    if (!ca || !kv) {
        PyErr_NoMemory();
        goto done;
    }
    ryz_bitnet_config c;
    /* get_cache checks pos < T: pass the deepest row the walk writes */
    if (get_layer_caches(p, seqs, i8, x, logits, dep, pos + max_depth, 1, ca, kv, &c)) goto done;
    if (ostash != Py_None) {
        const Py_ssize_t want = i8 ? 4 : 2;
        const int fmt16 = kv[0].fmt16;
        const ryz_dtype sdt = i8 ? RYZ_I8 : fmt16 == RYZ_KV_F16 ? RYZ_F16 : fmt16 == RYZ_KV_BF16 ? RYZ_U16 : RYZ_F32;
        if (!PyTuple_Check(ostash) || PyTuple_GET_SIZE(ostash) != want) {
            PyErr_Format(PyExc_ValueError, "stash must be None or a tuple of %zd arrays (%s)", want,
                         i8 ? "k, v int8 [n_layers, n, KVD], k_scales, v_scales float32 [n_layers, n, Hkv]"
                            : "k, v [n_layers, n, KVD] of the cache's dtype");
            goto done;
        }
        static const char *const stn[4] = {"stash k", "stash v", "stash k_scales", "stash v_scales"};
        ryz_arr *sarr[4];
        for (int s = 0; s < want; s++) {
            const int scales = s >= 2;
            if (!(sarr[s] = ryz_arr_get(&sa, PyTuple_GET_ITEM(ostash, s), stn[s],
                                        scales ? RYZ_F32 : sdt, 3, 1)) ||
                ryz_check_dim(sarr[s], 0, nl, "the plan's layers") || ryz_check_dim(sarr[s], 1, n, "x.shape[0]") ||
                ryz_check_dim(sarr[s], 2, scales ? c.Hkv : c.KVD, scales ? "Hkv" : "Hkv * hd") ||
                ryz_check_no_overlap(sarr[s], x) || ryz_check_no_overlap(sarr[s], dep) ||
                (logits && ryz_check_no_overlap(sarr[s], logits)))
                goto done;
            for (int s2 = 0; s2 < s; s2++)
                if (ryz_check_no_overlap(sarr[s], sarr[s2])) goto done;
            for (int l = 0; l < nl; l++)
                for (int h = 0; h < ca[l].n; h++)
                    if (ryz_check_no_overlap(sarr[s], &ca[l].a[h])) goto done;
            for (int l = 0; l <= nl; l++)
                if (ryz_check_no_overlap_any(sarr[s], &p->held[l])) goto done;
        }
        if (!(st = calloc((size_t)nl, sizeof *st))) {
            PyErr_NoMemory();
            goto done;
        }
        for (int l = 0; l < nl; l++) {
            if (i8) {
                st[l].k8 = (int8_t *)ryz_data(sarr[0]) + (int64_t)l * n * c.KVD;
                st[l].v8 = (int8_t *)ryz_data(sarr[1]) + (int64_t)l * n * c.KVD;
                st[l].ks = (float *)ryz_data(sarr[2]) + (int64_t)l * n * c.Hkv;
                st[l].vs = (float *)ryz_data(sarr[3]) + (int64_t)l * n * c.Hkv;
            } else if (fmt16) {
                st[l].k16 = (uint16_t *)ryz_data(sarr[0]) + (int64_t)l * n * c.KVD;
                st[l].v16 = (uint16_t *)ryz_data(sarr[1]) + (int64_t)l * n * c.KVD;
            } else {
                st[l].kf = (float *)ryz_data(sarr[0]) + (int64_t)l * n * c.KVD;
                st[l].vf = (float *)ryz_data(sarr[1]) + (int64_t)l * n * c.KVD;
            }
        }
    }
    float *xp = ryz_data(x), *lp = logits ? ryz_data(logits) : NULL;
    const ryz_bitnet_head *head = logits ? &p->head : NULL;
    int64_t ns[2] = {0, 0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ryz_bitnet_verify(&c, p->w, kv, st, nl, xp, n, depth, pos, head, lp, ns);
    Py_END_ALLOW_THREADS
    if (rc) {
        set_decode_error(rc);
        goto done;
    }
    ret = Py_BuildValue("(dd)", (double)ns[0] * 1e-9, (double)ns[1] * 1e-9);
done:
    if (ca)
        for (int l = 0; l < nl; l++) ryz_args_release(&ca[l]);
    free(ca);
    free(kv);
    free(st);
    ryz_args_release(&sa);
    ryz_args_release(&xa);
    for (int s = 0; s < 4; s++) Py_XDECREF(seqs[s]);
    if (ret && PyErr_CheckSignals() != 0) Py_CLEAR(ret);
    return ret;
}

/* ---- int8 lm_head, several tokens ------------------------------------------------------------ */
typedef struct {
    float *out;
    const int8_t *w, *x;
    const float *ws, *xs;
    int64_t K, M, N;
} head_tokens_job;

static void head_tokens_task(void *ctx, int64_t b, int64_t e, int tid) {
    RYZ_UNUSED(tid);
    const head_tokens_job *j = ctx;
    ryz_layer->gemm_i8(j->out, j->N, j->w, j->ws, j->K, j->x, j->K, j->xs, j->M, b, e);
}

PyDoc_STRVAR(lm_head_i8_tokens_doc,
"lm_head_i8_tokens(out, xq, xs, wq, ws) -> None\n\n"
"matmul_i8 for a few tokens with each head row read once for all of them: out float32 [M, N] =\n"
"float(sum_k xq[m, k] wq[n, k]) / (xs[m] * ws[n]), xq int8 [M, K], xs float32 [M], wq int8 [N, K],\n"
"ws float32 [N]; each row bitwise lm_head_i8's for that token. Threads split N; GIL released;\n"
"Ctrl-C checked between chunks.");
static PyObject *py_lm_head_i8_tokens(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oo, *oq, *os, *ow, *ows;
    if (!PyArg_ParseTuple(args, "OOOOO:lm_head_i8_tokens", &oo, &oq, &os, &ow, &ows)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *xq, *xs, *wq, *ws;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, 2, 1)) || !(xq = ryz_arr_get(&a, oq, "xq", RYZ_I8, 2, 0)) ||
        !(xs = ryz_arr_get(&a, os, "xs", RYZ_F32, 1, 0)) || !(wq = ryz_arr_get(&a, ow, "wq", RYZ_I8, 2, 0)) ||
        !(ws = ryz_arr_get(&a, ows, "ws", RYZ_F32, 1, 0)))
        goto fail;
    const int64_t M = ryz_dim(xq, 0), N = ryz_dim(wq, 0), K = ryz_dim(wq, 1);
    if (ryz_check_dim(xq, 1, K, "wq.shape[1]") || ryz_check_dim(xs, 0, M, "xq.shape[0]") ||
        ryz_check_dim(ws, 0, N, "wq.shape[0]") || ryz_check_dim(out, 0, M, "xq.shape[0]") ||
        ryz_check_dim(out, 1, N, "wq.shape[0]") || ryz_check_no_overlap(out, xq) || ryz_check_no_overlap(out, xs) ||
        ryz_check_no_overlap(out, wq) || ryz_check_no_overlap(out, ws))
        goto fail;
    if (ryz_check_k_limit(wq, 1, RYZ_MATMUL_I8_MAX_K)) goto fail;
    head_tokens_job j = {ryz_data(out), ryz_data(wq), ryz_data(xq), ryz_data(ws), ryz_data(xs), K, M, N};
    int64_t chunk = K > 0 && M > 0 ? ((int64_t)250000000 / (K * M)) / 16 * 16 : N;
    if (chunk < 64) chunk = 64;
    if (M > 0 && N > 0 && ryz_run_chunked(head_tokens_task, &j, N, chunk, 16) != 0) goto fail;
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

/* ---- int8 lm_head, one token ------------------------------------------------------------ */
PyDoc_STRVAR(lm_head_i8_doc,
"lm_head_i8(out, xq, xs, wq, ws) -> None\n\n"
"matmul_i8 for one token: out float32 [1, N] = float(sum_k xq[0, k] wq[n, k]) / (xs[0] * ws[n]),\n"
"xq int8 [1, K], xs float32 [1], wq int8 [N, K], ws float32 [N]; bitwise the same as matmul_i8\n"
"(exact integer sum, same epilogue), with a streaming loop for the decode lm_head.\n"
"Threads split N; GIL released; Ctrl-C checked between chunks.");
static PyObject *py_lm_head_i8(PyObject *self, PyObject *args) {
    RYZ_UNUSED(self);
    PyObject *oo, *oq, *os, *ow, *ows;
    if (!PyArg_ParseTuple(args, "OOOOO:lm_head_i8", &oo, &oq, &os, &ow, &ows)) return NULL;
    ryz_args a = {0};
    ryz_arr *out, *xq, *xs, *wq, *ws;
    if (!(out = ryz_arr_get(&a, oo, "out", RYZ_F32, 2, 1)) || !(xq = ryz_arr_get(&a, oq, "xq", RYZ_I8, 2, 0)) ||
        !(xs = ryz_arr_get(&a, os, "xs", RYZ_F32, 1, 0)) || !(wq = ryz_arr_get(&a, ow, "wq", RYZ_I8, 2, 0)) ||
        !(ws = ryz_arr_get(&a, ows, "ws", RYZ_F32, 1, 0)))
        goto fail;
    int64_t N = ryz_dim(wq, 0), K = ryz_dim(wq, 1);
    if (ryz_check_dim(xq, 0, 1, "1 (one token)") || ryz_check_dim(xq, 1, K, "wq.shape[1]") ||
        ryz_check_dim(xs, 0, 1, "1 (one token)") || ryz_check_dim(ws, 0, N, "wq.shape[0]") ||
        ryz_check_dim(out, 0, 1, "1 (one token)") || ryz_check_dim(out, 1, N, "wq.shape[0]") ||
        ryz_check_no_overlap(out, xq) || ryz_check_no_overlap(out, xs) || ryz_check_no_overlap(out, wq) ||
        ryz_check_no_overlap(out, ws))
        goto fail;
    if (ryz_check_k_limit(wq, 1, RYZ_MATMUL_I8_MAX_K)) goto fail;
    const int8_t *x = ryz_data(xq);
    const int32_t xsum = ryz_quant->sum_i8(x, K);
    ryz_head_i8_job j = {ryz_data(out), ryz_data(wq), x, ryz_data(ws), K, xsum, *(const float *)ryz_data(xs)};
    /* ~10 ms of streaming per chunk at ~25 GB/s */
    int64_t chunk = K > 0 ? ((int64_t)250000000 / K) / 16 * 16 : N;
    if (chunk < 64) chunk = 64;
    if (N > 0 && ryz_run_chunked(ryz_head_i8_task, &j, N, chunk, 16) != 0) goto fail;
    ryz_args_release(&a);
    Py_RETURN_NONE;
fail:
    ryz_args_release(&a);
    return NULL;
}

PyMethodDef ryz_layer_methods[] = {
    {"lm_head_i8", py_lm_head_i8, METH_VARARGS, lm_head_i8_doc},
    {"bitnet_decode_layer", py_decode_layer, METH_VARARGS, decode_layer_doc},
    {"bitnet_decode_plan", py_decode_plan, METH_VARARGS, decode_plan_doc},
    {"bitnet_decode_token", py_decode_token, METH_VARARGS, decode_token_doc},
    {"bitnet_decode_batch", py_decode_batch, METH_VARARGS, decode_batch_doc},
    {"bitnet_verify", py_verify, METH_VARARGS, verify_doc},
    {"lm_head_i8_tokens", py_lm_head_i8_tokens, METH_VARARGS, lm_head_i8_tokens_doc},
    {NULL, NULL, 0, NULL},
};
