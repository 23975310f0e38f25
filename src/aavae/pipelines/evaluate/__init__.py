from kedro.pipeline import Pipeline, node, pipeline

from aavae.pipelines.evaluate.nodes import evaluate, plot_embedding, write_report


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                evaluate,
                inputs=["features_train", "features_test", "baseline_features", "evaluation_model",
                        "images_train", "images_test", "params:evaluate", "artifact_root"],
                outputs=["metrics", "evaluation_mlflow_metrics", "confusion_matrix", "confusion_matrix_png"],
                name="evaluate",
            ),
            node(plot_embedding, ["features_test", "evaluation_model", "params:evaluate", "artifact_root"],
                 ["embedding", "embedding_png"], name="plot_embedding"),
            node(
                write_report,
                # confusion_matrix_png comes from the node that writes confusion_matrix.png, so
                # reporting_images (the PNGs in 08_reporting) is never an empty folder.
                inputs=["metrics", "evaluation_model", "confusion_matrix_png", "embedding_png", "reporting_images",
                        "artifact_root"],
                outputs="report",
                name="write_report",
            ),
        ]
    )
