/* grid.h: the DP x PP x TP process layout, its communicators and BLACS context.
 *
 * world = dp x pp x tp ranks, tp = pr x pc. World rank r has coordinates
 *   tp_rank = r % tp, stage = (r / tp) % pp, dp_rank = r / (tp * pp)
 * so the ranks of one TP grid are consecutive (they talk most), and inside it
 *   tp_rank = prow * pc + pcol (row-major).
 * grid is the only module that calls MPI_Comm_split. Every stage has the same TP grid
 * shape, so pipeline messages go between ranks with the same TP coordinates.
 */
#ifndef MPIFORMER_GRID_H
#define MPIFORMER_GRID_H

#include "common.h"

typedef struct grid {
  int world_size, world_rank;
  int dp, pp, tp; /* sizes */
  int pr, pc;     /* TP grid shape, pr * pc = tp */
  int dp_rank, stage, tp_rank;
  int prow, pcol;   /* this rank's coordinates in the TP grid (row-major order) */
  MPI_Comm world;   /* a dup of MPI_COMM_WORLD */
  MPI_Comm dp_comm; /* same stage, same TP coordinates: gradient sums */
  MPI_Comm pp_comm; /* same replica, same TP coordinates: activations */
  MPI_Comm tp_comm; /* one stage's TP grid */
  MPI_Comm tp_row;  /* same process row of the TP grid */
  MPI_Comm tp_col;  /* same process column */
  /* BLACS context of the TP grid, TRANSPOSED: a pc x pr BLACS grid on which this rank sits
   * at BLACS (row, col) = (pcol, prow), because dmat hands ScaLAPACK the column-major
   * transpose of its row-major blocks. -1 when tp == 1 (dmat then calls cblas directly). */
  int blacs_ctx;
} grid;

/* Build the layout for tp = pr x pc and pp stages over MPI_COMM_WORLD; dp is
 * world_size / (tp * pp). On an impossible or unsupported layout every rank returns
 * C_ERR after rank 0 printed why (`err` receives the message). Collective on
 * MPI_COMM_WORLD (DEBUG=1 builds check that every rank passed the same tp, pr, pc, pp). */
int grid_create(grid *g, int tp, int pr, int pc, int pp, char *err, size_t err_len);

/* Free the communicators and the BLACS context (grids may be created and destroyed
 * any number of times in one process). Collective on g->world (every rank of
 * MPI_COMM_WORLD); after a refused grid_create it frees nothing and is not collective. */
void grid_destroy(grid *g);

/* A one-line description such as "dp=2 pp=1 tp=1 (1x1)". Not collective. */
void grid_describe(const grid *g, char *buf, size_t len);

#endif
