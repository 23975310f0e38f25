"""Project pipelines.

``pretrain`` = ingest + views + pretrain + register (the encoder as an MLflow model);
``prepare`` = ingest + views (what runs once) and ``train`` = pretrain + register (what every
rank runs when torchrun or SLURM starts one ``kedro run`` per process);
``evaluate`` = features + evaluate, reading what pretrain persisted, so it runs on its own;
``__default__`` = both. ``embed`` embeds any image folder with the trained (or a registered)
encoder; ``embed_query`` answers another neighbour query from the stored index.
"""

from kedro.pipeline import Pipeline

from aavae.pipelines import embed, evaluate, features, ingest, pretrain, register, views


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {
        "ingest": ingest.create_pipeline(),
        "views": views.create_pipeline(),
        "features": features.create_pipeline(),
    }
    pipelines["prepare"] = pipelines["ingest"] + pipelines["views"]
    pipelines["train"] = pretrain.create_pipeline() + register.create_pipeline()
    pipelines["pretrain"] = pipelines["prepare"] + pipelines["train"]
    pipelines["evaluate"] = pipelines["features"] + evaluate.create_pipeline()
    pipelines["__default__"] = pipelines["pretrain"] + pipelines["evaluate"]
    pipelines["embed"] = embed.create_embed_pipeline()
    pipelines["embed_query"] = embed.create_query_pipeline()
    return pipelines
