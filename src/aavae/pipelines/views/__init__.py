from kedro.pipeline import Pipeline, node, pipeline

from aavae.pipelines.views.nodes import make_validation_views, preview_views, resolve_view_policy


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(resolve_view_policy, ["params:views", "images_train"], "view_policy", name="resolve_view_policy"),
            node(preview_views, ["images_train", "view_policy", "params:views", "artifact_root"], "view_preview",
                 name="preview_views"),
            node(make_validation_views, ["images_val", "images_unlabeled", "view_policy", "params:views", "params:pretrain",
                                         "artifact_root"], "val_views", name="make_validation_views"),
        ]
    )
