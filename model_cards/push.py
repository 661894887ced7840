"""`pvm-qwen3vl push`: an export folder -> the Hub, with `create_repo`, `create_branch` for a `--revision` other than
main, then one `upload_folder`: a single commit, made after the large files are sent, which also deletes the remote
files that the folder lacks unless `keep_remote_files`. The card's placeholder repository id is filled in first.
Refusals raise `ValueError` or huggingface_hub's `OfflineModeIsEnabled`/`LocalTokenNotFoundError` before anything is
sent; a failure on the way raises `HubPushError`, which says what it left on the Hub."""

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
    403: "the token may not write to {repo_id} (403). Use a token with write access to its namespace (fine-grained "
    "tokens need write permission on it).",
    404: "{repo_id} or the branch was not found (404): check the repository id and --revision.",
}
ONE_COMMIT = "upload_folder commits all files at once, so"


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


def _failure(stage: str, error: Exception, api: HfApi, repo_id: str, branch: str, created: bool) -> str:
    """Why the push failed, and what it left on the Hub."""
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        detail = f"the Hub answered {status or 'an error'}: {error.server_message or str(error).splitlines()[0]}"
        reason = FIXES[status].format(repo_id=repo_id) if status in FIXES else detail
    else:
        reason = f"could not reach {api.endpoint} ({type(error).__name__}: {error}). Check the network or HF_ENDPOINT."
    if stage in ("looking up the repository", "creating the repository"):
        return f"{reason} Nothing was uploaded."
    state = f"The repository {repo_id} {'was created by this push' if created else 'already existed'}"
    if stage == "creating the branch":
        return f"{reason} {state}; nothing was uploaded."
    state += f" and branch {branch!r} exists" if branch != "main" else ""
    if isinstance(error, HfHubHTTPError):  # the Hub refused: the final commit was not made
        return (
            f"{reason} {state}, but no commit was made: {ONE_COMMIT} the repository's files are unchanged. Retrying "
            "re-uses any large files already sent."
        )
    return (
        f"{reason} {state}. {ONE_COMMIT} the files on the Hub are either unchanged or all updated: unchanged, unless "
        f"the connection dropped after the Hub received the final commit. Check https://huggingface.co/{repo_id}/"
        f"commits/{branch} and push again if needed (retrying re-uses the large files already sent)."
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
    """Upload the export `folder` (checked again here) to the model repository `repo_id` (`owner/name`, created if
    missing, `private` then) in one commit on the branch `revision` (created from main if missing; default main).
    `token` defaults to that of `hf auth login` or HF_TOKEN, `endpoint` to HF_ENDPOINT or https://huggingface.co."""
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
        message = _failure(stage, error, api, repo_id, branch, created)
        raise HubPushError(f"Push to {repo_id} failed while {stage}: {message}") from error
    return PushResult(repo_id, branch, commit.commit_url, commit.oid, created)
