/* metrics.c: JSON-lines metrics and small formatting helpers (see metrics.h).
 *
 * What it does: appends one flushed JSON object per metrics_write on the writer rank and
 * agrees a failed write on every rank (common_agree), so that a full disk stops the run
 * with one message instead of a log that silently ends. What it does not: build the JSON
 * members (the caller's format does) or decide what to log.
 */
#include "metrics.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

/* The directory of m->path into buf ("." when it has none). */
static void dir_of(const metrics *m, char *buf, size_t len) {
  const char *slash = strrchr(m->path, '/');
  if (!slash)
    snprintf(buf, len, ".");
  else
    snprintf(buf, len, "%.*s", slash == m->path ? 1 : (int)(slash - m->path), m->path);
}

int metrics_open(metrics *m, const char *path, int writer, MPI_Comm comm, char *err,
                 size_t err_len) {
  char msg[1200] = "";
  memset(m, 0, sizeof *m);
  m->comm = comm;
  snprintf(m->path, sizeof m->path, "%s", path);
  int bad = 0;
  if (writer) {
    errno = 0;
    m->f = fopen(path, "a");
    if (!m->f) {
      snprintf(msg, sizeof msg, "%s: cannot open for writing: %s", path, strerror(errno));
      bad = 1;
    }
  }
  if (common_agree(comm, bad, msg, sizeof msg)) {
    metrics_close(m);
    m->failed = 1;
    snprintf(err, err_len, "%s", msg);
    return C_ERR;
  }
  return C_OK;
}

void metrics_close(metrics *m) {
  if (m->f) fclose(m->f);
  m->f = NULL;
}

int metrics_write(metrics *m, const char *fmt, ...) {
  if (m->failed) return C_ERR;
  int bad = 0;
  char msg[1200] = "";
  if (m->f) {
    va_list ap;
    va_start(ap, fmt);
    errno = 0;
    bad = fputc('{', m->f) == EOF;
    bad = vfprintf(m->f, fmt, ap) < 0 || bad;
    bad = fputs("}\n", m->f) == EOF || bad;
    bad = fflush(m->f) != 0 || bad;
    va_end(ap);
    if (bad) {
      char dir[1024];
      dir_of(m, dir, sizeof dir);
      snprintf(msg, sizeof msg, "%s: write failed: %s", m->path,
               common_strerror(common_write_errno(dir, errno)));
    }
  }
  if (!common_agree(m->comm, bad, msg, sizeof msg)) return C_OK;
  m->failed = 1;
  int rank;
  MPI_CHECK(MPI_Comm_rank(m->comm, &rank));
  if (rank == 0) {
    fprintf(stderr, "mpiformer: error: %s\n", msg);
    fflush(stderr);
  }
  return C_ERR;
}

int metrics_failed(const metrics *m) {
  return m->failed;
}

void metrics_format_duration(double s, char *buf, size_t len) {
  if (s < 0 || s != s) s = 0;
  long t = (long)(s + 0.5);
  if (t >= 3600)
    snprintf(buf, len, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60)
    snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
  else
    snprintf(buf, len, "%lds", t);
}

void metrics_json_escape(const char *s, char *buf, size_t len) {
  size_t o = 0;
  for (; *s && o + 7 < len; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      buf[o++] = '\\', buf[o++] = (char)c;
    else if (c == '\n')
      buf[o++] = '\\', buf[o++] = 'n';
    else if (c == '\t')
      buf[o++] = '\\', buf[o++] = 't';
    else if (c < 0x20)
      o += (size_t)snprintf(buf + o, len - o, "\\u%04x", c);
    else
      buf[o++] = (char)c;
  }
  buf[o] = '\0';
}
