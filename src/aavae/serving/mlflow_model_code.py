"""The file MLflow stores as the encoder model's code ("models from code").

MLflow runs this file when the model is loaded, instead of unpickling a Python object: a
registered model then executes only this project's code (carried with it), and its weights
load with ``torch.load(weights_only=True)``. See :mod:`aavae.serving.mlflow_model`.
"""

import mlflow

from aavae.serving.mlflow_model import EncoderModel

mlflow.models.set_model(EncoderModel())
