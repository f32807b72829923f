/* gradnorm.h: `mpiformer gradnorm`, the paper's Figure 3: the Frobenius norm of the
 * gradient of each layer's second feed-forward weight (fc2) at initialization. */
#ifndef MPIFORMER_GRADNORM_H
#define MPIFORMER_GRADNORM_H

/* `mpiformer gradnorm CONFIG [seeds=10] [batches=4] [key=value ...]`: for each seed a
 * freshly initialized model (dropout off) runs `batches` training batches; for each
 * batch the gradient of the mean loss is taken, and ||grad fc2.weight||_F of every
 * encoder and decoder layer is averaged over batches and seeds. Prints one JSON object
 * per layer and a summary to stdout, and appends them to OUT/gradnorm.jsonl.
 * Collective on MPI_COMM_WORLD (batches are spread over the ranks). */
int gradnorm_main(int argc, char **argv);

#endif
