from aavae.pipelines.views.pipeline import create_pipeline

__all__ = ["create_pipeline"]
