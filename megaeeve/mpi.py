"""Whether this process is one of several MPI ranks, for the offline tools that split their input over ranks
(vocabulary counting, preprocessing).

One list of launcher variables serves every tool, so a launcher that one tool recognises no other tool takes for
a single process (each would then write the whole output). mpi4py is imported only when a launcher is seen: a
plain run needs no MPI library.
"""

from __future__ import annotations

import os
from typing import Any

# Set by the launchers in every rank: Open MPI's mpiexec/mpirun, MPICH / Intel MPI (Hydra: PMI_*, MPI_LOCALNRANKS),
# MVAPICH2, and SLURM's srun --mpi=pmi2 (PMI_SIZE, PMI_RANK) or --mpi=pmix (PMIX_RANK).
ENV_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE")


def launched_by_mpi() -> bool:
    """An MPI launcher started this process (possibly as its only rank)."""
    return any(v in os.environ for v in ENV_VARS)


def mpi_world() -> Any | None:
    """MPI.COMM_WORLD when an MPI launcher started more than one rank, else None (and no MPI import)."""
    if not launched_by_mpi():
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None
