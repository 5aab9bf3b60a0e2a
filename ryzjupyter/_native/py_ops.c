/* py_ops.c: Python bindings of the ops family (placeholder until the family lands:
 * it registers no kernel and exposes no function). */
#include "ryz_py.h"

void ryz_ops_select(ryz_isa isa) { RYZ_UNUSED(isa); }

PyMethodDef ryz_ops_methods[] = {
    {NULL, NULL, 0, NULL},
};
