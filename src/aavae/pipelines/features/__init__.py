from kedro.pipeline import Pipeline, node, pipeline

from aavae.pipelines.features.nodes import (
    extract_baseline_features,
    extract_model_features,
    resolve_model,
)


def create_pipeline(**kwargs) -> Pipeline:
    inputs = ["evaluation_model", "images_train", "images_test", "params:evaluate"]
    return pipeline(
        [
            node(resolve_model, ["aavae_model", "images_train", "images_test", "dataset_card", "params:dataset",
                                 "params:evaluate", "params:model", "params:views", "artifact_root"],
                 "evaluation_model", name="resolve_model"),
            node(extract_model_features, inputs, ["features_train", "features_test"], name="extract_features"),
            node(extract_baseline_features, inputs, "baseline_features", name="extract_baseline_features"),
        ]
    )
