"""AAVAE: augmentation-augmented variational autoencoders as a Kedro pipeline."""

__version__ = "0.1.0"
