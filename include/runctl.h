/* runctl.h: run control of `mpiformer train`: stop requests (SIGUSR1, SIGTERM, the file
 * OUT/.stop), the run folder's one-writer lock (OUT/.lock) and dying with the launcher.
 * See src/runctl.c for why each is done the way it is. */
#ifndef MPIFORMER_RUNCTL_H
#define MPIFORMER_RUNCTL_H

#include <mpi.h>
#include <stddef.h>

/* The run folder's files, relative to out=. */
#define RUNCTL_STOP_FILE ".stop"
#define RUNCTL_LOCK_FILE ".lock"

/* The very first call of main, before MPI_Init (and before anything that may take time).
 * With stop_signals (`mpiformer train`), installs handlers for SIGUSR1 and SIGTERM that
 * only note the signal, so that a signal at any later moment is a stop request and never
 * kills the process (other commands keep the default: a signal ends them). When an MPI
 * launcher started this process (mpirun, srun), asks the kernel to SIGKILL it when the
 * launcher dies, and exits at once if the launcher is already gone. Not collective. */
void runctl_init(int stop_signals);

/* The number of the first SIGUSR1 or SIGTERM received since runctl_init, 0 if none.
 * Async-signal-safe to read. Not collective. */
int runctl_signal(void);

/* 1 if this process was asked to stop: a signal (runctl_signal) or, when out is not NULL,
 * the file OUT/.stop (which it then removes: a request is honoured once). Rank 0 passes
 * out, the others NULL; the caller's step-boundary all-reduce spreads the answer. Not
 * collective. */
int runctl_stop_requested(const char *out);

/* What asked this process to stop, for the log ("a signal (SIGUSR1)", "runs/x/.stop
 * (...)"); "a signal to another rank" when runctl_stop_requested never returned 1 here.
 * Not collective. */
const char *runctl_stop_reason(void);

/* Take the run folder's lock, OUT/.lock, before anything is written there: rank 0 takes an
 * fcntl write lock held until the process exits and writes "host=H pid=P launch=L" into
 * the file; every rank learns the outcome. A folder locked by a live trainer is refused
 * (rank 0 prints one line naming the holder's host and pid); a file system without locks
 * only warns. Returns C_OK, or C_ERR on every rank. Collective on comm. */
int runctl_lock(const char *out, MPI_Comm comm);

#endif
