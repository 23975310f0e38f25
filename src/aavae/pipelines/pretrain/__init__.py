from kedro.pipeline import Pipeline, node, pipeline

from aavae.pipelines.pretrain.nodes import pretrain


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                pretrain,
                inputs=[
                    "images_train", "images_unlabeled", "val_views", "view_policy", "dataset_card",
                    "params:model", "params:pretrain", "artifact_root",
                ],
                outputs=["aavae_model", "reconstructions"],
                name="pretrain",
            )
        ]
    )
