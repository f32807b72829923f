/* grid.c: builds every communicator of the DP x PP x TP layout once (see grid.h).
 *
 * The TP grid is also a BLACS grid, built *transposed* (pc x pr, BLACS (row, col) =
 * (pcol, prow)) because dmat hands ScaLAPACK the column-major transpose of its row-major
 * blocks (see dmat.c). On a 1x1 grid no BLACS context is made and dmat calls cblas
 * directly. Pipeline stages are consecutive blocks of tp ranks; pp_comm joins a
 * replica's stages with the same TP coordinates (pipe.c sends over it).
 */
#include "grid.h"

#include "debug.h"

#include <string.h>

/* The BLACS C interface has no header; these are the prototypes libscalapack exports. */
void Cblacs_pinfo(int *mypnum, int *nprocs);
void Cblacs_get(int ctxt, int what, int *val);
void Cblacs_gridinit(int *ctxt, const char *order, int nprow, int npcol);
void Cblacs_gridinfo(int ctxt, int *nprow, int *npcol, int *myrow, int *mycol);
void Cblacs_gridexit(int ctxt);
int Csys2blacs_handle(MPI_Comm comm);
void Cfree_blacs_system_handle(int handle);

int grid_create(grid *g, int tp, int pr, int pc, int pp, char *err, size_t err_len) {
  DEBUG_AGREE(MPI_COMM_WORLD, tp, pr, pc, pp);
  memset(g, 0, sizeof *g);
  g->blacs_ctx = -1; /* so that grid_destroy of a refused layout frees nothing twice */
  g->dp_comm = g->pp_comm = g->tp_comm = g->tp_row = g->tp_col = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &g->world));
  MPI_CHECK(MPI_Comm_size(g->world, &g->world_size));
  MPI_CHECK(MPI_Comm_rank(g->world, &g->world_rank));
  err[0] = '\0';
  if (tp < 1 || pp < 1) {
    snprintf(err, err_len, "tp=%d pp=%d: both must be at least 1", tp, pp);
  } else if (pr * pc != tp) {
    snprintf(err, err_len, "tp_grid=%dx%d does not multiply to tp=%d", pr, pc, tp);
  } else if (g->world_size % (tp * pp) != 0) {
    snprintf(err, err_len,
             "%d ranks cannot be split into tp=%d x pp=%d: the world size must be a multiple "
             "of tp*pp=%d",
             g->world_size, tp, pp, tp * pp);
  }
  if (err[0]) {
    MPI_Comm_free(&g->world); /* leaves MPI_COMM_NULL */
    return C_ERR;
  }
  g->tp = tp;
  g->pp = pp;
  g->pr = pr;
  g->pc = pc;
  g->dp = g->world_size / (tp * pp);
  int r = g->world_rank;
  g->tp_rank = r % tp;
  g->stage = (r / tp) % pp;
  g->dp_rank = r / (tp * pp);
  g->prow = g->tp_rank / pc;
  g->pcol = g->tp_rank % pc;
  /* color = the coordinates shared by the group, key = the coordinate that varies */
  MPI_CHECK(MPI_Comm_split(g->world, g->stage * tp + g->tp_rank, g->dp_rank, &g->dp_comm));
  MPI_CHECK(MPI_Comm_split(g->world, g->dp_rank * tp + g->tp_rank, g->stage, &g->pp_comm));
  MPI_CHECK(MPI_Comm_split(g->world, g->dp_rank * pp + g->stage, g->tp_rank, &g->tp_comm));
  MPI_CHECK(MPI_Comm_split(g->tp_comm, g->prow, g->pcol, &g->tp_row));
  MPI_CHECK(MPI_Comm_split(g->tp_comm, g->pcol, g->prow, &g->tp_col));
  g->blacs_ctx = -1;
  if (tp > 1) {
    /* tp_rank = prow * pc + pcol; "Col" order puts system rank i at BLACS (i % pc, i / pc)
     * of the pc x pr grid, i.e. at (pcol, prow): the transpose of our grid. */
    int sys = Csys2blacs_handle(g->tp_comm);
    int ctx = sys;
    Cblacs_gridinit(&ctx, "Col", pc, pr);
    /* gridinit made its own communicators from tp_comm; the system handle (a slot in
     * BLACS's table that names tp_comm) is not needed any more, and leaving it would keep
     * a stale entry once tp_comm is freed. */
    Cfree_blacs_system_handle(sys);
    int nr = -1, nc = -1, myr = -1, myc = -1;
    Cblacs_gridinfo(ctx, &nr, &nc, &myr, &myc);
    CHECK(ctx >= 0 && nr == pc && nc == pr && myr == g->pcol && myc == g->prow,
          "BLACS grid %dx%d at (%d,%d), want the transposed %dx%d at (pcol,prow) = (%d,%d)", nr, nc,
          myr, myc, pc, pr, g->pcol, g->prow);
    g->blacs_ctx = ctx;
  }
  return C_OK;
}

void grid_destroy(grid *g) {
  DEBUG_AGREE(g->world, g->dp, g->pp, g->tp, g->pr, g->pc, g->blacs_ctx >= 0);
  if (g->blacs_ctx >= 0) Cblacs_gridexit(g->blacs_ctx);
  g->blacs_ctx = -1;
  MPI_Comm *comms[] = {&g->tp_col, &g->tp_row, &g->tp_comm, &g->pp_comm, &g->dp_comm, &g->world};
  for (size_t i = 0; i < sizeof comms / sizeof comms[0]; i++)
    if (*comms[i] != MPI_COMM_NULL) MPI_Comm_free(comms[i]);
}

void grid_describe(const grid *g, char *buf, size_t len) {
  snprintf(buf, len, "dp=%d pp=%d tp=%d (%dx%d)", g->dp, g->pp, g->tp, g->pr, g->pc);
}
