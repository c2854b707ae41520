"""``clipclean push DIR REPO_ID``: upload a checkpoint folder written by clipclean to the Hugging Face Hub.

Uploads only the safe files: the model card (``README.md``, with the metrics table), the ``clipclean.json`` sidecar,
the config and the safetensors weights (plus tokenizer/processor files for a transformers folder). A folder holding
pickle weights (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) is refused. The token comes from ``HF_TOKEN`` or
``hf auth login`` and is never printed; there is deliberately no ``--token`` flag (it would end up in shell history).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from clipclean.cli.help import add_command

EXAMPLES = """examples:
  clipclean push outputs/cleaned/cleaned my-org/clip-vit-b-32-cleaned
  HF_TOKEN=... clipclean push outputs/badnet-rn50 my-org/badnet-rn50 --private --revision converted
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(
        subparsers,
        "push",
        "upload a clipclean checkpoint folder to the Hub (card, sidecar, safetensors only)",
        __doc__,
        EXAMPLES,
        run,
    )
    parser.add_argument("directory", help="a folder written by clipclean (save_pretrained, clean, convert, ...)")
    parser.add_argument("repo_id", help="org/name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing)")
    parser.add_argument("--message", default="Upload CLIP checkpoint with clipclean", help="commit message")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    from clipclean.hub import README_FILENAME, SIDECAR_FILENAME, push_to_hub

    folder = Path(args.directory)
    missing = [name for name in (README_FILENAME, SIDECAR_FILENAME) if not (folder / name).is_file()]
    if missing:
        raise SystemExit(
            f"{folder} has no {' / '.join(missing)}: push folders written by clipclean (save_pretrained, "
            "clipclean clean, clipclean convert), which carry the model card and the sidecar"
        )
    url = push_to_hub(folder, args.repo_id, private=args.private, revision=args.revision, commit_message=args.message)
    print(f"pushed {folder} to {args.repo_id}: {url}")
    return {"url": url, "repo_id": args.repo_id}
