/* main.c: the mpiformer command (placeholder until the subcommands land). */
#include "common.h"

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Finalize();
  return 0;
}
