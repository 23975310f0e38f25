from kedro.pipeline import Pipeline, node, pipeline

from aavae.pipelines.register.nodes import register_encoder


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(register_encoder, ["aavae_model", "images_test", "params:dataset", "params:registry"],
                 "registered_model", name="register_encoder"),
        ]
    )
