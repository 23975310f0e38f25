"""The catalog of one rank when torchrun, SLURM or mpirun started several ``kedro run``s: every
rank runs the training pipeline, but only global rank 0 writes the project's artifacts (the
others would race it for the same files); they keep what a node saves in memory, for the next node.
"""

from __future__ import annotations

from typing import Any

from kedro.io import DataCatalog

from aavae.common.launch import launched_rank


class RankZeroCatalog(DataCatalog):
    """Kedro's DataCatalog, whose saves on ranks above 0 stay in memory."""

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
