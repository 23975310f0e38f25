"""Project hooks: validate every parameter before any node runs."""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl

from aavae.config import validate_all


class ParameterValidationHooks:
    """Fail within seconds on an unknown key or a wrong type, before ingestion starts."""

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        validate_all(context.params)
