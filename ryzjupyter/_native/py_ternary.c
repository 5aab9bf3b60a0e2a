/* py_ternary.c: Python bindings of the ternary family (placeholder until the family lands:
 * it registers no kernel and exposes no function). */
#include "ryz_py.h"

void ryz_ternary_select(ryz_isa isa) { RYZ_UNUSED(isa); }

PyMethodDef ryz_ternary_methods[] = {
    {NULL, NULL, 0, NULL},
};
