"""The trained encoder for other programs: images of any size in, features out (docs/serving.md)."""
