"""The file MLflow stores as the encoder model's code ("models from code"): MLflow runs it when
the model is loaded, instead of unpickling a Python object, so a registered model executes only
this project's code (carried with it). See :mod:`aavae.serving.mlflow_model`."""

import mlflow

from aavae.serving.mlflow_model import EncoderModel

mlflow.models.set_model(EncoderModel())
