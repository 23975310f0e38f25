from kedro.pipeline import Pipeline, node, pipeline

from aavae.pipelines.evaluate.nodes import evaluate


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                evaluate,
                inputs=["features_train", "features_test", "baseline_features", "aavae_model", "params:evaluate"],
                outputs=["metrics", "evaluation_mlflow_metrics", "confusion_matrix"],
                name="evaluate",
            )
        ]
    )
