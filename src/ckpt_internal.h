/* ckpt_internal.h: what ckpt.c (helpers, save) shares with ckpt_load.c (load, verify,
 * resolve). Private to the ckpt module: nothing outside src/ckpt*.c includes it.
 */
#ifndef MPIFORMER_CKPT_INTERNAL_H
#define MPIFORMER_CKPT_INTERNAL_H

#include "ckpt.h"

#include <hdf5.h>

#define CKPT_FORMAT_VERSION 1
#define CKPT_MSG 1024                /* internal error message buffer */
#define CKPT_VERIFY_FLOATS (1 << 20) /* floats per read of the checksum pass (4 MB) */
#define CKPT_PATH 4096
#define CKPT_CLOSE_MARGIN (64 << 10) /* bytes free beyond the metadata still to write */

/* printf into an internal message buffer of CKPT_MSG bytes. Not collective. */
void ckpt_msgf(char *msg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Copy an internal message into the caller's err[err_len]. Not collective. */
void ckpt_copy_err(char *err, size_t err_len, const char *msg);

/* A file access property list for parallel HDF5 (MPI-IO) over comm; the caller closes
 * it. Not collective (the file open that uses it is). */
hid_t ckpt_fapl_mpio(MPI_Comm comm);

/* A transfer property list for collective MPI-IO reads and writes. Not collective. */
hid_t ckpt_dxpl_collective(void);

/* 1 if name is exactly ckpt_<digits>.h5 (with suffix ".tmp" when tmp), step parsed. Not collective.
 */
int ckpt_parse_name(const char *name, int tmp, long long *step);

/* Sum of ckpt_hash_element over a run of n consecutive global flat indices. Not collective. */
uint64_t ckpt_hash_run(uint64_t gidx0, const float *v, int64_t n);

/* Select this rank's rectangle of m in fs and return the matching memory space of its
 * row-major block (rows_local x ld); none when !active or the block is empty. Not collective. */
hid_t ckpt_select_block(hid_t fs, const dmat *m, int is_vector, int active);

/* Select local flat indices [lo, hi) of m's block in fs: a partial first row, whole middle
 * rows, a partial last row (in global coordinates), joined with OR. Returns a dense 1-D
 * memory space of hi - lo floats (none when empty). HDF5 transfers a hyperslab union in
 * row-major file order, which is the local flat order, so the dense buffer lines up. Not
 * collective. */
hid_t ckpt_select_flat(hid_t fs, const dmat *m, int is_vector, int64_t lo, int64_t hi);

/* Read the scalar attribute name of loc as mtype into v: C_OK, or C_ERR when it is
 * missing or unreadable. Not collective. */
int ckpt_get_attr(hid_t loc, const char *name, hid_t mtype, void *v);

/* A fixed-length string attribute, malloc'd into *out. Not collective. */
int ckpt_get_str_attr(hid_t loc, const char *name, char **out);

/* The dataset path /<group>/<name> into buf[len]. Not collective. */
void ckpt_dsname(char *buf, size_t len, const char *group, const char *name);

/* Programming errors in the tensor list abort; a list that differs between ranks too (it
 * would otherwise hang in a collective). Collective on comm. */
void ckpt_check_tensors(const ckpt_tensor *t, int n, int reading, MPI_Comm comm);

#endif
