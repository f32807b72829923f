/* session.h: what every subcommand sets up the same way: the config from the command
 * line, the process grid, the dataset, the model, the optimizer, and the checkpoint
 * tensor list that ties parameters and Adam moments to their fairseq names.
 *
 * Every failure a user can cause (bad key, impossible layout, missing dataset, corrupt
 * checkpoint) is reported once by rank 0 with what to do, and session_open returns
 * C_ERR on every rank, so the caller exits non-zero without a hang.
 */
#ifndef MPIFORMER_SESSION_H
#define MPIFORMER_SESSION_H

#include "ckpt.h"
#include "config.h"
#include "data.h"
#include "grid.h"
#include "model.h"
#include "optim.h"
#include "task.h"

typedef struct session {
  config cfg;
  grid g;
  data_file *data;
  model *model;
  task task; /* the arch's batches and forward call (task.h), made once here */
  optim opt; /* only when with_optim */
  int with_optim;
  ckpt_tensor *tensors;      /* one per model parameter: what this rank reads */
  ckpt_tensor *save_tensors; /* the same, less what another rank writes: the copies of
                              * the replicated vectors on TP process rows > 0 */
  int n_tensors;
  ckpt_meta meta;       /* what the loaded checkpoint said (zeros when fresh) */
  int resumed;          /* 1 when a checkpoint was loaded */
  char ckpt_path[1100]; /* the checkpoint loaded, if any */
} session;

/* Extra arguments that are not config keys (e.g. "ckpt", "split"), taken out of argv. */
typedef struct session_extra {
  const char *name;
  char value[1024];
  int given;
} session_extra;

/* Take "name=value" arguments of the extras out of argv (value copied, given set); the
 * other arguments go to rest (argc entries; may be NULL). Returns their number. Not
 * collective. */
int session_take_extras(int argc, char **argv, session_extra *extras, int n_extras, char **rest);

/* argv: "CONFIG [key=value...]" (extras first removed). with_optim: create the
 * optimizer. ckpt_spec: NULL = the config's `resume`; "none" = fresh model; "auto" =
 * newest good checkpoint in cfg.out/ckpt if any (fresh otherwise); a path = that
 * checkpoint (must load). Makes the task (s->task) once for every caller.
 * Collective on MPI_COMM_WORLD. */
int session_open(session *s, int argc, char **argv, session_extra *extras, int n_extras,
                 int with_optim, const char *ckpt_spec);
/* Free everything session_open made (the grid's communicators, the dataset). Collective on
 * MPI_COMM_WORLD. */
void session_close(session *s);

/* Save a checkpoint of the current state into cfg.out/ckpt. Collective on the session's
 * world (s->g.world). */
int session_save(session *s, const ckpt_meta *meta);

/* Print a message on rank 0 only (stderr). Not collective. */
void session_say(const session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
