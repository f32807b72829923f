/* runctl.c: run control of `mpiformer train` (runctl.h).
 *
 * Stop requests. A Slurm warning (SIGUSR1) or a preemption (SIGTERM) can reach a rank at
 * any moment: while the launcher is still starting it, in MPI_Init, while a checkpoint
 * loads or saves. runctl_init is the first line of main, so from then on the signal only
 * sets a flag; the training loop's step-boundary all-reduce turns any rank's flag into one
 * decision (save, exit 3). A signal that reaches mpirun before its ranks exist is dropped
 * by mpirun (Open MPI 4.1 forwards SIGUSR1 only to running ranks), and one that reaches a
 * rank between its exec and runctl_init kills it; so slurm/train.sbatch does not rely on
 * signals alone: its trap writes OUT/.stop, which rank 0 checks at every step boundary,
 * and forwards the signal only once rank 0 has written the launch's id into OUT/.lock,
 * which it does after every rank has passed MPI_Init (and so runctl_init).
 *
 * One writer per run folder. Rank 0 takes an fcntl (POSIX) lock on OUT/.lock before the
 * run writes anything. fcntl, not flock: flock locks are local to one machine on many NFS
 * setups (and were not passed to the server before Linux 2.6.12), whereas fcntl locks go
 * through the NFS lock manager (NLM, or NFSv4's own locking), so a trainer on another node
 * sees them; Lustre and GPFS support them too. The kernel (or the server) drops the lock
 * when the holder dies, however it dies, so a crash leaves no stale lock behind. The one
 * catch of fcntl locks, that closing any descriptor of the file releases them, is why
 * nothing else opens .lock. The file's text names the holder (host, pid) for the refusal.
 *
 * Dying with the launcher. `kill -9 mpirun` leaves its ranks running: they would go on
 * writing metrics and checkpoints while a relaunch starts into the same folder. A rank
 * started by a launcher asks for PR_SET_PDEATHSIG = SIGKILL, so it dies the moment its
 * parent (mpirun, or orted or slurmstepd on other nodes) does; a launcher that died before
 * that call left the rank reparented (to init: getppid() == 1), which is checked right
 * after it; any other reparenting before the call (to a subreaper) leaves a rank whose
 * MPI_Init cannot reach the launcher's PMIx server and fails. A process started without a
 * launcher (a singleton run from a shell) is left alone: its parent shell may exit.
 */
#include "runctl.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

static volatile sig_atomic_t got_signal = 0;
static char stop_reason[1200] = "";
static int lock_fd = -1; /* kept open until exit: closing it would drop the lock */

static void on_signal(int sig) {
  if (!got_signal) got_signal = sig;
}

static int under_launcher(void) {
  return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK");
}

static void catch_stop_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  /* a launcher that blocks them across fork and exec keeps an early one pending: take it */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGTERM);
  sigprocmask(SIG_UNBLOCK, &set, NULL);
}

/* Loading the program's libraries (Open MPI, HDF5, ScaLAPACK, OpenBLAS) and running their
 * constructors takes tens of ms before main (`mpiformer -h` runs 80 ms here): long enough
 * for a forwarded signal to kill a starting rank. Functions in .preinit_array run before
 * any library's constructor, as soon as the dynamic loader has mapped and relocated the
 * libraries (a few ms after exec on an idle machine, tens of ms on a loaded one); glibc
 * passes them argc and argv. Only sigaction and sigprocmask are called: libc is not
 * initialised yet. */
static void runctl_preinit(int argc, char **argv, char **envp) {
  (void)envp;
  if (argc >= 2 && argv[1] && !strcmp(argv[1], "train")) catch_stop_signals();
}
typedef void (*runctl_preinit_t)(int, char **, char **);
__attribute__((section(".preinit_array"), used)) static const runctl_preinit_t runctl_preinit_fn =
    runctl_preinit;

void runctl_init(int stop_signals) {
  if (stop_signals) catch_stop_signals(); /* again: programs without .preinit_array */
  if (!under_launcher()) return;
  pid_t parent = getppid();
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
    fprintf(stderr, "mpiformer: warning: prctl(PR_SET_PDEATHSIG): %s\n", strerror(errno));
  if (parent == 1 || getppid() != parent) { /* reparented: the launcher died already */
    fprintf(stderr, "mpiformer: error: the MPI launcher that started this rank is gone\n");
    _exit(1);
  }
}

int runctl_signal(void) {
  return got_signal;
}

int runctl_stop_requested(const char *out) {
  int sig = got_signal;
  if (sig) {
    snprintf(stop_reason, sizeof stop_reason, "a signal (%s)",
             sig == SIGUSR1   ? "SIGUSR1"
             : sig == SIGTERM ? "SIGTERM"
                              : "?");
    return 1;
  }
  if (!out) return 0;
  char path[1100];
  snprintf(path, sizeof path, "%s/%s", out, RUNCTL_STOP_FILE);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[200] = "";
  if (!fgets(line, sizeof line, f)) line[0] = 0;
  fclose(f);
  line[strcspn(line, "\r\n")] = 0;
  unlink(path); /* honoured once: a relaunch into this folder must not stop again */
  /* a long path is cut, not an error: the reason is only printed */
  if (snprintf(stop_reason, sizeof stop_reason, "%s%s%s%s", path, line[0] ? " (" : "", line,
               line[0] ? ")" : "") >= (int)sizeof stop_reason)
    stop_reason[sizeof stop_reason - 1] = '\0';
  return 1;
}

const char *runctl_stop_reason(void) {
  return stop_reason[0] ? stop_reason : "a signal to another rank";
}

/* Rank 0's half of runctl_lock: 1 on success (or a file system without locks), 0 after
 * printing why not. */
static int take_lock(const char *out) {
  char path[1100];
  snprintf(path, sizeof path, "%s/%s", out, RUNCTL_LOCK_FILE);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    fprintf(stderr, "mpiformer: error: cannot write in the run folder %s: %s\n", out,
            strerror(errno));
    return 0;
  }
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET; /* l_start = l_len = 0: the whole file */
  if (fcntl(fd, F_SETLK, &fl) != 0) {
    int e = errno;
    if (e == EACCES || e == EAGAIN) {
      char holder[256] = "";
      ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
      holder[n > 0 ? n : 0] = 0;
      holder[strcspn(holder, "\r\n")] = 0;
      if (!holder[0]) { /* the holder has not written its line yet: ask the kernel */
        struct flock q = fl;
        if (fcntl(fd, F_GETLK, &q) == 0 && q.l_type != F_UNLCK)
          snprintf(holder, sizeof holder, "pid=%ld", (long)q.l_pid);
      }
      fprintf(stderr,
              "mpiformer: error: run folder %s is in use by another trainer (%s holds %s); "
              "stop it first, or train into another out=\n",
              out, holder[0] ? holder : "unknown", path);
      close(fd);
      return 0;
    }
    /* ENOLCK, EINVAL, EOPNOTSUPP: a file system without POSIX locks (NFS without lockd) */
    fprintf(stderr,
            "mpiformer: warning: cannot lock %s (%s): nothing keeps a second trainer out of "
            "this run folder\n",
            path, strerror(e));
  }
  char host[256] = "?", text[512];
  gethostname(host, sizeof host);
  host[sizeof host - 1] = 0;
  const char *launch = getenv("MPIFORMER_LAUNCH_ID");
  int len = snprintf(text, sizeof text, "host=%s pid=%ld launch=%s\n", host, (long)getpid(),
                     launch && launch[0] ? launch : "-");
  if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)len, 0) != len) {
    fprintf(stderr, "mpiformer: error: cannot write %s: %s\n", path, strerror(errno));
    close(fd);
    return 0;
  }
  lock_fd = fd;
  return 1;
}

int runctl_lock(const char *out, MPI_Comm comm) {
  int rank;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  int bad = rank == 0 && !take_lock(out);
  return common_any(comm, bad) ? C_ERR : C_OK;
}
