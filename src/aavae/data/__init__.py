"""Dataset readers. Each returns image sets in one form (see imageset.py).

``read_dataset`` dispatches on ``dataset.name``; the readers themselves take plain
arguments so they can be used from a notebook or another project.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aavae.data.imageset import UNLABELED, ImageSet, load_imageset, save_imageset

__all__ = [
    "UNLABELED",
    "ImageSet",
    "IngestResult",
    "load_imageset",
    "read_dataset",
    "save_imageset",
]


@dataclass(frozen=True)
class IngestResult:
    """The three image sets the pipeline uses, plus where they came from."""

    name: str
    train: ImageSet
    test: ImageSet
    unlabeled: ImageSet
    source: str
    format: str
    sha256: str | None = None
    skipped: list[str] = field(default_factory=list)

    def card(self) -> dict[str, Any]:
        """The dataset card: provenance, counts per class and split, image size."""
        splits = {
            s.split: {"count": len(s), "counts_per_class": s.counts_per_class()}
            for s in (self.train, self.test, self.unlabeled)
            if len(s)
        }
        return {
            "name": self.name,
            "source": self.source,
            "format": self.format,
            "sha256": self.sha256,
            "image_shape": list(self.train.image_shape),
            "class_names": list(self.train.class_names),
            "splits": splits,
            "skipped_count": len(self.skipped),
            "skipped": self.skipped,
        }


def read_dataset(config: Any) -> IngestResult:
    """Read the dataset a validated ``DatasetConfig`` names."""
    if config.name == "digits":
        from aavae.data.digits import SOURCE, read_digits

        splits = read_digits(config.image_size or 16, config.test_fraction, config.seed)
        train = splits["train"]
        empty = ImageSet.empty("unlabeled", train.image_shape, train.class_names)
        return IngestResult("digits", train, splits["test"], empty, SOURCE, "sklearn")
    raise NotImplementedError(f"dataset.name={config.name!r} is not wired yet")
