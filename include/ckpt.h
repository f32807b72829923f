/* ckpt.h: checkpoints as parallel HDF5 files, written block by block.
 *
 * A checkpoint holds, for every named tensor, the global dataset /model/<name> with its
 * PyTorch shape (1-D for vectors) and, when optimizer state is saved,
 * /optim/exp_avg/<name> and /optim/exp_avg_sq/<name>. Every rank writes only the
 * rectangle it owns (its dmat block) as a hyperslab with collective MPI-IO; no rank
 * gathers the model. Attributes hold the format version, the step, the data cursor,
 * the seed, the lr, the writing layout and the full resolved config. Each dataset
 * carries a checksum attribute that the reader verifies.
 *
 * Saving is atomic: DIR/ckpt_<step>.h5.tmp is written and closed, renamed to
 * DIR/ckpt_<step>.h5, the directory fsynced, and only then is DIR/latest (a one-line
 * text file naming the checkpoint file) replaced, itself by write-temp-then-rename.
 * Older checkpoints beyond keep_last are removed after that.
 *
 * Because datasets have global shapes, a checkpoint written with one layout is read by
 * any other: each reader selects its own block.
 *
 * Checksum (attribute "checksum", uint64, on every dataset): independent of the layout,
 *   checksum = sum over elements e of ckpt_hash_element(g(e), value(e))   (mod 2^64)
 * where g(e) is the element's flat row-major index in the global dataset (r * cols + c;
 * c for a 1-D dataset) and value(e) its float32 bits; see ckpt_hash_element below.
 * Writers sum their own (disjoint) elements and allreduce; the reader re-derives it from
 * the file with the ranks splitting every dataset by rows. In Python:
 *   h = mix64((g * 0x9E3779B97F4A7C15 mod 2^64) ^ bits);  checksum = sum(h) mod 2^64.
 *
 * Root attributes: format_version (int32 = 1), step, epoch, batch_in_epoch, tokens_seen
 * (int64), seed (uint64), lr, wall_seconds (double), layout, config (fixed-length strings),
 * complete (int32 = 1, written last). Files: DIR/ckpt_%08lld.h5 (step), DIR/latest.
 */
#ifndef MPIFORMER_CKPT_H
#define MPIFORMER_CKPT_H

#include "dmat.h"

/* The checksum term of one element: global flat index gidx, value v (its IEEE bits);
 * mix64 is splitmix64's finalizer, common_mix64. Not collective. */
static inline uint64_t ckpt_hash_element(uint64_t gidx, float v) {
  union {
    float f;
    uint32_t u;
  } c = {.f = v};
  return common_mix64((gidx * 0x9E3779B97F4A7C15ULL) ^ (uint64_t)c.u);
}

typedef struct ckpt_tensor {
  const char *name; /* fairseq name, e.g. "encoder.layers.0.fc1.weight" */
  dmat *param;      /* global shape and this rank's block (data: the values) */
  int is_vector;    /* stored 1-D with shape (cols) (param->rows must be 1) */
  int write_param;  /* 1 if this rank writes its param block (one replica writes) */
  /* Optimizer moments of this rank: local flat indices [opt_lo, opt_hi) of the param's
   * local row-major block (all of it with zero=0; a slice with zero=1; empty when this
   * rank holds none). exp_avg[i - opt_lo] belongs to local flat index i (dense, no ld).
   * NULL = none. On save, if the slices of all ranks cover each tensor exactly once they
   * are all written; if they cover it more than once (zero=0: replicas) only the
   * write_param ranks' slices are written; anything else is an error (C_ERR). On load every
   * rank with exp_avg != NULL reads its slice (left untouched if the file has no moments). */
  int64_t opt_lo, opt_hi;
  float *exp_avg, *exp_avg_sq;
} ckpt_tensor;

typedef struct ckpt_meta {
  int64_t step;           /* optimizer updates done */
  int64_t epoch;          /* data cursor: epoch (1-based) ... */
  int64_t batch_in_epoch; /* ... and the next batch index of its plan */
  uint64_t seed;          /* all randomness derives from (seed, step, site) */
  double lr;              /* lr of the last update (the schedule is a function of step) */
  double wall_seconds;    /* training wall time so far (for time-to-BLEU across restarts) */
  int64_t tokens_seen;
  char layout[128];  /* e.g. "dp=2 pp=1 tp=1 (1x1) zero=1" */
  char *config_text; /* resolved config (key = value lines); read: malloc'd, caller frees */
} ckpt_meta;

/* Write checkpoint DIR/ckpt_<meta->step>.h5 atomically, update DIR/latest, keep the newest
 * keep_last (0 = keep all). All ranks of comm call it with the same tensor list (names,
 * shapes) in the same order. Returns C_OK, or C_ERR on every rank with err set (and the
 * previous checkpoints and latest untouched): a write that fails on any rank (disk full,
 * quota, I/O error, read-only) is agreed before the next collective call, err names the
 * file and the system's reason, and the .tmp is removed. Collective on comm. */
int ckpt_save(const char *dir, const ckpt_tensor *t, int n, const ckpt_meta *meta, int keep_last,
              MPI_Comm comm, char *err, size_t err_len);

/* Read checkpoint PATH into the tensors' blocks (and moments where exp_avg != NULL and the
 * file has them; *has_optim tells whether it had). Verifies names, shapes and checksums.
 * meta is filled (config_text malloc'd). On a missing, truncated or corrupted file or a
 * shape mismatch: C_ERR on every rank, err names the file and the problem.
 * Collective on comm. */
int ckpt_load(const char *path, ckpt_tensor *t, int n, ckpt_meta *meta, int *has_optim,
              MPI_Comm comm, char *err, size_t err_len);

/* Read only the attributes (meta, config_text malloc'd). Collective on comm. */
int ckpt_read_meta(const char *path, ckpt_meta *meta, MPI_Comm comm, char *err, size_t err_len);

/* Resolve SPEC to a checkpoint path: a file path is returned as is; a directory or "auto"
 * (meaning DIR) gives the file named by DIR/latest if it verifies, else the newest
 * ckpt_*.h5 in DIR that verifies (a warning names each one skipped). Returns C_OK with
 * path filled, or C_ERR when none is usable (err says why; "none found" is distinguished
 * by *none_found = 1, so that resume=auto can start fresh). Collective on comm. */
int ckpt_resolve(const char *spec, const char *dir, char *path, size_t path_len, int *none_found,
                 MPI_Comm comm, char *err, size_t err_len);

/* Which of the n tensors the checkpoint file PATH holds: has[i] = 1 when /model/<t[i].name>
 * exists (all 0 when the file cannot be opened; ckpt_load then says why). Rank 0 reads the
 * file, every rank of comm gets the answer. Collective on comm. */
void ckpt_has_tensors(const char *path, const ckpt_tensor *t, int n, uint8_t *has, MPI_Comm comm);

#endif
