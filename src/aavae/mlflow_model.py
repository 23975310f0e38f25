"""Compatibility: encoder models registered before 2026-12 carry a code file that imports
``aavae.mlflow_model.EncoderModel``; the model lives in :mod:`aavae.serving.mlflow_model`."""

from aavae.serving.mlflow_model import EncoderModel

__all__ = ["EncoderModel"]
