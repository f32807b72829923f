/* evaluate.h: validation/test loss, perplexity and BLEU of the current model. */
#ifndef MPIFORMER_EVALUATE_H
#define MPIFORMER_EVALUATE_H

#include "decode.h"
#include "session.h"

typedef struct eval_result {
  double loss, nll, ppl; /* per target token (natural log) */
  int64_t n_tokens, n_sentences;
  int has_accuracy;  /* classifier: per sentence; masked-LM: per masked token */
  double accuracy;   /* n_correct / n_tokens (which then counts sentences or masked */
  int64_t n_correct; /* positions) */
  int has_bleu;
  double bleu; /* sacreBLEU, 13a, exp smoothing */
  char bleu_line[256];
  int64_t n_decoded; /* sentences decoded for BLEU */
  double seconds;
} eval_result;

/* Loss (and accuracy for the encoder-only archs, which never decode) over the whole split
 * (batches spread over all ranks, task_step_run) and, when with_bleu, BLEU of decoding the
 * first max_sentences sentences (0: all) with options o against the split's raw target
 * text. If hyps is not NULL, rank 0 gets the detokenized hypotheses (caller frees with
 * decode_free_strings). Returns C_ERR (every rank) if the split is missing.
 * Collective on the session's world. */
int evaluate_split(session *s, const char *split, int with_bleu, int64_t max_sentences,
                   const decode_opts *o, eval_result *r, char ***hyps, int64_t *n_hyps);

/* r as one JSON object's members (no braces) into buf. Not collective. */
void evaluate_json(const eval_result *r, const char *split, char *buf, size_t len);

#endif
