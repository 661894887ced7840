"""`pvm-qwen3vl push`: upload an export folder to the Hugging Face Hub in one commit, with `huggingface_hub`.

The steps are `create_repo(exist_ok=True)`, `create_branch` for a `--revision` other than main, then one
`upload_folder` call. `upload_folder` makes a single commit: large files are first sent to the Hub's storage, where
they stay invisible, and the commit that makes every file appear is created last. If anything fails, the branch is
left as it was; the error says whether the repository or branch had been created by then.

By default the commit also deletes remote files that are not in the folder (stale shards, optimizer states from an
earlier `Trainer` push), so the branch mirrors the export; `keep_remote_files=True` keeps them. Before uploading,
the placeholder repository id of the card's quick start (written when `export` was not given `--repo-id`) is
replaced with the real one in the folder's README.md.

Refusals before anything is sent raise `ValueError` (not an export folder, a bad repository id) or huggingface_hub's
own `OfflineModeIsEnabled` and `LocalTokenNotFoundError`; a failure on the way raises `HubPushError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

from pvm_qwen3vl.model_cards.card import fill_repo_id
from pvm_qwen3vl.model_cards.export import check_export_folder

FIXES = {
    401: "the Hub rejected the token (401). Log in again with `hf auth login` or set a valid HF_TOKEN.",
    403: "the token may not write to {repo_id} (403). Use a token with write access to the {owner!r} namespace "
    "(fine-grained tokens need write permission on it).",
    404: "{repo_id} or the branch was not found (404): check the repository id and --revision.",
}


class HubPushError(RuntimeError):
    """The push failed on the way; the message says why, how to fix it and what, if anything, changed on the Hub."""


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


def _reason(error: Exception, repo_id: str, endpoint: str) -> str:
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        if status in FIXES:
            return FIXES[status].format(repo_id=repo_id, owner=repo_id.split("/")[0])
        return f"the Hub answered {status or 'an error'}: {error.server_message or str(error).splitlines()[0]}"
    if isinstance(error, OfflineModeIsEnabled):
        return f"{error}"
    return f"could not reach {endpoint} ({type(error).__name__}: {error}). Check the network, a proxy or HF_ENDPOINT."


def _state(stage: str, error: Exception, repo_id: str, branch: str, created: bool) -> str:
    """What the failed push left on the Hub."""
    if stage in ("looking up the repository", "creating the repository"):
        return "Nothing was uploaded."
    state = f"The repository {repo_id} {'was created by this push' if created else 'already existed'}"
    if stage == "creating the branch":
        return state + "; nothing was uploaded."
    state += f" and branch {branch!r} exists" if branch != "main" else ""
    if isinstance(error, HfHubHTTPError):  # the Hub refused: the final commit was not made
        return state + (
            ", but no commit was made: upload_folder commits all files at once, so the repository's files are "
            "unchanged. Retrying re-uses any large files already sent."
        )
    return state + (
        ". upload_folder commits all files at once, so the files on the Hub are either unchanged or all updated: "
        "unchanged, unless the connection dropped after the Hub received the final commit. Check "
        f"https://huggingface.co/{repo_id}/commits/{branch} and push again if needed (retrying re-uses the large "
        "files already sent)."
    )


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
    """
    folder = Path(folder)
    if problems := check_export_folder(folder):
        raise ValueError(
            f"{folder} is not a clean export folder ({'; '.join(problems)}). Build one with "
            f"`pvm-qwen3vl export {folder} {folder}-export` and push that. Nothing was uploaded."
        )
    validate_repo_id(repo_id)
    if repo_id.count("/") != 1:
        raise ValueError(
            f"{repo_id!r} has no owner: use owner/name, e.g. your-username/{repo_id}. Nothing was uploaded."
        )
    if constants.HF_HUB_OFFLINE:
        raise OfflineModeIsEnabled("Offline mode is on (HF_HUB_OFFLINE=1): unset it to push. Nothing was uploaded.")
    token = token or get_token()
    if not token:
        raise LocalTokenNotFoundError(
            "No Hugging Face token found. Run `hf auth login` (with a token that has write access) or set the "
            "HF_TOKEN environment variable, then push again. Nothing was uploaded."
        )
    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or "main"
    fill_repo_id(folder / "README.md", repo_id)

    stage, created = "looking up the repository", False
    try:
        existed = api.repo_exists(repo_id)
        stage = "creating the repository"
        api.create_repo(repo_id, private=private, exist_ok=True)
        created = not existed
        if branch != "main":
            stage = "creating the branch"
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        stage = "uploading (upload_folder)"
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=branch,
            commit_message=commit_message or "Upload PVM-Qwen3-VL checkpoint",
            delete_patterns=None if keep_remote_files else "*",
        )
    except Exception as error:  # whatever failed, say what state the repository was left in
        reason, state = _reason(error, repo_id, api.endpoint), _state(stage, error, repo_id, branch, created)
        raise HubPushError(f"Push to {repo_id} failed while {stage}: {reason} {state}") from error
    return PushResult(repo_id, branch, commit.commit_url, commit.oid, created)
