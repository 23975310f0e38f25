"""The catalog of one rank when torchrun, SLURM or mpirun started several ``kedro run``s.

Every rank runs the training pipeline (training needs all of them), but only global rank 0
may write the project's artifacts; the others would race it for the same files. On ranks
above 0 this catalog keeps what a node saves in memory (the next node of the same run still
gets it) and never writes a file. Rank 0, and every plain run, writes as usual.
"""

from __future__ import annotations

from typing import Any

from kedro.io import DataCatalog

from aavae.training.distributed import launched_rank


class RankZeroCatalog(DataCatalog):
    """Kedro's DataCatalog, whose saves on ranks above 0 stay in this process's memory."""

    def save(self, ds_name: str, data: Any) -> None:
        if launched_rank() == 0:
            super().save(ds_name, data)
            return
        self.__dict__.setdefault("_rank_outputs", {})[ds_name] = data

    def load(self, ds_name: str, version: str | None = None) -> Any:
        kept = self.__dict__.get("_rank_outputs", {})
        if ds_name in kept:
            return kept[ds_name]
        return super().load(ds_name, version)
