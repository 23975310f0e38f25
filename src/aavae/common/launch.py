"""Which process of a launch this is, read from what the launcher set (torchrun, SLURM,
mpirun): plain environment variables, so the Kedro settings and hooks read them without
importing torch or Lightning (a refused run answers in seconds)."""

from __future__ import annotations

import os
from collections.abc import Sequence

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")
WORLD_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _first_int(names: Sequence[str], default: int) -> int:
    for name in names:
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return default


def launched_rank() -> int:
    """This process's global rank when torchrun, SLURM or mpirun started it, else 0."""
    return _first_int(RANK_VARIABLES, 0)


def launched_world_size() -> int:
    """How many processes torchrun, SLURM or mpirun started (1 when run plainly)."""
    return _first_int(WORLD_VARIABLES, 1)


def local_world_size() -> int:
    """Processes on this node: torchrun's LOCAL_WORLD_SIZE, or SLURM's tasks over its nodes."""
    if os.environ.get("LOCAL_WORLD_SIZE", "").isdigit():
        return int(os.environ["LOCAL_WORLD_SIZE"])
    nodes = _first_int(("SLURM_NNODES", "SLURM_JOB_NUM_NODES"), 0)
    if nodes:
        return max(1, launched_world_size() // nodes)
    return launched_world_size()
