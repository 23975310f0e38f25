"""What a reader hands back: the splits it read and where they came from (for a dataset card)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aavae.data.imageset import ImageSet


@dataclass(frozen=True)
class ReadResult:
    """Splits read from one source, with the provenance a dataset card records.

    ``source`` is the resolved path that was read, ``format`` the dataset format
    (``cifar10-python``, ``stl10-binary``, ``imagefolder``), ``sha256`` the checksum of the
    archive file (``None`` when a folder was read) and ``skipped`` the entries left out
    because they could not be decoded (only with ``on_bad_image="skip"``).
    """

    splits: dict[str, ImageSet]
    source: str
    format: str
    sha256: str | None = None
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: provenance plus image shape and counts per class of each split."""
        return {
            "source": self.source,
            "format": self.format,
            "sha256": self.sha256,
            "skipped": list(self.skipped),
            "splits": {
                name: {
                    "count": len(imageset),
                    "image_shape": list(imageset.image_shape),
                    "counts_per_class": imageset.counts_per_class(),
                }
                for name, imageset in self.splits.items()
            },
        }
