"""`pvm-qwen3vl push`: upload an export folder to the Hugging Face Hub with `huggingface_hub`.

The steps are `create_repo(exist_ok=True)`, `create_branch` for a `--revision` other than main, then one
`upload_folder` call. `upload_folder` makes a single commit: large files are first sent to the Hub's storage, where
they stay invisible, and the commit that makes every file appear is created last. If anything fails, the branch is
left as it was; the messages say whether the repository or branch had already been created by then.

By default the commit also deletes remote files that are not in the folder (stale shards, optimizer states from an
earlier `Trainer` push), so the branch mirrors the export; `keep_remote_files=True` keeps them. Before uploading,
the placeholder repository id of the card's quick start (written when `export` was not given `--repo-id`) is
replaced with the real one in the folder's README.md.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import HFValidationError, validate_repo_id

from model_cards.card import fill_repo_id
from model_cards.export import check_export_folder

try:  # huggingface_hub 2.x speaks HTTP through httpx2, 1.x through httpx
    import httpx2 as _http
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    import httpx as _http

logger = logging.getLogger(__name__)

TRUTHY = {"1", "on", "yes", "true"}
STAGES = {
    "check": "looking up the repository",
    "create_repo": "creating the repository",
    "create_branch": "creating the branch",
    "upload_folder": "uploading (upload_folder)",
}


class HubPushError(RuntimeError):
    """The push did not happen; the message says why, how to fix it and what, if anything, changed on the Hub."""


@dataclass(frozen=True)
class PushResult:
    """Where the commit went: pin `commit_oid` as `revision=` to load exactly this upload."""

    repo_id: str
    revision: str
    commit_url: str
    commit_oid: str
    repo_created: bool

    def summary(self) -> str:
        return (
            f"pushed to https://huggingface.co/{self.repo_id} ({self.revision}), commit {self.commit_oid}\n"
            f"{self.commit_url}\n"
            f'pin it: from_pretrained("{self.repo_id}", revision="{self.commit_oid}", trust_remote_code=True)'
        )


def _offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUTHY


def _explain(error: Exception, repo_id: str, endpoint: str) -> str:
    if isinstance(error, OfflineModeIsEnabled):
        return "offline mode is on (HF_HUB_OFFLINE=1); unset it to push."
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        namespace = repo_id.split("/")[0]
        if status == 401:
            return "the Hub rejected the token (401). Log in again with `hf auth login` or set a valid HF_TOKEN."
        if status == 403:
            return (
                f"the token may not write to {repo_id} (403). Use a token with write access to the {namespace!r} "
                "namespace (fine-grained tokens need write permission on it)."
            )
        if status == 404:
            return f"{repo_id} or the branch was not found (404): check the repository id and --revision."
        server = getattr(error, "server_message", None) or str(error).splitlines()[0]
        return f"the Hub answered {status}: {server}" if status else f"the Hub returned an error: {server}"
    if isinstance(error, _http.TransportError | OSError):
        return (
            f"could not reach {endpoint} ({type(error).__name__}: {error}). Check the network, a proxy or HF_ENDPOINT."
        )
    if isinstance(error, ValueError) and "metadata" in str(error):
        return f"the Hub rejected the model card: {error}"
    return f"{type(error).__name__}: {error}"


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    keep_remote_files: bool = False,
) -> PushResult:
    """Upload the export `folder` to the model repository `repo_id` in one commit.

    Args:
        folder: a folder written by `pvm-qwen3vl export` (checked again here; trainer clutter is refused).
        repo_id: `owner/name` on the Hub; created if missing.
        private: create the repository private (no effect on an existing one).
        revision: the branch to commit to; created from main if missing. Defaults to main.
        commit_message: defaults to "Upload PVM-Qwen3-VL checkpoint".
        token: defaults to the token of `hf auth login` or HF_TOKEN (`huggingface_hub.get_token()`).
        endpoint: the Hub's URL; defaults to HF_ENDPOINT or https://huggingface.co.
        keep_remote_files: keep remote files the folder does not have, instead of deleting them in the commit.

    Raises `HubPushError` with what went wrong and what, if anything, was changed on the Hub.
    """
    folder = Path(folder)
    problems = check_export_folder(folder)
    if problems:
        raise HubPushError(
            f"{folder} is not a clean export folder ({'; '.join(problems)}). Build one with "
            f"`pvm-qwen3vl export {folder} {folder}-export` and push that. Nothing was uploaded."
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubPushError(f"{repo_id!r} is not a valid repository id ({error}). Use owner/name.") from error
    if repo_id.count("/") != 1:
        raise HubPushError(f"{repo_id!r} has no owner: use owner/name, e.g. your-username/{repo_id}.")
    if _offline():
        raise HubPushError("Offline mode is on (HF_HUB_OFFLINE=1): unset it to push. Nothing was uploaded.")
    token = token or get_token()
    if not token:
        raise HubPushError(
            "No Hugging Face token found. Run `hf auth login` (with a token that has write access) or set the "
            "HF_TOKEN environment variable, then push again. Nothing was uploaded."
        )

    api = HfApi(endpoint=endpoint, token=token)
    endpoint = api.endpoint
    branch = revision or "main"
    if fill_repo_id(folder / "README.md", repo_id):
        logger.info("Filled the repository id %s into %s", repo_id, folder / "README.md")

    stage, created = "check", False
    try:
        existed = api.repo_exists(repo_id, repo_type="model")
        stage = "create_repo"
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        created = not existed
        if branch != "main":
            stage = "create_branch"
            api.create_branch(repo_id, branch=branch, repo_type="model", exist_ok=True)
        stage = "upload_folder"
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=branch,
            commit_message=commit_message or "Upload PVM-Qwen3-VL checkpoint",
            delete_patterns=None if keep_remote_files else "*",
        )
    except Exception as error:  # whatever failed, say what state the repository was left in
        reason = _explain(error, repo_id, endpoint)
        if stage in ("check", "create_repo"):
            state = "Nothing was uploaded."
        else:
            state = f"The repository {repo_id} {'was created by this push' if created else 'already existed'}"
            state += f" and branch {branch!r} exists" if stage == "upload_folder" and branch != "main" else ""
            if stage != "upload_folder":
                state += "; nothing was uploaded."
            elif isinstance(error, HfHubHTTPError) or not isinstance(error, _http.TransportError | OSError):
                state += (
                    ", but no commit was made: upload_folder commits all files at once, so the repository's files "
                    "are unchanged. Retrying re-uses any large files already sent."
                )
            else:
                state += (
                    ". upload_folder commits all files at once, so the files on the Hub are either unchanged or all "
                    "updated: unchanged, unless the connection dropped after the Hub received the final commit. "
                    f"Check https://huggingface.co/{repo_id}/commits/{branch} and push again if needed (retrying "
                    "re-uses the large files already sent)."
                )
        raise HubPushError(f"Push to {repo_id} failed while {STAGES[stage]}: {reason} {state}") from error
    return PushResult(
        repo_id=repo_id,
        revision=branch,
        commit_url=commit.commit_url,
        commit_oid=commit.oid,
        repo_created=created,
    )
