"""The trained encoder for other programs: images of any size in, features out.

* :mod:`.contract` -- what a served encoder accepts: an image batch, a JSON request.
* :mod:`.inference` -- the fit to the model's size and the encoding.
* :mod:`.embeddings` -- every image of a folder or archive embedded, and its neighbours.
* :mod:`.mlflow_model` -- the encoder as an MLflow model ("from code":
  :mod:`.mlflow_model_code`), registered once per training run.
* :mod:`.serve` -- ``python -m aavae.serving.serve``: MLflow's scoring protocol, with bounded work.
"""
