/* trace.c: the per-rank timeline (trace.h): events kept in one array, written once as a
 * Chrome trace event file ({"traceEvents": [...]}) at trace_close. No formatting or I/O
 * while recording. */
#include "trace.h"

#include <stdio.h>
#include <string.h>

typedef struct trace_event {
  const char *name;
  double us;
  int64_t arg;
  int id;
  char ph; /* 'B', 'E', 'b', 'e' */
} trace_event;

static struct {
  int on, rank;
  double t0;
  trace_event *ev;
  int64_t n, dropped;
  char path[1024];
} tr;

void trace_open(MPI_Comm comm) {
  const char *prefix = getenv("MPIFORMER_TRACE");
  if (!prefix || !*prefix || tr.on) return;
  MPI_CHECK(MPI_Comm_rank(comm, &tr.rank));
  double t0 = common_now();
  MPI_CHECK(MPI_Bcast(&t0, 1, MPI_DOUBLE, 0, comm));
  tr.t0 = t0;
  snprintf(tr.path, sizeof tr.path, "%s.rank%d.json", prefix, tr.rank);
  tr.ev = common_calloc(TRACE_MAX_EVENTS, sizeof *tr.ev);
  tr.n = tr.dropped = 0;
  tr.on = 1;
}

int trace_on(void) {
  return tr.on;
}

static void record(const char *name, char ph, int id, int64_t arg) {
  if (!tr.on) return;
  if (tr.n == TRACE_MAX_EVENTS) {
    tr.dropped++;
    return;
  }
  tr.ev[tr.n++] = (trace_event){name, (common_now() - tr.t0) * 1e6, arg, id, ph};
}

void trace_begin(const char *name) {
  record(name, 'B', 0, 0);
}
void trace_end(const char *name) {
  record(name, 'E', 0, 0);
}
void trace_async_begin(const char *name, int id, int64_t arg) {
  record(name, 'b', id, arg);
}
void trace_async_end(const char *name, int id) {
  record(name, 'e', id, 0);
}

void trace_close(void) {
  if (!tr.on) return;
  tr.on = 0;
  FILE *f = fopen(tr.path, "w");
  if (!f) {
    fprintf(stderr, "[rank %d] mpiformer: warning: cannot write the trace %s\n", tr.rank, tr.path);
  } else {
    fprintf(f, "{\"otherData\":{\"rank\":%d,\"dropped_events\":%lld},\"traceEvents\":[\n", tr.rank,
            (long long)tr.dropped);
    for (int64_t i = 0; i < tr.n; i++) {
      const trace_event *e = &tr.ev[i];
      fprintf(f, "%s{\"name\":\"%s\",\"ph\":\"%c\",\"ts\":%.1f,\"pid\":%d,\"tid\":%d",
              i ? ",\n" : "", e->name, e->ph, e->us, tr.rank, 0);
      if (e->ph == 'b' || e->ph == 'e')
        fprintf(f, ",\"cat\":\"%s\",\"id\":%d,\"args\":{\"bytes\":%lld}", e->name, e->id,
                (long long)e->arg);
      fputc('}', f);
    }
    fprintf(f, "\n]}\n");
    if (fclose(f) != 0)
      fprintf(stderr, "[rank %d] mpiformer: warning: cannot write the trace %s\n", tr.rank,
              tr.path);
  }
  free(tr.ev);
  tr.ev = NULL;
}
