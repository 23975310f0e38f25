from kedro.pipeline import Pipeline, node, pipeline

from aavae.pipelines.features.nodes import extract_baseline_features, extract_model_features


def create_pipeline(**kwargs) -> Pipeline:
    inputs = ["aavae_model", "images_train", "images_test", "params:evaluate"]
    return pipeline(
        [
            node(extract_model_features, inputs, ["features_train", "features_test"], name="extract_features"),
            node(extract_baseline_features, inputs, "baseline_features", name="extract_baseline_features"),
        ]
    )
