/* decode.h: greedy and beam search (fairseq's SequenceGenerator; decode_search.c, no MPI
 * and no I/O), SentencePiece detokenization and raw-text encoding through spm_encode
 * (decode_spm.c), and the distributed translate / split-decoding drivers (decode_dist.c).
 *
 * Conventions shared by every function here:
 *   - a source batch is (n_seq, S) int32, right-padded with the model's pad id, each
 *     sentence ending in eos (exactly what data_batch_load gives);
 *   - a hypothesis is returned without bos and eos;
 *   - the maximum output length of a sentence is int(max_len_a * src_len + max_len_b)
 *     with src_len = that sentence's real source tokens INCLUDING its eos (fairseq's
 *     src_tokens.size(1) for a batch of one sentence; fairseq itself uses the padded
 *     width of the whole batch, which makes results depend on batching), capped at
 *     max_positions - 1 when max_positions > 0.
 */
#ifndef MPIFORMER_DECODE_H
#define MPIFORMER_DECODE_H

#include "config.h"
#include "data.h"
#include "model.h"

#include <stdio.h>

typedef struct decode_opts {
  int beam;         /* 1: greedy */
  double lenpen;    /* finished score = sum logprob / (len incl. eos)^lenpen */
  double max_len_a; /* max output tokens = int(a * src_len + b), src_len incl. eos */
  int max_len_b;
  int max_positions;  /* decoder positions the model accepts (0: no limit) */
  int64_t max_tokens; /* batch budget of the drivers: n_seq * beam * S <= max_tokens */
} decode_opts;

/* Defaults: beam 5, lenpen 1, a 1.2, b 10, max_positions 1024, max_tokens 4096.
 * Not collective. */
void decode_opts_default(decode_opts *o);
/* Take beam, lenpen, max_len_a, max_len_b, max_positions and max_tokens from c. Not
 * collective. */
void decode_opts_from_config(decode_opts *o, const config *c);

/* The maximum output length (tokens, without eos) for a source of src_len tokens
 * including eos. Not collective. */
int decode_max_len(const decode_opts *o, int src_len);

/* Decode a batch: src (n_seq, S) as above. For sentence i writes its best hypothesis to
 * hyp[i * hyp_stride ...] (hyp_len[i] tokens, no bos/eos) and, if score != NULL, its
 * normalized score to score[i] (sum of log-probs incl. eos / (hyp_len[i]+1)^lenpen;
 * -inf if the search found nothing). hyp_stride must be >= decode_max_len(o, S).
 * o->beam == 1 runs decode_greedy, otherwise decode_beam. Buffers are allocated once
 * per call. Not collective (tp = 1: each rank decodes its own batch). */
void decode_batch(model *m, const int32_t *src, int n_seq, int S, const decode_opts *o,
                  int32_t *hyp, int hyp_stride, int *hyp_len, float *score);
/* Greedy search (its own simple loop; beam is ignored). Same arguments. Not collective. */
void decode_greedy(model *m, const int32_t *src, int n_seq, int S, const decode_opts *o,
                   int32_t *hyp, int hyp_stride, int *hyp_len, float *score);
/* Beam search exactly as fairseq's SequenceGenerator + BeamSearch (any beam >= 1).
 * Finished sentences keep being stepped with dummy eos inputs (the decoder state has
 * a fixed n_seq * beam hypotheses), the loop stops when every sentence is done. Not
 * collective. */
void decode_beam(model *m, const int32_t *src, int n_seq, int S, const decode_opts *o, int32_t *hyp,
                 int hyp_stride, int *hyp_len, float *score);

/* SentencePiece detokenization like spm_decode: control ids (pad, bos, eos) print
 * nothing, unk (and out-of-range ids) print " \u2047 " (" ⁇ "), other pieces are
 * concatenated with U+2581 replaced by ' ', the leading U+2581 of a piece being removed
 * while the output is still empty. Writes at most len-1 bytes plus NUL into buf and
 * returns the full length (like snprintf). Not collective. */
size_t decode_detok(const data_file *f, const int32_t *ids, int n, char *buf, size_t len);
/* The same on an explicit vocabulary: pieces (vocab) and the special ids. Not
 * collective. */
size_t decode_detok_pieces(const char *const *pieces, int vocab, int pad, int bos, int eos, int unk,
                           const int32_t *ids, int n, char *buf, size_t len);

/* Encode n raw lines (no '\n' inside) with the SentencePiece model stored in the
 * dataset file data_path (/vocab/spm_model, read by data_read_spm_model): writes the model
 * bytes and the lines to temporary files and runs `spm_encode --output_format=id`. On
 * success *offsets (n + 1 entries) and *ids (offsets[n] entries, no eos) are malloc'd
 * (caller frees) and C_OK is returned; on failure (spm_encode missing or failing, no model
 * in the file) C_ERR with a message in err. Not collective (serial HDF5 read). */
int decode_encode_lines(const char *data_path, const char *const *lines, int n, int64_t **offsets,
                        int32_t **ids, char *err, size_t err_len);

/* The body of `mpiformer translate`: rank 0 reads every line of `in` (ignored on other
 * ranks), encodes them (decode_encode_lines with data_path), the ranks decode
 * length-sorted batches (rank r takes every size-th batch), and rank 0 writes one
 * detokenized hypothesis per input line to `out`, in input order. Sources longer than
 * max_positions - 1 tokens are truncated with a warning. Returns C_OK, or C_ERR on
 * every rank (after rank 0 printed the reason) on failure. Collective on comm. */
int decode_translate_file(model *m, const data_file *f, const char *data_path, const decode_opts *o,
                          FILE *in, FILE *out, MPI_Comm comm);

/* Decode sentences [0, n) of split s, n = data_split_size(s) or max_sentences when
 * 0 < max_sentences < that, distributed over comm in length-sorted batches (rank r takes
 * every size-th batch). On rank 0 *hyps receives n malloc'd detokenized strings in split
 * order (free with decode_free_strings); other ranks get *hyps = NULL. *n_hyps = n on
 * every rank. Collective on comm. */
void decode_split(model *m, const data_file *f, data_split *s, int64_t max_sentences,
                  const decode_opts *o, MPI_Comm comm, char ***hyps, int64_t *n_hyps);
/* Free n strings and the array. Not collective. */
void decode_free_strings(char **s, int64_t n);

#endif
