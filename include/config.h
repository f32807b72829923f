/* config.h: run configuration from key = value files and command-line overrides.
 *
 * Every key is declared once in CONFIG_KEYS below (name, type, default, range, help):
 * the struct fields, the parser, the validation and the resolved dump all come from
 * that one table. Unknown keys, values of the wrong type or out of range, and
 * inconsistent combinations are rejected with a message naming the key and the file
 * line, with a suggestion for a misspelled key.
 */
#ifndef MPIFORMER_CONFIG_H
#define MPIFORMER_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* X(name, type, default, min, max, help); type: INT, FLOAT, STR.
 * For STR, min is a '|'-separated list of the allowed values ("" = any). */
#define CONFIG_KEYS(X)                                                                             \
  /* run */                                                                                        \
  X(data, STR, "data/bible/es-en.h5", "", 0, "HDF5 dataset (data_prep/pack.py)")                   \
  X(out, STR, "runs/default", "", 0, "run directory: config, metrics.jsonl, ckpt/")                \
  X(seed, INT, 1, 0, 2147483647, "seed of init, dropout and shuffling")                            \
  X(threads, INT, 0, 0, 256, "BLAS/oneDNN threads per rank (0: OPENBLAS_NUM_THREADS; oneDNN 1)")   \
  X(gemm, STR, "auto", "auto|openblas|onednn", 0,                                                  \
    "local matmul engine (auto: oneDNN on AVX-512 CPUs, else OpenBLAS)")                           \
  X(precision, STR, "fp32", "fp32|bf16", 0,                                                        \
    "matmul operands: fp32, or bf16 (fp32 weights, sums, accumulation)")                           \
  /* model */                                                                                      \
  X(arch, STR, "transformer", "transformer|encoder_classifier|encoder_mlm", 0,                     \
    "translation model, or encoder-only pair classifier / masked-LM (docs/MODEL.md)")              \
  X(enc_layers, INT, 6, 1, 256, "encoder layers")                                                  \
  X(dec_layers, INT, 6, 1, 256, "decoder layers")                                                  \
  X(d_model, INT, 512, 2, 65536, "model width")                                                    \
  X(ffn_dim, INT, 1024, 1, 1 << 20, "feed-forward width")                                          \
  X(heads, INT, 4, 1, 1024, "attention heads (must divide d_model)")                               \
  X(norm, STR, "pre", "pre|post", 0, "Pre-LN or Post-LN")                                          \
  X(dropout, FLOAT, 0.1, 0, 0.99, "residual and embedding dropout")                                \
  X(attn_dropout, FLOAT, 0.0, 0, 0.99, "dropout on attention probabilities")                       \
  X(act_dropout, FLOAT, 0.0, 0, 0.99, "dropout after the FFN's ReLU")                              \
  X(share_embeddings, STR, "all", "none|decoder_io|all", 0, "which embeddings are one tensor")     \
  X(label_smoothing, FLOAT, 0.1, 0, 0.99, "label smoothing epsilon")                               \
  X(max_positions, INT, 1024, 1, 1 << 20, "longest sequence the model accepts")                    \
  /* optimizer and schedule */                                                                     \
  X(optimizer, STR, "adam", "adam|adamw", 0, "adam: L2 in the gradient; adamw: decoupled")         \
  X(lr, FLOAT, 5e-4, 0, 10, "peak learning rate (lr_max)")                                         \
  X(beta1, FLOAT, 0.9, 0, 0.999999, "Adam beta1")                                                  \
  X(beta2, FLOAT, 0.98, 0, 0.999999, "Adam beta2")                                                 \
  X(adam_eps, FLOAT, 1e-8, 0, 1, "Adam epsilon")                                                   \
  X(weight_decay, FLOAT, 0.0, 0, 1, "weight decay")                                                \
  X(clip_norm, FLOAT, 0.0, 0, 1e9, "clip the global gradient norm to this (0: off)")               \
  X(lr_scheduler, STR, "inverse_sqrt", "inverse_sqrt|linear|step|constant", 0, "lr schedule")      \
  X(warmup_steps, INT, 4000, 0, 1 << 30, "linear warm-up steps (0: none)")                         \
  X(decay_start, INT, 0, 0, 1 << 30, "inverse_sqrt: hold lr_max until this step, then decay")      \
  X(end_lr, FLOAT, 0.0, 0, 10, "linear: lr at max_steps")                                          \
  X(lr_decay_epochs, STR, "", "", 0, "step: comma-separated epochs at which lr is multiplied")     \
  X(lr_decay_factor, FLOAT, 0.1, 0, 1, "step: the factor")                                         \
  /* training */                                                                                   \
  X(max_tokens, INT, 4096, 1, 1 << 30, "padded tokens per micro-batch per rank")                   \
  X(update_freq, INT, 1, 1, 4096, "micro-batches accumulated per rank per update")                 \
  X(max_steps, INT, 0, 0, 1 << 30, "stop after this many updates (0: no limit)")                   \
  X(max_epochs, INT, 0, 0, 1 << 20, "stop after this many epochs (0: no limit)")                   \
  X(max_time, FLOAT, 0, 0, 1e9, "stop after this many seconds of training (0: no limit)")          \
  X(max_src_len, INT, 256, 0, 1 << 20, "drop training pairs with longer source (0: none)")         \
  X(max_tgt_len, INT, 256, 0, 1 << 20, "drop training pairs with longer target (0: none)")         \
  X(log_interval, INT, 10, 1, 1 << 30, "steps between training log lines")                         \
  X(eval_interval, INT, 0, 0, 1 << 30, "steps between validations (0: each epoch end)")            \
  X(eval_bleu, INT, 1, 0, 1, "compute validation BLEU (greedy/beam decoding)")                     \
  X(eval_max_sentences, INT, 0, 0, 1 << 30, "decode only the first N valid sentences (0: all)")    \
  X(save_interval, INT, 0, 0, 1 << 30, "steps between checkpoints (0: at each validation)")        \
  X(keep_last, INT, 3, 0, 1 << 20, "checkpoints kept (0: all)")                                    \
  X(resume, STR, "auto", "", 0, "auto (newest good in out/ckpt), none, or a checkpoint path")      \
  X(init_from, STR, "", "", 0,                                                                     \
    "fresh run: load the encoder tensors of this checkpoint (e.g. MLM)")                           \
  X(mlm_prob, FLOAT, 0.15, 0.01, 0.9, "encoder_mlm: fraction of the word tokens selected")         \
  X(nan_policy, STR, "stop", "stop|skip", 0, "on a NaN/inf loss or gradient")                      \
  X(max_skips, INT, 10, 0, 1 << 30, "skip: stop after this many skipped steps")                    \
  /* decoding */                                                                                   \
  X(beam, INT, 5, 1, 1024, "beam size (1: greedy)")                                                \
  X(lenpen, FLOAT, 1.0, 0, 100, "fairseq length penalty: score / length^lenpen")                   \
  X(max_len_a, FLOAT, 1.2, 0, 100, "maximum output length a * src_len + b")                        \
  X(max_len_b, INT, 10, 0, 1 << 20, "maximum output length a * src_len + b")                       \
  /* layout */                                                                                     \
  X(tp, INT, 1, 1, 4096, "tensor-parallel ranks per stage")                                        \
  X(tp_grid, STR, "", "", 0, "PRxPC shape of the TP grid (default: most square, pc | heads)")      \
  X(pp, INT, 1, 1, 4096, "pipeline stages")                                                        \
  X(microbatches, INT, 1, 1, 4096, "micro-batches per update and replica (= update_freq)")         \
  X(pp_timeout, FLOAT, 300, 0.1, 1e6, "pp > 1: seconds a stage waits for a message, then aborts")  \
  X(zero, INT, 0, 0, 1, "1: shard Adam states over data-parallel ranks")                           \
  X(grad_overlap, INT, 1, 0, 1, "dp > 1: sum gradient buckets during the backward (0: after it)")  \
  X(grad_bucket_mb, FLOAT, 4, 0.001, 4096, "dp > 1: MiB per gradient bucket (grad_overlap = 1)")

typedef struct config {
#define CONFIG_FIELD_INT(name) int64_t name;
#define CONFIG_FIELD_FLOAT(name) double name;
#define CONFIG_FIELD_STR(name) char name[256];
#define CONFIG_FIELD(name, type, def, lo, hi, help) CONFIG_FIELD_##type(name)
  CONFIG_KEYS(CONFIG_FIELD)
#undef CONFIG_FIELD
  /* derived */
  int tp_pr, tp_pc;
  /* warnings of the reading ("file:line: text" lines): config_from_args prints them */
  char warnings[2048];
} config;

/* Fill every key with its default (and clear the warnings). Not collective. */
void config_defaults(config *c);

/* Read FILE (UTF-8 "key = value" lines, '#' comments, blank lines; the rules for what
 * editors put into text are in docs/CONFIG.md) into c. Returns C_OK, or C_ERR with a
 * message in err naming the file and line and rendering any invisible or non-ASCII
 * character visibly (\u00a0). An empty file, a file of only comments and a directory are
 * errors; a key set twice takes the later value, with a warning. Warnings go to
 * c->warnings. Not collective (every rank reads
 * the same file and so reaches the same verdict). */
int config_load_file(config *c, const char *path, char *err, size_t err_len);

/* Apply one "key=value" (a command-line override, or any later setting wins). Returns
 * C_OK, or C_ERR with err set (where: "command line" or "file:line"). Not collective. */
int config_set(config *c, const char *key_value, const char *where, char *err, size_t err_len);

/* Check the combination (heads divide d_model, d_model even, tp_grid shape, schedule
 * keys, ...) and derive tp_pr/tp_pc. Returns C_OK, or C_ERR with err set. Not collective. */
int config_validate(config *c, char *err, size_t err_len);

/* Parse the common command line shape "CONFIG [key=value ...]": defaults, the file (if
 * argv[0] does not contain '='), overrides, validation; prints the warnings of the
 * reading to stderr from world rank 0 only. Returns C_OK, or C_ERR with err set. Not
 * collective (no communication; every rank parses the same arguments alike). */
int config_from_args(config *c, int argc, char **argv, char *err, size_t err_len);

/* Print the key table as a Markdown table (docs/CONFIG.md is this output). Not collective. */
void config_print_keys(FILE *f);

/* Write every key as "key = value" lines into buf (malloc'd, caller frees). Not
 * collective. */
char *config_dump(const config *c);

#endif
