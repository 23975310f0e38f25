from aavae.pipelines.embed.pipeline import create_embed_pipeline, create_query_pipeline

__all__ = ["create_embed_pipeline", "create_query_pipeline"]
