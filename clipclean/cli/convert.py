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
    parser.add_argument("output_dir", help="the open_clip folder to write (replaced if it is a checkpoint folder)")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache directory (hf-hub sources)")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    from clipclean.hub import save_pretrained
    from clipclean.legacy import convert_legacy_checkpoint
    from clipclean.models import load_clip
    from clipclean.transformers_clip import TransformersCLIP

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
