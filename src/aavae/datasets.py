"""Compatibility: catalogs written before 2026-12 name ``aavae.datasets.<Class>`` as a ``type:``.

The classes live in :mod:`aavae.kedro_ext.datasets`; this alias keeps those catalogs loading."""

from aavae.kedro_ext.datasets import ArraysDataset, ImageSetDataset, TorchBundleDataset

__all__ = ["ArraysDataset", "ImageSetDataset", "TorchBundleDataset"]
