/* common.c: error reporting and tiny helpers used everywhere (see common.h).
 *
 * What it does: the abort path (CHECK), the agreement on a failure that one rank saw
 * (common_agree: lowest failing rank's message to all), `mkdir -p`, and the reason of a
 * failed write, found from the file system when the library that failed gave no errno.
 * What it does not: it knows nothing of HDF5 (see h5quiet.h) or of any file format.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

int common_rank(void) {
  int init = 0, fin = 0, rank = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

void common_die(const char *file, int line, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "[rank %d] %s:%d: %s\n", common_rank(), file, line, msg);
  fflush(stderr);
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) MPI_Abort(MPI_COMM_WORLD, 1);
  exit(1);
}

int common_any(MPI_Comm comm, int failed) {
  int local = failed ? 1 : 0, global = 0;
  MPI_CHECK(MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_MAX, comm));
  return global;
}

int common_agree(MPI_Comm comm, int failed, char *msg, size_t msg_len) {
  int rank, size, first;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  MPI_CHECK(MPI_Comm_size(comm, &size));
  int mine = failed ? rank : size;
  MPI_CHECK(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm));
  if (first == size) return 0;
  if (msg && msg_len > 0) {
    if (rank == first) msg[msg_len - 1] = '\0';
    MPI_CHECK(MPI_Bcast(msg, common_int((int64_t)msg_len), MPI_CHAR, first, comm));
    msg[msg_len - 1] = '\0';
  }
  return 1;
}

int common_mkdir_p(const char *dir, char *msg, size_t msg_len) {
  char buf[4096];
  if (!dir || !dir[0] || snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) {
    snprintf(msg, msg_len, "%s: not a valid directory name (empty or too long)", dir ? dir : "");
    return C_ERR;
  }
  for (char *p = buf + 1;; p++) {
    if (*p != '/' && *p != '\0') continue;
    char c = *p;
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
      snprintf(msg, msg_len, "%s: cannot create directory %s: %s", dir, buf, strerror(errno));
      return C_ERR;
    }
    *p = c;
    if (c == '\0') break;
  }
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    snprintf(msg, msg_len, "%s: not a directory", dir);
    return C_ERR;
  }
  return C_OK;
}

int common_write_errno(const char *dir, int errno_hint) {
  switch (errno_hint) {
  case ENOSPC:
  case EDQUOT:
  case EIO:
  case EROFS:
  case EFBIG:
  case EACCES:
  case EPERM:
    return errno_hint;
  default:
    break;
  }
  struct statvfs vs;
  if (statvfs(dir, &vs) == 0) {
    if (vs.f_flag & ST_RDONLY) return EROFS;
    if (vs.f_blocks > 0 && vs.f_bavail == 0) return ENOSPC;
  }
  /* a quota, or too few blocks for the write that failed: try one of 64 KiB */
  char probe[4200];
  if (snprintf(probe, sizeof probe, "%s/.mpiformer_probe.%d.%ld", dir, common_rank(),
               (long)getpid()) >= (int)sizeof probe)
    return 0;
  int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return errno;
  static const char zeros[65536];
  int e = 0;
  errno = 0;
  if (write(fd, zeros, sizeof zeros) != (ssize_t)sizeof zeros)
    e = errno ? errno : ENOSPC; /* a short write: the space ran out */
  else if (fsync(fd) != 0)
    e = errno;
  if (close(fd) != 0 && !e) e = errno;
  unlink(probe);
  return e;
}

const char *common_strerror(int e) {
  return e ? strerror(e) : "unknown I/O error";
}

void *common_malloc(size_t bytes) {
  void *p = malloc(bytes ? bytes : 1);
  CHECK(p, "out of memory allocating %zu bytes", bytes);
  return p;
}

void *common_calloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  CHECK(p, "out of memory allocating %zu x %zu bytes", n, size);
  return p;
}

double common_now(void) {
  return MPI_Wtime();
}
