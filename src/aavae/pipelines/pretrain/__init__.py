from kedro.pipeline import Pipeline, node, pipeline

from aavae.training import train


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(  # training.train owns the run; the node only names its catalog inputs and outputs
                train,
                inputs=[
                    "images_train", "images_unlabeled", "val_views", "view_policy", "dataset_card",
                    "params:model", "params:pretrain", "artifact_root",
                ],
                outputs=["aavae_model", "reconstructions"],
                name="pretrain",
            )
        ]
    )
