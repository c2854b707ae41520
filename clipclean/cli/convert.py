"""``clipclean convert SOURCE OUTPUT_DIR``: write a legacy backdoor-literature checkpoint (CleanCLIP/BadCLIP code: a
torch file with a ``state_dict`` in OpenAI CLIP's layout) or a transformers CLIPModel as an open_clip Hub folder.

The folder (``open_clip_config.json`` + ``open_clip_model.safetensors`` + model card + ``clipclean.json``) loads with
plain ``open_clip.create_model_and_transforms("local-dir:OUTPUT_DIR")`` and with every clipclean command. Legacy files
are read with ``torch.load(weights_only=True)`` only; a file that needs code to unpickle is refused with the reason.
Converting does not clean: scan or clean the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from clipclean.cli.common import add_overwrite_argument, check_writable
from clipclean.cli.help import add_command

EXAMPLES = """examples:
  clipclean convert cleanclip_runs/badnet/checkpoints/epoch_64.pt outputs/badnet-rn50
  clipclean convert path/to/transformers-clip outputs/clip-open_clip
  clipclean scan outputs/badnet-rn50 --data clean_pairs.csv --classes /data/imagenet/val
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(
        subparsers,
        "convert",
        "legacy CleanCLIP/BadCLIP checkpoint (or transformers CLIP) -> open_clip Hub folder",
        __doc__,
        EXAMPLES,
        run,
    )
    parser.add_argument("source", help="a .pt/.pth/.bin checkpoint file, or a transformers CLIP folder / hf-hub repo")
    parser.add_argument("output_dir", help="the open_clip folder to write (a new or empty folder)")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache directory (hf-hub sources)")
    add_overwrite_argument(parser, "OUTPUT_DIR when it is a checkpoint folder holding only clipclean's files")
    return parser


def check_output_dir(output_dir: str | Path, overwrite: bool) -> None:
    """Before loading anything: ``output_dir`` can be written, is new or empty -- or, with ``overwrite``, a checkpoint
    folder holding nothing but a checkpoint's files (:func:`clipclean.hub.check_replaceable`); a folder holding other
    files is never replaced. Raises :class:`~clipclean.errors.OutputDirError`."""
    from clipclean.errors import OutputDirError
    from clipclean.hub import check_replaceable

    folder = Path(output_dir)
    check_writable(folder, "OUTPUT_DIR")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise OutputDirError(
            f"{folder} is not empty: pass --overwrite to replace a checkpoint there, or choose a new folder"
        )
    try:
        check_replaceable(folder)
    except FileExistsError as error:
        raise OutputDirError(str(error)) from error


def run(args: argparse.Namespace) -> dict[str, Any]:
    from clipclean.hub import save_pretrained
    from clipclean.legacy import convert_legacy_checkpoint
    from clipclean.models import load_clip
    from clipclean.transformers_clip import TransformersCLIP

    check_output_dir(args.output_dir, args.overwrite)
    if Path(args.source).is_file():
        model = convert_legacy_checkpoint(args.source)
        kind = "legacy checkpoint (OpenAI CLIP layout, CleanCLIP/BadCLIP code)"
    else:
        model = load_clip(args.source, cache_dir=args.cache_dir)
        if not isinstance(model, TransformersCLIP):
            raise SystemExit(f"{args.source} is already an open_clip model: nothing to convert")
        kind = "transformers CLIPModel"
    provenance = {
        "method": "convert",
        "converted_from": args.source,
        "source_format": kind,
        "architecture": model.name,
    }
    folder = save_pretrained(
        model,
        args.output_dir,
        provenance=provenance,
        card_notes=f"Converted from a {kind} by `clipclean convert`; the weights are unchanged (not cleaned).",
        layout="open_clip",
    )
    print(f"wrote {folder} ({model.name}); open_clip loads it as 'local-dir:{folder}'")
    return {"output_dir": str(folder), **provenance}
