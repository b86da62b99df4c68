/* env.h - who this process is in a job: rank, world size, local rank and the rendezvous address,
 * from the launcher's environment variables.
 *
 * In this order (the first that is set wins):
 *   mpirun (OpenMPI)   OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
 *   torchrun style     RANK, WORLD_SIZE, LOCAL_RANK (`anvil launch` sets these too)
 *   Slurm's srun       SLURM_PROCID, SLURM_STEP_NUM_TASKS (else SLURM_NTASKS), SLURM_LOCALID
 * and the rendezvous: MASTER_ADDR / MASTER_PORT when set; under Slurm otherwise the first host of
 * SLURM_STEP_NODELIST (else SLURM_JOB_NODELIST, SLURM_NODELIST) and port
 * DIST_SLURM_PORT_BASE + SLURM_JOB_ID % DIST_SLURM_PORT_SPAN; under mpirun the rendezvous is MPI.
 * Nothing set: one process (world 1, launcher DIST_LAUNCH_NONE).
 */
#ifndef ANVIL_DIST_ENV_H
#define ANVIL_DIST_ENV_H

#include <stddef.h>

/* Slurm jobs without MASTER_PORT: a port from the job id, so that two jobs on a node differ. */
#define DIST_SLURM_PORT_BASE 20000
#define DIST_SLURM_PORT_SPAN 20000

typedef enum { DIST_LAUNCH_NONE = 0, DIST_LAUNCH_MPIRUN, DIST_LAUNCH_TORCHRUN, DIST_LAUNCH_SLURM } DistLauncher;

typedef struct {
    DistLauncher launcher;
    int rank, world, local_rank;
    char master_addr[256];
    int master_port; /* 0 = not given */
} DistEnv;

/* The launcher's name: "none", "mpirun", "torchrun", "slurm". */
const char *dist_launcher_name(DistLauncher l);
/* Fill e from the variables that getenv_fn returns (getenv, or a table in tests). -1 with
 * err_set() naming the variable on a value that is not a number or out of range. */
int dist_env_parse(DistEnv *e, const char *(*getenv_fn)(const char *name));
/* The first host of a Slurm host list ("gpu[03-05,9],cpu1" -> "gpu03") into out (n bytes). */
int dist_slurm_first_host(const char *list, char *out, size_t n);

#endif
