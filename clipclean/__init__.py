"""clipclean: find and remove backdoors from CLIP models.

Import what you need from the submodules; the most common entry points are re-exported here::

    from clipclean import load_clip, save_pretrained, load_trigger, evaluate_zeroshot
"""

from clipclean.models import ModelLoadError, PixelCLIP, load_clip, register_model_configs, unwrap
from clipclean.triggers import (
    AdditiveTrigger,
    IdentityTrigger,
    PatchBlendTrigger,
    Trigger,
    WarpTrigger,
    draw_trigger,
    load_trigger,
    save_trigger,
)

__version__ = "0.1.0"

register_model_configs()


def __getattr__(name: str):
    # Lazy re-exports of modules that are heavier or written later in the import graph.
    lazy = {
        "evaluate_zeroshot": ("clipclean.evaluation", "evaluate_zeroshot"),
        "zeroshot_classifier": ("clipclean.evaluation", "zeroshot_classifier"),
        "save_pretrained": ("clipclean.hub", "save_pretrained"),
        "push_to_hub": ("clipclean.hub", "push_to_hub"),
        "load_image_caption_dataset": ("clipclean.data", "load_image_caption_dataset"),
        "load_classification_dataset": ("clipclean.data", "load_classification_dataset"),
    }
    if name in lazy:
        import importlib

        module_name, attribute = lazy[name]
        return getattr(importlib.import_module(module_name), attribute)
    raise AttributeError(f"module 'clipclean' has no attribute {name!r}")


__all__ = [
    "AdditiveTrigger",
    "IdentityTrigger",
    "ModelLoadError",
    "PatchBlendTrigger",
    "PixelCLIP",
    "Trigger",
    "WarpTrigger",
    "draw_trigger",
    "evaluate_zeroshot",
    "load_classification_dataset",
    "load_clip",
    "load_image_caption_dataset",
    "load_trigger",
    "push_to_hub",
    "register_model_configs",
    "save_pretrained",
    "save_trigger",
    "unwrap",
    "zeroshot_classifier",
]
