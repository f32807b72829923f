/* data.h: the HDF5 dataset reader, token-count batching with length bucketing,
 * deterministic shuffling, and per-batch hyperslab reads.
 *
 * The file layout (written by data_prep/pack.py, format_version 1):
 *   attrs  format_version, src_lang, tgt_lang, pad_id, unk_id, bos_id, eos_id, vocab_size
 *   /vocab/pieces (vlen str), /vocab/spm_model (uint8)
 *   /<split>/<side>/tokens (int32), /<split>/<side>/offsets (int64, n+1), /<split>/<side>/text
 * for split in train|valid|test, side in src|tgt. Stored sentences carry no bos/eos.
 * A sentence-pair classification file (data_prep/paraphrase.py) has the root attributes
 * task = "pair_classification" and n_classes, sides a|b in place of src|tgt, and
 * /<split>/label (int32, n, each in [0, n_classes)); here side 0 is a and side 1 is b.
 *
 * A rank opens the file, reads the offsets of a split (8 bytes a sentence: that is
 * with a pair file's 4-byte labels, the only per-sentence data every rank holds), plans
 * the batches of an epoch from the lengths alone, and then reads only the token
 * hyperslabs of the batches it is given. No rank reads a whole split's tokens.
 */
#ifndef MPIFORMER_DATA_H
#define MPIFORMER_DATA_H

#include "common.h"

typedef struct data_file data_file;   /* opaque: an open dataset file */
typedef struct data_split data_split; /* opaque: one split's lengths and dataset handles */

/* Open PATH (parallel HDF5, MPI-IO driver, on comm) and read the attributes and the
 * vocabulary pieces. On a missing, unreadable or wrong-format file every rank returns
 * NULL and `err` says what is wrong (e.g. "data/x.h5: no such file; run
 * data_prep/prepare_bible.sh"). Collective on comm. */
data_file *data_open(const char *path, MPI_Comm comm, char *err, size_t err_len);
/* Close. Collective on the comm given to data_open. */
void data_close(data_file *f);

/* The file's vocabulary size and special token ids. Not collective. */
int data_vocab_size(const data_file *f);
int data_pad_id(const data_file *f);
int data_bos_id(const data_file *f);
int data_eos_id(const data_file *f);
int data_unk_id(const data_file *f);
/* The root attribute "task" ("" when absent: a translation file). Not collective. */
const char *data_task(const data_file *f);
/* n_classes of a pair_classification file (>= 2), 0 for other files. Not collective. */
int data_n_classes(const data_file *f);
/* The SentencePiece piece of token id (e.g. "▁the"); "" when out of range. Not collective. */
const char *data_piece(const data_file *f, int id);

/* Open split "train"|"valid"|"test": reads both sides' offsets on every rank and
 * validates them (offsets[0] = 0, monotone, ending at the tokens' length, equal sentence
 * counts), then checks every token id is in [0, vocab_size): the ranks share that scan
 * (each reads 1/P of each side's tokens, 1 Mi tokens at a time), so a corrupt file fails
 * here, not mid-epoch. /<split>/<side>/text is optional. NULL (with err, the same text on
 * every rank) when the split is missing or malformed. Collective on the file's comm. */
data_split *data_split_open(data_file *f, const char *split, char *err, size_t err_len);
/* Close (every split before data_close). Collective on the file's comm (parallel HDF5
 * closes datasets collectively). */
void data_split_close(data_split *s);
/* Number of sentences (pairs) in the split. Not collective. */
int64_t data_split_size(const data_split *s);
/* Stored length (tokens, without bos/eos) of sentence i on side 0 (src) or 1 (tgt). Not
 * collective. */
int data_split_len(const data_split *s, int side, int64_t i);
/* Label of pair i of a pair_classification split; -1 for other files. Not collective. */
int data_split_label(const data_split *s, int64_t i);
/* The raw text of sentence i on side 0/1, read from /<split>/<side>/text into buf
 * (truncated to len; "" when the split has no text). Not collective (independent read). */
void data_split_text(data_split *s, int side, int64_t i, char *buf, size_t len);

/* The batches of one epoch. Batch b is sentences ids[starts[b] .. starts[b+1]). */
typedef struct data_plan {
  int64_t n_batches;
  int64_t *starts; /* n_batches + 1 */
  int64_t *ids;    /* sentence indices into the split */
} data_plan;

/* Plan an epoch like fairseq: drop training pairs longer than max_src_len/max_tgt_len
 * stored tokens (0 = no limit; the number dropped is returned in *n_dropped if not NULL),
 * order sentences by (tgt length, src length) with ties broken by a shuffle that depends
 * only on (seed, epoch) when shuffle != 0 (by index otherwise), cut consecutive
 * sentences into batches whose padded size n_seq * max(src_len + 1, tgt_len + 1) stays
 * <= max_tokens (a single sentence longer than that is a batch of its own), then
 * shuffle the order of the batches by (seed, epoch) when shuffle != 0.
 * Deterministic: every rank computes the same plan, at any rank count (its own
 * splitmix64 streams seeded from (seed, epoch); no rand()). Not collective. Fills *p
 * with newly allocated arrays; it does not free what *p held (data_plan_free first). */
void data_plan_make(data_plan *p, const data_split *s, int64_t max_tokens, int max_src_len,
                    int max_tgt_len, int shuffle, uint64_t seed, int64_t epoch, int64_t *n_dropped);
/* The plan of a pair-classification epoch whose rows are `bos a eos b eos`: like
 * data_plan_make, but nothing is dropped, sentences are ordered by a + b length (ties by
 * a length, then the shuffle) and a row is min(a + b + 3, max_len) tokens wide (max_len
 * 0: no cap; the caller truncates to it). Not collective. */
void data_plan_make_pairs(data_plan *p, const data_split *s, int64_t max_tokens, int max_len,
                          int shuffle, uint64_t seed, int64_t epoch);
/* Free the plan's arrays. Not collective. */
void data_plan_free(data_plan *p);

/* One batch, padded. src gets eos appended; tgt_in = bos + tgt, tgt_out = tgt + eos.
 * (For a pair file src is a + eos and tgt_out is b + eos.) */
typedef struct data_batch {
  int n_seq;                          /* sentences */
  int src_len;                        /* padded source length (longest + 1 for eos) */
  int tgt_len;                        /* padded target length (longest + 1) */
  int32_t *src;                       /* (n_seq, src_len), pad-filled */
  int32_t *tgt_in;                    /* (n_seq, tgt_len) */
  int32_t *tgt_out;                   /* (n_seq, tgt_len) */
  int64_t *ids;                       /* (n_seq) sentence indices in the split */
  int32_t *labels;                    /* (n_seq) labels of a pair_classification split, else -1 */
  int64_t n_src_tokens, n_tgt_tokens; /* non-pad counts (with eos) */
  size_t cap_seq, cap_tok;            /* allocated capacity, grown as needed */
} data_batch;

/* Read batch b of plan p: the token hyperslabs of its sentences only (one H5Dread a
 * side). Grows out's buffers if needed (zero-initialize *out before first use). Not
 * collective (independent reads); uses scratch buffers held by s, so one thread per
 * split at a time. A failed read (an I/O error, or ids that are no longer in the
 * vocabulary because the file changed) does not stop this rank alone: the batch gets pad
 * tokens in place of the unread ones, so the collective computation that follows runs
 * to its end on every rank, and the split records the first error for
 * data_split_error. */
void data_batch_load(data_split *s, const data_plan *p, int64_t b, data_batch *out);
/* The first read error of split s since it was opened, e.g. "data.h5: reading
 * /train/src/tokens for a batch of 12 sentences failed: Input/output error"; "" when
 * none. The caller agrees on it over its ranks (common_agree) before it uses what the
 * batches computed. Not collective. */
const char *data_split_error(const data_split *s);
/* Same for an explicit list of n sentence indices (any order, repeats allowed; row j
 * is ids[j]) (decoding, tests). Not collective. */
void data_batch_load_ids(data_split *s, const int64_t *ids, int n, data_batch *out);
/* Free the batch's buffers. Not collective. */
void data_batch_free(data_batch *b);

/* Read /vocab/spm_model, the SentencePiece model's bytes, of the dataset file data_path
 * (its own serial HDF5 open, independent of any data_file) into *bytes (malloc'd, *n
 * bytes; the caller frees). Returns C_OK, or C_ERR with a message in err (the file does
 * not open, has no model, or the model is empty or unreadable). Not collective. */
int data_read_spm_model(const char *data_path, unsigned char **bytes, size_t *n, char *err,
                        size_t err_len);

#endif
