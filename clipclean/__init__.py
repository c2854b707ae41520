"""clipclean: find and remove backdoors from CLIP models.

Import what you need from the submodules; the most common entry points are re-exported here::

    from clipclean import load_clip, save_pretrained, load_trigger, evaluate_zeroshot
"""

__version__ = "0.1.0"

# Every re-export is resolved on first use (PEP 562), so ``import clipclean`` -- and with it the command-line modules
# under ``clipclean.cli`` -- loads neither torch nor open_clip: ``--help`` answers at once. Importing
# ``clipclean.models`` (what loading a model does) registers clipclean's tiny open_clip configs.
_LAZY_EXPORTS = {
    "ModelLoadError": "clipclean.models",
    "PixelCLIP": "clipclean.models",
    "load_clip": "clipclean.models",
    "register_model_configs": "clipclean.models",
    "unwrap": "clipclean.models",
    "AdditiveTrigger": "clipclean.triggers",
    "IdentityTrigger": "clipclean.triggers",
    "PatchBlendTrigger": "clipclean.triggers",
    "Trigger": "clipclean.triggers",
    "WarpTrigger": "clipclean.triggers",
    "draw_trigger": "clipclean.triggers",
    "load_trigger": "clipclean.triggers",
    "save_trigger": "clipclean.triggers",
    "evaluate_zeroshot": "clipclean.evaluation",
    "zeroshot_classifier": "clipclean.evaluation",
    "save_pretrained": "clipclean.hub",
    "push_to_hub": "clipclean.hub",
    "load_image_caption_dataset": "clipclean.data",
    "load_classification_dataset": "clipclean.data",
}


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'clipclean' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_EXPORTS])


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
