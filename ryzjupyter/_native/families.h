/* families.h: the kernel families linked into the module. Each family f provides
 *   void ryz_<f>_select(ryz_isa isa);   point its dispatch table at an ISA level
 *   extern PyMethodDef ryz_<f>_methods[];  its Python functions, NULL-terminated
 * (both in py_<f>.c). module.c walks this list. */
#ifndef RYZ_FAMILIES_H
#define RYZ_FAMILIES_H
#define RYZ_FAMILIES(X) X(quant) X(ternary) X(matmul) X(ops) X(attention) X(recurrent) X(layer) X(head4)
#endif
