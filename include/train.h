/* train.h: the training loop of `mpiformer train`. */
#ifndef MPIFORMER_TRAIN_H
#define MPIFORMER_TRAIN_H

/* Exit status of a run that saved a checkpoint because it was asked to stop (SIGUSR1 or
 * SIGTERM): the Slurm script turns it into a requeue. */
#define TRAIN_EXIT_REQUEUE 3

/* `mpiformer train CONFIG [key=value ...]`: returns the process exit status (0 done,
 * 1 error, TRAIN_EXIT_REQUEUE when stopped by a signal after saving). Collective on
 * MPI_COMM_WORLD. */
int train_main(int argc, char **argv);

#endif
