"""Save cleaned CLIPs in open_clip's Hub layout and push them to the Hugging Face Hub.

A folder written by :func:`save_pretrained` holds:

* ``open_clip_config.json`` -- ``{"model_cfg": ..., "preprocess_cfg": ...}``, the same file open_clip's
  ``push_to_hf_hub`` writes;
* ``open_clip_model.safetensors`` -- the open_clip module's state dict (no pickle);
* ``README.md`` -- a model card (YAML front matter for the Hub, usage, a metrics table);
* ``clipclean.json`` -- clipclean's own sidecar: version, creation time, model name, metrics, provenance.

So plain ``open_clip.create_model_and_transforms("local-dir:/path")`` (or ``"hf-hub:org/repo"`` once pushed)
loads it, and so does :func:`clipclean.models.load_clip`. The folder is written atomically: everything goes
into a hidden temporary folder next to the target, which is then swapped into place, so a crash never leaves a
half-written checkpoint and never damages the previous one.

Example::

    >>> from clipclean.hub import push_to_hub, read_sidecar, save_pretrained
    >>> from clipclean.models import load_clip
    >>> model = load_clip("clipclean-tiny")
    >>> metrics = {"before": {"clean_accuracy": 0.91, "attack_success_rate": 0.99},
    ...            "after": {"clean_accuracy": 0.89, "attack_success_rate": 0.02}}
    >>> folder = save_pretrained(model, "out/cleaned", metrics=metrics, provenance={"method": "bibau"})
    >>> read_sidecar(folder)["metrics"]["after"]["attack_success_rate"]
    0.02
    >>> load_clip(str(folder))  # or open_clip.create_model_and_transforms(f"local-dir:{folder}")
    >>> push_to_hub(folder, "my-org/clip-cleaned")  # token from HF_TOKEN / `hf auth login`
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from clipclean.fileio import to_jsonable
from clipclean.models import CONFIG_FILENAME, PixelCLIP, unwrap

logger = logging.getLogger(__name__)

SIDECAR_FILENAME = "clipclean.json"
WEIGHTS_FILENAME = "open_clip_model.safetensors"
README_FILENAME = "README.md"
UPLOADED_FILENAMES = (CONFIG_FILENAME, WEIGHTS_FILENAME, README_FILENAME, SIDECAR_FILENAME)
TRANSFORMERS_UPLOADED_PATTERNS = (
    "config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
    "processor_config.json",
)
LAYOUTS = ("open_clip", "transformers")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
REPO_PLACEHOLDER = "<org>/<repo>"
CARD_TAGS = ("clip", "clipclean", "backdoor-defense")
CARD_LICENSE = "apache-2.0"
PIPELINE_TAG = "zero-shot-image-classification"
_MAX_INLINE_CHARS = 200  # longer provenance values (e.g. a trigger mask) stay in the sidecar only

_PERCENT_KEY = re.compile(r"accuracy|(?<!learning_)rate|(^|[^a-z])(acc|asr)([^a-z]|$)")


def _clipclean_version() -> str:
    try:
        return metadata.version("clipclean")
    except metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------------- model card


def _is_percentage(key: str, value: Any) -> bool:
    return isinstance(value, float) and _PERCENT_KEY.search(key.lower()) is not None and 0.0 <= value <= 1.0


def _format_value(key: str, value: Any, *, percentages: bool = True) -> str:
    """One table cell / bullet: percentages for accuracies and rates in [0, 1], 4 significant digits for floats."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if percentages and _is_percentage(key, value):
        return f"{100.0 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value)
        if len(text) <= _MAX_INLINE_CHARS:
            return f"`{text}`"
        return f"`{text[:_MAX_INLINE_CHARS]}…` (full value in {SIDECAR_FILENAME})"
    return _escape(str(value))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    """Render metrics as markdown.

    Top-level dict values are *columns* (e.g. ``before``/``after``) and their keys the rows; top-level scalars go in
    a two-column ``Metric | Value`` table. Deeper nesting is flattened to dotted keys.
    """
    metrics = to_jsonable(dict(metrics))
    columns = {str(key): _flatten(value) for key, value in metrics.items() if isinstance(value, Mapping)}
    scalars = {str(key): value for key, value in metrics.items() if not isinstance(value, Mapping)}
    tables = []
    if columns:
        rows: list[str] = []
        for column in columns.values():
            rows.extend(key for key in column if key not in rows)
        lines = [
            "| Metric | " + " | ".join(_escape(column) for column in columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        for row in rows:
            cells = [_format_value(row, column[row]) if row in column else "—" for column in columns.values()]
            lines.append(f"| {_escape(row)} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    if scalars:
        lines = ["| Metric | Value |", "|---|---:|"]
        lines.extend(f"| {_escape(key)} | {_format_value(key, value)} |" for key, value in scalars.items())
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def _open_clip_usage(model_name: str, repo: str) -> list[str]:
    return [
        (
            f"An [OpenCLIP](https://github.com/mlfoundations/open_clip) model (`{model_name}`) whose weights were "
            "processed with clipclean, a toolkit for finding and removing backdoors from CLIP models. The "
            f"checkpoint uses open_clip's Hub layout (`{CONFIG_FILENAME}` + `{WEIGHTS_FILENAME}`, no pickle), so "
            f"plain open_clip loads it; clipclean's own metadata (metrics, provenance) is in `{SIDECAR_FILENAME}`."
        ),
        "## Usage",
        "With open_clip:",
        "\n".join(
            [
                "```python",
                "import open_clip",
                "",
                f'model, _, preprocess = open_clip.create_model_and_transforms("hf-hub:{repo}")',
                f'tokenizer = open_clip.get_tokenizer("hf-hub:{repo}")',
                "```",
            ]
        ),
    ]


def _transformers_usage(model_name: str, repo: str) -> list[str]:
    return [
        (
            f"A [transformers](https://github.com/huggingface/transformers) `CLIPModel` (`{model_name}`) whose "
            "weights were processed with clipclean, a toolkit for finding and removing backdoors from CLIP models. "
            "The checkpoint is transformers' own layout (`config.json` + `model.safetensors`, tokenizer and "
            f"processor files; no pickle); clipclean's own metadata (metrics, provenance) is in `{SIDECAR_FILENAME}`."
        ),
        "## Usage",
        "With transformers:",
        "\n".join(
            [
                "```python",
                "from transformers import CLIPModel, CLIPProcessor",
                "",
                f'model = CLIPModel.from_pretrained("{repo}")',
                f'processor = CLIPProcessor.from_pretrained("{repo}")',
                "```",
            ]
        ),
    ]


def card_title(model_name: str) -> str:
    """What a model card calls the model: the repo of ``hf-hub:org/repo``, an open_clip name as it is, and for a
    local folder (``local-dir:PATH`` or a path) the name its own clipclean sidecar records (followed back through
    the folders it was made from), else the folder's name -- never a local path, which means nothing on the Hub.

    Example::

        >>> card_title("hf-hub:org/suspect-clip"), card_title("ViT-B-32")
        ('org/suspect-clip', 'ViT-B-32')
        >>> card_title("outputs/badnet/model")  # its clipclean.json: model_name "clipclean-tiny"
        'clipclean-tiny'
    """
    seen: set[str] = set()
    name = model_name
    while name not in seen:
        seen.add(name)
        if name.startswith("hf-hub:"):
            return name[len("hf-hub:") :]
        local = name.startswith("local-dir:")
        folder = Path(name[len("local-dir:") :] if local else name).expanduser()
        if not (local or folder.is_dir() or "/" in name or os.sep in name):
            return name  # an open_clip config name
        try:
            recorded = json.loads((folder / SIDECAR_FILENAME).read_text(encoding="utf-8")).get("model_name")
        except (OSError, ValueError, AttributeError):  # no sidecar, or not one clipclean can read
            recorded = None
        if not recorded:
            return folder.resolve().name or "CLIP"
        name = str(recorded)
    return Path(name).name or "CLIP"


def model_card(
    model_name: str,
    metrics: dict | None,
    provenance: dict | None,
    notes: str | None,
    *,
    repo_id: str | None = None,
    layout: str = "open_clip",
    summary: str | None = None,
    eval_dataset: str | None = None,
) -> str:
    """The ``README.md`` model card of a cleaned checkpoint, with Hub YAML front matter.

    Built with huggingface_hub's :class:`~huggingface_hub.ModelCard`: the front matter is a
    :class:`~huggingface_hub.ModelCardData` (library, pipeline tag, license, tags and, given ``eval_dataset``, the
    model's clean accuracy and ASR as ``model-index`` :class:`~huggingface_hub.EvalResult` entries).

    Args:
        model_name: what the checkpoint was loaded from (e.g. ``"ViT-B-32"`` or ``"hf-hub:org/poisoned"``); the
            title names it by :func:`card_title` (a repo or model name, never a local path).
        metrics: flat (``{"clean_accuracy": 0.9}``) or grouped (``{"before": {...}, "after": {...}}``) results,
            rendered as a markdown table; values between 0 and 1 whose key names an accuracy or rate
            (``accuracy``, ``rate``, ``acc``, ``asr``) are shown as percentages. ``None``: no table.
        provenance: how the checkpoint was made (method, configs, data, ...), listed as bullets; a ``None`` value
            (not measured, not known) is left out.
        notes: free markdown appended under "Notes".
        repo_id: the Hub repo for the usage snippets; default a ``<org>/<repo>`` placeholder that
            :func:`push_to_hub` fills in.
        layout: ``"open_clip"`` or ``"transformers"``: the checkpoint's format (library tag and usage snippets).
        summary: what happened to the model, after its name in the title (default: "cleaned with clipclean").
        eval_dataset: the evaluation set the metrics were measured on (e.g. ``"digits:test"``); given, the
            model's own clean accuracy and ASR (the ``after`` column of grouped metrics, else the flat ones) go into
            the card's ``model-index``. ``None``: no ``model-index``.

    Returns:
        The card as markdown text.

    Example::

        >>> card = model_card("ViT-B-32", {"after": {"attack_success_rate": 0.02}}, {"method": "bibau"}, None)
        >>> card.splitlines()[1]
        'library_name: open_clip'
        >>> "| attack_success_rate | 2.00% |" in card
        True
    """
    repo = repo_id or REPO_PLACEHOLDER
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    sections = [
        f"# {card_title(model_name)} — {summary or 'cleaned with clipclean'}",
        *(_transformers_usage(model_name, repo) if layout == "transformers" else _open_clip_usage(model_name, repo)),
        "With clipclean (`encode_image` takes un-normalised images in [0, 1] and normalises them itself):",
        "\n".join(
            [
                "```python",
                "import torch",
                "from clipclean.models import load_clip",
                "",
                f'model = load_clip("hf-hub:{repo}")  # or load_clip("local-dir:/path/to/this/folder")',
                "image_features = model.encode_image(torch.rand(1, 3, *model.image_size))",
                'text_features = model.encode_text(["a photo of a dog"])',
                "```",
            ]
        ),
    ]
    if metrics:
        sections += ["## Evaluation", _metrics_table(metrics)]
    if provenance:
        bullets = [
            f"- **{key}**: {_format_value(str(key), value, percentages=False)}"
            for key, value in to_jsonable(dict(provenance)).items()
            if value is not None
        ]
        sections += ["## Provenance", "\n".join(bullets)]
    if notes:
        sections += ["## Notes", notes.strip()]
    sections += [
        "## Limitations",
        (
            "Backdoor removal is measured against the triggers and data reported above. It does not prove that the "
            "model carries no other backdoor; evaluate it on your own data before relying on it."
        ),
    ]
    from huggingface_hub import ModelCard, ModelCardData

    eval_results = _eval_results(metrics, eval_dataset)
    card_data = ModelCardData(
        library_name=layout,
        pipeline_tag=PIPELINE_TAG,
        license=CARD_LICENSE,
        tags=list(CARD_TAGS),
        model_name=card_title(model_name) if eval_results else None,
        eval_results=eval_results,
    )
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    return str(card)


# Where a metric of :func:`model_card` goes in the Hub's model-index: key -> (metric type, display name).
EVAL_RESULT_METRICS = {
    "clean_accuracy": ("accuracy", "clean accuracy"),
    "attack_success_rate": ("attack_success_rate", "attack success rate (ASR)"),
}


def _eval_results(metrics: Mapping[str, Any] | None, eval_dataset: str | None) -> list | None:
    """The model's own clean accuracy and ASR on ``eval_dataset`` as :class:`~huggingface_hub.EvalResult` entries
    (the ``after`` column of grouped metrics, else the flat ones); ``None`` without a dataset or those metrics."""
    from huggingface_hub import EvalResult

    if not metrics or not eval_dataset:
        return None
    own = metrics.get("after") if isinstance(metrics.get("after"), Mapping) else metrics
    source = str(eval_dataset)
    kind, _, split = source.partition(":")
    if not split or "/" in kind or os.sep in kind:  # a local path means nothing on the Hub: its folder's name
        kind, split = Path(source).name or source, None
    results = [
        EvalResult(
            task_type=PIPELINE_TAG,
            dataset_type=kind,
            dataset_name=source if split else kind,
            dataset_split=split,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=float(own[key]),
        )
        for key, (metric_type, metric_name) in EVAL_RESULT_METRICS.items()
        if isinstance(own.get(key), (int, float)) and not isinstance(own.get(key), bool)
    ]
    return results or None


# -------------------------------------------------------------------------------------------------------- writers


def _preprocess_config(model: PixelCLIP) -> dict:
    """``preprocess_cfg`` exactly as ``open_clip.push_to_hf_hub.save_config_for_hf`` writes it."""
    visual = model.model.visual
    mean = visual.image_mean if getattr(visual, "image_mean", None) is not None else model.image_mean.flatten()
    std = visual.image_std if getattr(visual, "image_std", None) is not None else model.image_std.flatten()
    config = {"mean": [float(x) for x in mean], "std": [float(x) for x in std]}
    other = getattr(visual, "preprocess_cfg", None) or {}
    for key in ("interpolation", "resize_mode"):
        if key in other:
            config[key] = other[key]
    return config


def _write_config(model: PixelCLIP, directory: Path) -> None:
    config = {"model_cfg": to_jsonable(model.model_config), "preprocess_cfg": _preprocess_config(model)}
    (directory / CONFIG_FILENAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def safetensors_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` ready for :func:`safetensors.torch.save_file`: detached, on CPU, contiguous.

    safetensors refuses tensors that share memory; open_clip loads with ``strict=True`` so every key must stay.
    A tensor whose storage was already seen (tied weights) is therefore cloned instead of dropped.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[torch.device, int]] = set()
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach()
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        shared = storage in seen
        seen.add(storage)
        tensor = tensor.to("cpu").contiguous()
        tensors[key] = tensor.clone() if shared else tensor
    return tensors


def _write_weights(model: PixelCLIP, directory: Path) -> None:
    save_file(safetensors_state_dict(model.model), str(directory / WEIGHTS_FILENAME), metadata={"format": "pt"})


def _write_card(card: str, directory: Path) -> None:
    (directory / README_FILENAME).write_text(card, encoding="utf-8")


def _write_sidecar(sidecar: dict, directory: Path) -> None:
    (directory / SIDECAR_FILENAME).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------- atomic folder


CLASSIFIER_FILENAMES = ("clipclean_classifier.json",)  # next to model.safetensors (clipclean.classifiers)
CHECKPOINT_FILE_PATTERNS = (*UPLOADED_FILENAMES, *TRANSFORMERS_UPLOADED_PATTERNS, *CLASSIFIER_FILENAMES)
"""What a model folder written by clipclean holds (open_clip or transformers layout, or an image classifier)."""


def foreign_files(directory: str | Path) -> list[str]:
    """The entries of a model folder that clipclean does not write there (a user's notes, data, sub-folders), sorted:
    replacing the folder as a whole would delete them. ``[]`` for a missing folder."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(
        entry.name
        for entry in directory.iterdir()
        if entry.is_dir() or not any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in CHECKPOINT_FILE_PATTERNS)
    )


def check_replaceable(target: str | Path) -> None:
    """Whether :func:`save_pretrained` may replace ``target``: it does not exist, is empty, or is a checkpoint folder
    (``open_clip_config.json`` or ``clipclean.json``) holding nothing but what clipclean writes there.

    Raises:
        FileExistsError: a file is in the way, or the folder is not a checkpoint or holds other files (named).
    """
    target = Path(target)
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise FileExistsError(f"cannot save a checkpoint to {target}: it exists and is not a directory")
    if any(target.iterdir()) and not any((target / name).is_file() for name in (CONFIG_FILENAME, SIDECAR_FILENAME)):
        raise FileExistsError(
            f"refusing to replace {target}: it is a non-empty directory without {CONFIG_FILENAME} or "
            f"{SIDECAR_FILENAME}, so it does not look like a checkpoint"
        )
    foreign = foreign_files(target)
    if foreign:
        raise FileExistsError(
            f"refusing to replace {target}: it holds {foreign[:5]}, which clipclean did not write and replacing the "
            "folder would delete; move them out or save elsewhere"
        )


@contextmanager
def _atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a hidden staging folder next to ``target``; on success swap it into place, on error delete it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = uuid.uuid4().hex[:12]
    staging = target.parent / f".{target.name}.clipclean-tmp-{suffix}"
    staging.mkdir()
    try:
        yield staging
        if os.path.lexists(target):
            aside = target.parent / f".{target.name}.clipclean-old-{suffix}"
            os.rename(target, aside)
            try:
                os.replace(staging, target)
            except BaseException:
                os.rename(aside, target)
                raise
            if os.path.islink(aside):
                os.unlink(aside)
            else:
                shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_pretrained(
    model: PixelCLIP,
    directory: str | Path,
    *,
    metrics: dict | None = None,
    provenance: dict | None = None,
    card_notes: str | None = None,
    layout: str | None = None,
    card_summary: str | None = None,
    eval_dataset: str | None = None,
) -> Path:
    """Save ``model`` as an open_clip Hub-layout folder with a model card and a clipclean sidecar, atomically.

    A :class:`~clipclean.transformers_clip.TransformersCLIP` is saved in transformers' layout by default
    (``CLIPModel.from_pretrained`` loads it); ``layout="open_clip"`` converts it to open_clip's.

    Args:
        model: the :class:`~clipclean.models.PixelCLIP` to save (a DDP/accelerate wrapper is unwrapped).
        directory: the checkpoint folder. If it exists it is replaced as a whole (only when it is empty or looks
            like a checkpoint -- it holds ``open_clip_config.json`` or ``clipclean.json`` -- and holds nothing else
            than what clipclean writes there: :func:`check_replaceable`).
        metrics: results for the card's table and the sidecar, flat or grouped (``{"before": {...}, ...}``).
        provenance: how the checkpoint was made (method, configs, trigger, data); JSON-serialisable after
            converting tensors, numpy values, paths and dataclasses.
        card_notes: extra markdown for the model card.
        card_summary: what happened to the model, in the card's title after its name (default: "cleaned with
            clipclean").
        layout: ``"open_clip"`` or ``"transformers"`` (transformers models only); default: the model's own.
        eval_dataset: what the metrics were measured on, for the card's ``model-index`` (:func:`model_card`).

    Returns:
        The absolute path of the saved folder.

    Raises:
        FileExistsError: ``directory`` is a file, a non-empty folder that is not a checkpoint, or a checkpoint
            holding other files.
        TypeError: ``metrics``/``provenance`` hold something that cannot be written as JSON (nothing is written).

    Example::

        >>> from clipclean.models import load_clip
        >>> folder = save_pretrained(load_clip("clipclean-tiny"), "out/tiny", metrics={"clean_accuracy": 0.5})
        >>> sorted(p.name for p in folder.iterdir())
        ['README.md', 'clipclean.json', 'open_clip_config.json', 'open_clip_model.safetensors']
    """
    model = unwrap(model)
    native = "transformers" if hasattr(model, "save_transformers") else "open_clip"
    layout = layout or native
    if layout not in LAYOUTS or (layout == "transformers" and native != "transformers"):
        raise ValueError(f"cannot save a {type(model).__name__} in layout {layout!r} (choose from {LAYOUTS})")
    if layout == "open_clip" and native == "transformers":
        model = model.to_open_clip()
    target = Path(os.path.abspath(os.path.expanduser(directory)))
    check_replaceable(target)
    metrics_json = to_jsonable(metrics) if metrics is not None else None
    provenance_json = to_jsonable(provenance) if provenance is not None else None
    sidecar = {
        "clipclean_version": _clipclean_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_name": model.name,
        "metrics": metrics_json,
        "provenance": provenance_json,
    }
    json.dumps(sidecar)  # fail on non-serialisable values before touching the file system
    card = model_card(
        model.name or "CLIP",
        metrics_json,
        provenance_json,
        card_notes,
        layout=layout,
        summary=card_summary,
        eval_dataset=eval_dataset,
    )
    with _atomic_directory(target) as staging:
        if layout == "transformers":
            model.save_transformers(staging)
        else:
            _write_config(model, staging)
            _write_weights(model, staging)
        _write_card(card, staging)
        _write_sidecar(sidecar, staging)
    logger.info("Saved %s to %s", model.name or "CLIP", target)
    return target


def read_sidecar(directory: str | Path) -> dict:
    """Read the ``clipclean.json`` sidecar of a folder written by :func:`save_pretrained`.

    Example::

        >>> read_sidecar("out/cleaned")["provenance"]["method"]
        'bibau'
    """
    path = Path(directory) / SIDECAR_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no {SIDECAR_FILENAME} in {directory}: not a folder written by save_pretrained")
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def find_sidecar(name: str, cache_dir: str | None = None) -> dict | None:
    """The ``clipclean.json`` sidecar of a model given as :func:`~clipclean.models.load_clip` takes it (a local folder,
    ``local-dir:PATH`` or ``hf-hub:org/repo``, from the local Hub cache when ``HF_HUB_OFFLINE=1``); ``None`` when the
    model has none (not written by clipclean, an open_clip config name, or a Hub repo without the file).

    Example::

        >>> find_sidecar("out/cleaned")["provenance"]["complete"]["ra_asr"]
        0.045
    """
    if name.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

        try:
            path = hf_hub_download(name[len("hf-hub:") :], filename=SIDECAR_FILENAME, cache_dir=cache_dir)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return None
        return read_sidecar(Path(path).parent)
    folder = Path(name[len("local-dir:") :] if name.startswith("local-dir:") else name).expanduser()
    return read_sidecar(folder) if (folder / SIDECAR_FILENAME).is_file() else None


# ------------------------------------------------------------------------------------------------------------ Hub


def _is_transformers_folder(folder: Path) -> bool:
    """A transformers checkpoint: ``config.json`` and safetensors weights, no open_clip config."""
    return (
        not (folder / CONFIG_FILENAME).is_file()
        and (folder / "config.json").is_file()
        and any(folder.glob("model*.safetensors"))
    )


def _check_uploadable(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    pickles = sorted(
        str(path.relative_to(folder)) for path in folder.rglob("*") if path.suffix.lower() in PICKLE_SUFFIXES
    )
    if pickles:
        raise ValueError(
            f"refusing to push {folder}: it contains pickle weight files {pickles}, which can run arbitrary code "
            f"when loaded. Save with clipclean.hub.save_pretrained ({WEIGHTS_FILENAME}) and remove them."
        )
    if _is_transformers_folder(folder):
        return
    missing = [name for name in (CONFIG_FILENAME, WEIGHTS_FILENAME) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not an open_clip Hub-layout checkpoint: missing {missing} (write it with save_pretrained)"
        )


def _fill_repo_placeholder(folder: Path, repo_id: str) -> None:
    """Put the real repo id into the card's usage snippets (written with the ``<org>/<repo>`` placeholder)."""
    readme = folder / README_FILENAME
    if not readme.is_file():
        return
    text = readme.read_text(encoding="utf-8")
    if REPO_PLACEHOLDER not in text:
        return
    temporary = folder / f".{README_FILENAME}.clipclean-tmp-{uuid.uuid4().hex[:12]}"
    temporary.write_text(text.replace(REPO_PLACEHOLDER, repo_id), encoding="utf-8")
    os.replace(temporary, readme)


def push_to_hub(
    directory: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload CLIP checkpoint cleaned with clipclean",
    revision: str | None = None,
) -> str:
    """Upload a folder written by :func:`save_pretrained` to a Hugging Face Hub model repo.

    Only the safe files are uploaded (``open_clip_config.json``, ``open_clip_model.safetensors``, ``README.md``,
    ``clipclean.json``; for a transformers-layout folder also ``config.json``, ``model*.safetensors`` and the
    tokenizer/processor files); a folder holding pickle weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) is
    refused.
    The model card's ``<org>/<repo>`` placeholder is replaced by the repo id (in the local ``README.md`` too).

    Args:
        directory: the checkpoint folder.
        repo_id: ``"org/name"`` (or ``"name"`` for the token's user); created if missing.
        token: a Hub token; default: ``HF_TOKEN`` or the ``hf auth login`` token (resolved by huggingface_hub).
            It is never logged.
        private: create the repo as private (ignored if it exists).
        commit_message: the commit message.
        revision: branch to commit to (created if missing); default the repo's main branch.

    Returns:
        The URL of the commit.

    Raises:
        ValueError: the folder contains pickle weight files.
        FileNotFoundError: the folder or its config/safetensors weights are missing.

    Example::

        >>> push_to_hub("out/cleaned", "my-org/clip-vit-b-32-cleaned", private=True)
        'https://huggingface.co/my-org/clip-vit-b-32-cleaned/commit/...'
    """
    from huggingface_hub import HfApi

    folder = Path(directory)
    _check_uploadable(folder)
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = getattr(repo_url, "repo_id", None) or repo_id  # resolves an implicit owner
    _fill_repo_placeholder(folder, repo_id)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    logger.info("Uploading %s to the Hub repo %s (revision %s)", folder, repo_id, revision or "main")
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        revision=revision,
        allow_patterns=list(UPLOADED_FILENAMES)
        + (list(TRANSFORMERS_UPLOADED_PATTERNS) if _is_transformers_folder(folder) else []),
    )
    url = str(getattr(commit, "commit_url", None) or commit)
    logger.info("Uploaded %s: %s", repo_id, url)
    return url
