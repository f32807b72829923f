/* trace.h: a per-rank timeline of a run, in the Chrome trace event format (load the files
 * in https://ui.perfetto.dev or chrome://tracing, or draw them with scripts/plot_trace.py).
 *
 * Off unless the environment variable MPIFORMER_TRACE=PREFIX is set; then every rank
 * records its spans in memory and trace_close writes PREFIX.rank<R>.json. What is recorded:
 * each stage forward and backward (model_stage.c), the Adam update (optim.c), and for the
 * data-parallel gradient sum (gradsync.c) one span per bucket from its launch to the poll
 * that found it complete, and the wait at the end of the backward. Timestamps are
 * microseconds of CLOCK_MONOTONIC since the world's rank 0 called trace_open, so ranks on
 * one host (or hosts with synchronized clocks) line up. At most TRACE_MAX_EVENTS events
 * per rank are kept (later ones are dropped and counted in the file). Recording an event
 * costs a clock read and a store; with tracing off, a load and a branch.
 */
#ifndef MPIFORMER_TRACE_H
#define MPIFORMER_TRACE_H

#include "common.h"

#define TRACE_MAX_EVENTS (1 << 20)

/* Start recording if MPIFORMER_TRACE is set. Collective on comm (rank 0's clock is the
 * origin); call once, after MPI_Init. */
void trace_open(MPI_Comm comm);
/* 1 while recording. Not collective. */
int trace_on(void);
/* A span on this rank's timeline: begin and end nest like parentheses. name must be a
 * string literal (or live until trace_close). Not collective. */
void trace_begin(const char *name);
void trace_end(const char *name);
/* An asynchronous span (it may overlap the nested ones): one lane per name, told apart
 * by id; arg is a number shown with it (e.g. bytes). Not collective. */
void trace_async_begin(const char *name, int id, int64_t arg);
void trace_async_end(const char *name, int id);
/* Write PREFIX.rank<R>.json (nothing when not recording) and stop. Not collective. */
void trace_close(void);

#endif
