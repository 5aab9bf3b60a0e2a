/* py_recurrent.c: Python bindings of the recurrent family (placeholder until the family lands:
 * it registers no kernel and exposes no function). */
#include "ryz_py.h"

void ryz_recurrent_select(ryz_isa isa) { RYZ_UNUSED(isa); }

PyMethodDef ryz_recurrent_methods[] = {
    {NULL, NULL, 0, NULL},
};
