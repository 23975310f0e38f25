from kedro.pipeline import Pipeline, node, pipeline

from aavae.pipelines.ingest.nodes import ingest


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                ingest,
                inputs="params:dataset",
                outputs=["images_train", "images_test", "images_unlabeled", "images_val", "dataset_card"],
                name="ingest",
            )
        ]
    )
