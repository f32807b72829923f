/* metrics.h: the run's JSON-lines log (metrics.jsonl), the progress line, timers.
 *
 * Only the rank that opened the log (rank 0) writes; every line is one JSON object,
 * flushed at once so that a killed job keeps what it logged.
 */
#ifndef MPIFORMER_METRICS_H
#define MPIFORMER_METRICS_H

#include <stdint.h>
#include <stdio.h>

typedef struct metrics {
  FILE *f; /* NULL on ranks that do not write */
} metrics;

/* Open (append) PATH when `writer` is non-zero. Returns 0, or -1 if it cannot. */
int metrics_open(metrics *m, const char *path, int writer);
void metrics_close(metrics *m);

/* Write one JSON object built from "key", value pairs given as a printf format of the
 * members, e.g. metrics_write(m, "\"type\":\"train\",\"step\":%lld", step). */
void metrics_write(metrics *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "1h02m" / "3m20s" / "45s" into buf. */
void metrics_format_duration(double seconds, char *buf, size_t len);

/* A JSON-escaped copy of s into buf (without quotes). */
void metrics_json_escape(const char *s, char *buf, size_t len);

#endif
