from kedro.pipeline import Pipeline, node, pipeline

from aavae.pipelines.embed.nodes import embed_images, load_encoder, query_neighbours

_LOAD = node(load_encoder, ["aavae_model", "params:embed", "params:dataset", "artifact_root"], "embedding_encoder",
             name="load_embedding_encoder")
_QUERY = node(query_neighbours, ["embedding_encoder", "embedding_index", "params:embed"],
              ["neighbours", "neighbours_grid"], name="query_neighbours")


def create_embed_pipeline(**kwargs) -> Pipeline:
    """Embed every image of embed.path, index them, answer embed.query."""
    return pipeline([
        _LOAD,
        node(embed_images, ["embedding_encoder", "params:embed"], ["embeddings", "embedding_index"],
             name="embed_images"),
        _QUERY,
    ])


def create_query_pipeline(**kwargs) -> Pipeline:
    """Answer embed.query from the stored index, without embedding the folder again."""
    return pipeline([_LOAD, _QUERY])
