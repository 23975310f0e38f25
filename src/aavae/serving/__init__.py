"""The trained encoder for other programs: images of any size in, features out.

* :mod:`.inference` -- the checks on an image batch and the fit to the model's size.
* :mod:`.embeddings` -- every image of a folder or archive embedded, and its neighbours.
* :mod:`.mlflow_model` -- the encoder as an MLflow model ("from code":
  :mod:`.mlflow_model_code`), registered once per training run.
* :mod:`.serve` -- ``python -m aavae.serving.serve``: MLflow's scoring app behind a request-size limit.
"""
