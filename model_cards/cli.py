"""The `card`, `export` and `push` subcommands of `pvm-qwen3vl` (registered by `pvm_qwen3vl.cli`). Exit status, as
for every `pvm-qwen3vl` command: 0 on success; 2 when the command refuses its input before doing anything (a bad
argument or folder, an existing OUT without --overwrite, no token, offline mode); 1 when the work itself failed (the
export did not load in the fresh process, the upload failed). The message says what was left."""

from __future__ import annotations

import argparse
import sys

EXIT_STATUS = "Exit status: 0 done; 2 input refused, nothing was written or uploaded (the message says how to fix it)"
CARD_FIELDS = ("eval_summary", "base_model", "license", "datasets", "extra_tags", "model_name", "repo_id")


def _card(args: argparse.Namespace) -> int:
    from pvm_qwen3vl.model_cards.card import write_model_card

    report = write_model_card(args.model, args.out, **{name: getattr(args, name) for name in CARD_FIELDS})
    print(f"model card written to {report.path} (tags: {', '.join(report.card.data.tags)})")
    print("".join(f"note: {note}\n" for note in report.notes), end="")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pvm_qwen3vl.model_cards.export import export_folder
    from pvm_qwen3vl.model_cards.verify import VerificationError

    options = {name: getattr(args, name) for name in (*CARD_FIELDS, "dtype", "processor", "overwrite")}
    size = int(args.max_shard_size) if args.max_shard_size.isdigit() else args.max_shard_size
    try:
        report = export_folder(args.model, args.out, max_shard_size=size, verify=not args.no_verify, **options)
    except VerificationError as error:
        print(f"pvm-qwen3vl export: error: {error}\nNothing was written to {args.out}.", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _push(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import LocalTokenNotFoundError, OfflineModeIsEnabled

    from pvm_qwen3vl.model_cards.push import HubPushError, push_folder

    options = {name: getattr(args, name) for name in ("private", "revision", "commit_message", "keep_remote_files")}
    try:
        result = push_folder(args.folder, args.repo_id, **options)
    except (OfflineModeIsEnabled, LocalTokenNotFoundError, HubPushError) as error:
        print(f"pvm-qwen3vl push: error: {error}", file=sys.stderr)
        return 1 if isinstance(error, HubPushError) else 2
    print(result.summary())
    return 0


def _add_card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="PVM checkpoint, Trainer output folder, or one of its checkpoint-N folders")
    parser.add_argument(
        "--eval-summary",
        action="append",
        metavar="JSON",
        help="summary.json of `eval bench`, a folder of them or a JSON with several; repeatable",
    )
    parser.add_argument(
        "--base-model",
        help="Hub id of the model this one fine-tunes, e.g. Qwen/Qwen3-VL-8B-Instruct; None: what MODEL records",
    )
    parser.add_argument("--license", help="None: the existing card's, else Qwen3-VL's apache-2.0")
    parser.add_argument(
        "--dataset", action="append", dest="datasets", metavar="ID", help="training dataset id; repeatable"
    )
    parser.add_argument(
        "--tag", action="append", dest="extra_tags", default=[], metavar="TAG", help="extra Hub tag; repeatable"
    )
    parser.add_argument("--model-name", help="card title and model-index name; None: the repo or folder name")
    parser.add_argument("--repo-id", help="Hub repo the card's quick start loads (push fills it in otherwise)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `card`, `export` and `push` to the `pvm-qwen3vl` command line."""

    def command(name: str, func, summary: str, description: str, failure: str | None = None):
        epilog = EXIT_STATUS + (f"; 1 {failure}" if failure else "") + "."
        parser = subparsers.add_parser(name, help=summary, description=description, epilog=epilog)
        parser.set_defaults(func=func)
        return parser

    card = command(
        "card", _card, "write the PVM model card (README.md) into a checkpoint or training output folder",
        "Write the PVM model card for MODEL, replacing TRL's generic card.",
    )  # fmt: skip
    _add_card_arguments(card)
    card.add_argument("--out", help="where to write; None: MODEL/README.md")

    export = command(
        "export", _export, "a PVM checkpoint or training output -> a clean, verified folder to upload",
        "Build an upload folder: sharded safetensors, config with auto_map, remote code, processor, generation config "
        "and the PVM model card; no optimizer/trainer files. It is loaded and run in a fresh offline process before "
        "it is moved to OUT.",
        "the export did not load or generate in the fresh process; OUT is untouched",
    )  # fmt: skip
    _add_card_arguments(export)
    export.add_argument("out", help="the folder to create (refused if it is not empty, unless --overwrite)")
    export.add_argument("--max-shard-size", default="5GB", help="largest weight shard, e.g. 500MB, 2GiB or bytes")
    dtypes = ["auto", "bfloat16", "float16", "float32"]
    export.add_argument("--dtype", choices=dtypes, default="auto", help="cast the weights; auto keeps their dtype")
    export.add_argument("--processor", help="take the processor from here (e.g. the base model) if MODEL lacks one")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT (after verification passed)")
    export.add_argument("--no-verify", action="store_true", help="skip the fresh-process load and generate check")

    push = command(
        "push", _push, "upload an export folder to the Hugging Face Hub",
        "Upload FOLDER to REPO_ID in a single commit (create_repo + upload_folder). The token comes from `hf auth "
        "login` or HF_TOKEN. Remote files absent from FOLDER are deleted in the same commit unless --keep-remote-files.",
        "the Hub refused or could not be reached; the message says what changed there",
    )  # fmt: skip
    push.add_argument("folder", help="a folder written by `pvm-qwen3vl export`")
    push.add_argument("repo_id", help="owner/name")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", metavar="BRANCH", help="branch to commit to, created if missing; None: main")
    push.add_argument("--commit-message", help="None: 'Upload PVM-Qwen3-VL checkpoint'")
    push.add_argument("--keep-remote-files", action="store_true", help="keep remote files that FOLDER does not have")
