/* metrics.c: JSON-lines metrics and small formatting helpers (see metrics.h). */
#include "metrics.h"

#include <stdarg.h>
#include <string.h>

int metrics_open(metrics *m, const char *path, int writer) {
  m->f = NULL;
  if (!writer) return 0;
  m->f = fopen(path, "a");
  return m->f ? 0 : -1;
}

void metrics_close(metrics *m) {
  if (m->f) fclose(m->f);
  m->f = NULL;
}

void metrics_write(metrics *m, const char *fmt, ...) {
  if (!m->f) return;
  va_list ap;
  va_start(ap, fmt);
  fputc('{', m->f);
  vfprintf(m->f, fmt, ap);
  fputs("}\n", m->f);
  va_end(ap);
  fflush(m->f);
}

void metrics_format_duration(double s, char *buf, size_t len) {
  if (s < 0 || s != s) s = 0;
  long t = (long)(s + 0.5);
  if (t >= 3600) snprintf(buf, len, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else if (t >= 60) snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
  else snprintf(buf, len, "%lds", t);
}

void metrics_json_escape(const char *s, char *buf, size_t len) {
  size_t o = 0;
  for (; *s && o + 7 < len; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') buf[o++] = '\\', buf[o++] = (char)c;
    else if (c == '\n') buf[o++] = '\\', buf[o++] = 'n';
    else if (c == '\t') buf[o++] = '\\', buf[o++] = 't';
    else if (c < 0x20) o += (size_t)snprintf(buf + o, len - o, "\\u%04x", c);
    else buf[o++] = (char)c;
  }
  buf[o] = '\0';
}
