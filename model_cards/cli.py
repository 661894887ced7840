"""The `export`, `push` and `card` subcommands of `pvm-qwen3vl` (registered by `pvm_qwen3vl.cli`)."""

from __future__ import annotations

import argparse
import sys


def _shard_size(text: str) -> int:
    """`5GB`, `500MB`, `2GiB` or a byte count -> bytes (decimal units are powers of 1000, `iB` units of 1024)."""
    import re

    match = re.fullmatch(r"\s*(\d+)\s*(?:([KMGT])(i)?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(
            f"--max-shard-size takes a size such as 5GB, 500MB or a byte count, got {text!r}"
        )
    number, unit, binary = match.groups()
    power = "KMGT".index(unit.upper()) + 1 if unit else 0
    return int(number) * (1024 if binary else 1000) ** power


def _add_card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eval-summary",
        action="append",
        metavar="JSON",
        help="summary.json of `eval bench` (or a folder of them, or a JSON with several); repeatable",
    )
    parser.add_argument("--base-model", help="Hub id of the model this one fine-tunes, e.g. Qwen/Qwen3-VL-8B-Instruct")
    parser.add_argument("--license", help="default: the base model's license (Qwen3-VL: apache-2.0)")
    parser.add_argument(
        "--dataset", action="append", dest="datasets", metavar="ID", help="training dataset id; repeatable"
    )
    parser.add_argument(
        "--tag", action="append", dest="tags", default=[], metavar="TAG", help="extra Hub tag; repeatable"
    )
    parser.add_argument("--model-name", help="card title and model-index name (default: the repo or folder name)")
    parser.add_argument("--repo-id", help="Hub repo the card's quick start loads (push fills it in otherwise)")


def _export(args: argparse.Namespace) -> int:
    from model_cards.export import export_folder
    from model_cards.verify import VerificationError

    try:
        report = export_folder(
            args.model,
            args.out,
            eval_summary=args.eval_summary,
            max_shard_size=args.max_shard_size,
            verify=not args.no_verify,
            base_model=args.base_model,
            license=args.license,
            datasets=args.datasets,
            model_name=args.model_name,
            repo_id=args.repo_id,
            extra_tags=args.tags,
            processor=args.processor,
            dtype=args.dtype,
            overwrite=args.overwrite,
        )
    except VerificationError as error:
        print(f"pvm-qwen3vl export: error: {error}\nNothing was written to {args.out}.", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _push(args: argparse.Namespace) -> int:
    from model_cards.push import HubPushError, push_folder

    try:
        result = push_folder(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            keep_remote_files=args.keep_remote_files,
        )
    except HubPushError as error:
        print(f"pvm-qwen3vl push: error: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


def _card(args: argparse.Namespace) -> int:
    from model_cards.card import write_model_card

    report = write_model_card(
        args.model,
        args.out,
        eval_summary=args.eval_summary,
        base_model=args.base_model,
        license=args.license,
        datasets=args.datasets,
        model_name=args.model_name,
        repo_id=args.repo_id,
        extra_tags=args.tags,
    )
    print(f"model card written to {report.path} (tags: {', '.join(report.tags)})")
    for note in report.notes:
        print(f"note: {note}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `export`, `push` and `card` to the `pvm-qwen3vl` command line."""
    export = subparsers.add_parser(
        "export",
        help="a PVM checkpoint or training output -> a clean, verified folder to upload",
        description="Build an upload folder: sharded safetensors, config with auto_map, remote code, processor, "
        "generation config and the PVM model card; no optimizer/trainer files. It is loaded and run in a fresh "
        "offline process before success is reported.",
    )
    export.add_argument("model", help="PVM checkpoint, Trainer output folder, or one of its checkpoint-N folders")
    export.add_argument("out", help="the folder to create")
    export.add_argument(
        "--max-shard-size", type=_shard_size, default=5 * 10**9, help="largest weight shard (default 5GB)"
    )
    export.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float16", "float32"],
        default="auto",
        help="cast the weights (default: keep the saved dtype)",
    )
    export.add_argument("--processor", help="take the processor from here (e.g. the base model) if MODEL lacks one")
    export.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    export.add_argument("--no-verify", action="store_true", help="skip the fresh-process load and generate check")
    _add_card_arguments(export)
    export.set_defaults(func=_export)

    push = subparsers.add_parser(
        "push",
        help="upload an export folder to the Hugging Face Hub",
        description="Upload FOLDER to REPO_ID in a single commit (create_repo + upload_folder). The token comes "
        "from `hf auth login` or HF_TOKEN. Remote files absent from FOLDER are deleted in the same commit unless "
        "--keep-remote-files.",
    )
    push.add_argument("folder", help="a folder written by `pvm-qwen3vl export`")
    push.add_argument("repo_id", help="owner/name")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", metavar="BRANCH", help="branch to commit to (created if missing; default main)")
    push.add_argument("--commit-message", help="default: 'Upload PVM-Qwen3-VL checkpoint'")
    push.add_argument("--keep-remote-files", action="store_true", help="keep remote files that FOLDER does not have")
    push.set_defaults(func=_push)

    card = subparsers.add_parser(
        "card",
        help="write the PVM model card (README.md) into a checkpoint or training output folder",
        description="Write the PVM model card for MODEL, replacing TRL's generic card.",
    )
    card.add_argument("model", help="PVM checkpoint, Trainer output folder, or one of its checkpoint-N folders")
    card.add_argument("--out", help="where to write (default: MODEL/README.md)")
    _add_card_arguments(card)
    card.set_defaults(func=_card)
