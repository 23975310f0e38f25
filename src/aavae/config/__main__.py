"""``python -m aavae.config > docs/parameters.md``: the parameter reference."""

from aavae.config.reference import parameter_reference

print(parameter_reference(), end="")
