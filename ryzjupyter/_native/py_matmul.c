/* py_matmul.c: Python bindings of the matmul family (placeholder until the family lands:
 * it registers no kernel and exposes no function). */
#include "ryz_py.h"

void ryz_matmul_select(ryz_isa isa) { RYZ_UNUSED(isa); }

PyMethodDef ryz_matmul_methods[] = {
    {NULL, NULL, 0, NULL},
};
