/* py_attention.c: Python bindings of the attention family (placeholder until the family lands:
 * it registers no kernel and exposes no function). */
#include "ryz_py.h"

void ryz_attention_select(ryz_isa isa) { RYZ_UNUSED(isa); }

PyMethodDef ryz_attention_methods[] = {
    {NULL, NULL, 0, NULL},
};
