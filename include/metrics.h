/* metrics.h: the run's JSON-lines log (metrics.jsonl), the progress line, timers.
 *
 * Only the rank that opened the log (rank 0) writes; every line is one JSON object,
 * flushed at once so that a killed job keeps what it logged. A write that fails (disk
 * full, quota, read-only) is agreed by every rank of the log's communicator in the same
 * call: rank 0 prints one line naming the file and the reason, every later write is a
 * no-op, and metrics_failed() tells the caller to stop.
 */
#ifndef MPIFORMER_METRICS_H
#define MPIFORMER_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include "common.h"

typedef struct metrics {
  FILE *f;       /* NULL on ranks that do not write */
  MPI_Comm comm; /* the ranks that call metrics_write together */
  int failed;    /* 1 on every rank once a write failed (agreed) */
  char path[1024];
} metrics;

/* Open (append) PATH on the ranks where `writer` is non-zero. Returns C_OK on every rank,
 * or C_ERR on every rank with err naming the file and the reason when a writer cannot
 * open it. Collective on comm. */
int metrics_open(metrics *m, const char *path, int writer, MPI_Comm comm, char *err,
                 size_t err_len);

/* Close the file (if this rank writes). Not collective. */
void metrics_close(metrics *m);

/* Write one JSON object built from "key", value pairs given as a printf format of the
 * members, e.g. metrics_write(m, "\"type\":\"train\",\"step\":%lld", step). Every rank of
 * m->comm calls it at the same point. Returns C_OK, or C_ERR on every rank when the write
 * failed now or before (rank 0 has printed "mpiformer: error: PATH: ...: REASON" once).
 * Collective on m->comm. */
int metrics_write(metrics *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* 1 once a write failed (the same on every rank of m->comm). Not collective. */
int metrics_failed(const metrics *m);

/* "1h02m" / "3m20s" / "45s" into buf. Not collective. */
void metrics_format_duration(double seconds, char *buf, size_t len);

/* A JSON-escaped copy of s into buf (without quotes). Not collective. */
void metrics_json_escape(const char *s, char *buf, size_t len);

#endif
