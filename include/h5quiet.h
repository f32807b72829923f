/* h5quiet.h: a scope in which HDF5 does not print its error stack.
 *
 * HDF5 prints a stack of internal frames on every failed call by default. Modules that
 * turn failures into one message of their own (ckpt, data, task, decode) open a scope
 * around their calls and close it on every exit path:
 *   h5quiet q;
 *   h5quiet_begin(&q);
 *   ... HDF5 calls, failures handled by the caller ...
 *   h5quiet_end(&q);
 * Scopes nest: each restores what was set before it. The one copy of this pattern; kept
 * out of common.h so that modules without HDF5 do not include it.
 */
#ifndef MPIFORMER_H5QUIET_H
#define MPIFORMER_H5QUIET_H

#include <hdf5.h>

typedef struct h5quiet {
  H5E_auto2_t func; /* the error handler in force before the scope */
  void *data;
} h5quiet;

/* Save the current HDF5 error handler in q and silence HDF5. Not collective. */
static inline void h5quiet_begin(h5quiet *q) {
  H5Eget_auto2(H5E_DEFAULT, &q->func, &q->data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

/* Restore the handler saved in q. Not collective. */
static inline void h5quiet_end(const h5quiet *q) {
  H5Eset_auto2(H5E_DEFAULT, q->func, q->data);
}

#endif
