"""`push`: the calls it makes, and its failures without a token, offline, or with the Hub unreachable.

Nothing here talks to the real Hub. `test_push_to_a_local_fake_hub` runs the real `huggingface_hub` client against
a small HTTP server on 127.0.0.1 that implements the endpoints one push uses (repo lookup, create, branch, YAML
validation, preupload, tree listing, commit). It proves that `push_folder` drives the client to send every file of
the export, byte for byte, in one commit on the requested branch, with the token and message given, and that
remote files absent from the export are deleted in that commit. It does not prove that the real Hub accepts the
upload: authentication and permissions, the Hub's metadata validation rules, and LFS/Xet transfer of large files
(the fake server answers that every file is a small "regular" upload) are not exercised.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import httpx2  # huggingface_hub's HTTP client
import pytest
from conftest import load_pvm
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled
from transformers import AutoProcessor

from pvm_qwen3vl.cli import main as cli_main
from pvm_qwen3vl.model_cards import push as push_module
from pvm_qwen3vl.model_cards.export import export_folder
from pvm_qwen3vl.model_cards.push import HubPushError, push_folder

REPO_ID = "pvm-user/pvm-tiny"
TOKEN = "hf_fake"


@pytest.fixture(scope="module")
def export_dir(tiny_base, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("push") / "checkpoint"
    load_pvm(tiny_base, gates=0.25).save_pretrained(checkpoint)
    AutoProcessor.from_pretrained(tiny_base).save_pretrained(checkpoint)
    out = checkpoint.parent / "pvm-tiny"
    export_folder(checkpoint, out, verify=False, base_model="Qwen/Qwen3-VL-2B-Instruct")
    return out


@pytest.fixture
def online(monkeypatch):
    """Turn off the offline mode that conftest sets, for code paths that would go online."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


@pytest.fixture
def recorded_api(monkeypatch):
    """HfApi methods replaced by recorders: a list of (method, args, kwargs)."""
    calls = []

    def recorder(name, result=None):
        def method(self, *args, **kwargs):
            calls.append((name, args, kwargs))
            return result

        return method

    commit = type("Commit", (), {"commit_url": f"https://huggingface.co/{REPO_ID}/commit/abc123", "oid": "abc123"})()
    monkeypatch.setattr(HfApi, "repo_exists", recorder("repo_exists", False))
    monkeypatch.setattr(HfApi, "create_repo", recorder("create_repo"))
    monkeypatch.setattr(HfApi, "create_branch", recorder("create_branch"))
    monkeypatch.setattr(HfApi, "upload_folder", recorder("upload_folder", commit))
    return calls


def test_push_builds_the_upload_folder_call(export_dir, tmp_path, online, recorded_api):
    folder = tmp_path / "pvm-tiny"
    import shutil

    shutil.copytree(export_dir, folder)
    result = push_folder(
        folder, REPO_ID, private=True, revision="pvm-v1", commit_message="tiny PVM", token="hf_test_token"
    )
    names = [name for name, _, _ in recorded_api]
    assert names == ["repo_exists", "create_repo", "create_branch", "upload_folder"]
    _, args, kwargs = recorded_api[1]
    assert args == (REPO_ID,) and kwargs == {"private": True, "exist_ok": True}
    _, args, kwargs = recorded_api[2]
    assert args == (REPO_ID,) and kwargs == {"branch": "pvm-v1", "exist_ok": True}
    _, args, kwargs = recorded_api[3]
    assert args == ()
    assert kwargs == {
        "repo_id": REPO_ID,
        "folder_path": str(folder),
        "revision": "pvm-v1",
        "commit_message": "tiny PVM",
        "delete_patterns": "*",
    }
    assert result.commit_oid == "abc123" and result.repo_created and result.revision == "pvm-v1"
    assert 'revision="abc123"' in result.summary()
    readme = (folder / "README.md").read_text()
    assert f'model_id = "{REPO_ID}"' in readme and "your-username/" not in readme


def test_push_to_main_keeps_remote_files_on_request(export_dir, tmp_path, online, recorded_api):
    import shutil

    folder = tmp_path / "pvm-tiny"
    shutil.copytree(export_dir, folder)
    push_folder(folder, REPO_ID, token="hf_test_token", keep_remote_files=True)
    names = [name for name, _, _ in recorded_api]
    assert names == ["repo_exists", "create_repo", "upload_folder"]  # no branch to create for main
    kwargs = recorded_api[-1][2]
    assert kwargs["revision"] == "main" and kwargs["delete_patterns"] is None
    assert kwargs["commit_message"] == "Upload PVM-Qwen3-VL checkpoint"


def test_push_without_token_fails_clearly(export_dir, online, monkeypatch, recorded_api, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(push_module, "get_token", lambda: None)
    with pytest.raises(LocalTokenNotFoundError, match="hf auth login") as error:
        push_folder(export_dir, REPO_ID)
    assert "HF_TOKEN" in str(error.value) and "Nothing was uploaded" in str(error.value)
    assert recorded_api == []
    assert cli_main(["push", str(export_dir), REPO_ID]) == 2  # refused before anything was sent
    err = capsys.readouterr().err
    assert err.startswith("pvm-qwen3vl push: error: No Hugging Face token found")


def test_push_offline_fails_clearly(export_dir, monkeypatch, recorded_api, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets when huggingface_hub loads
    with pytest.raises(OfflineModeIsEnabled, match=r"Offline mode is on \(HF_HUB_OFFLINE=1\).*Nothing was uploaded"):
        push_folder(export_dir, REPO_ID, token="hf_test_token")
    assert recorded_api == []
    assert cli_main(["push", str(export_dir), REPO_ID]) == 2
    assert "unset it to push" in capsys.readouterr().err


def test_push_refuses_a_training_output(export_dir, tmp_path, online, recorded_api):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(export_dir, folder)
    (folder / "optimizer.pt").write_bytes(b"0")
    (folder / "checkpoint-2").mkdir()
    with pytest.raises(ValueError, match="optimizer.pt.*pvm-qwen3vl export") as error:
        push_folder(folder, REPO_ID, token="hf_test_token")
    assert "checkpoint-2" in str(error.value) and "Nothing was uploaded" in str(error.value)
    assert recorded_api == []
    with pytest.raises(ValueError, match="no owner"):
        push_folder(export_dir, "pvm-tiny", token="hf_test_token")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_push_with_the_hub_unreachable(export_dir, online, monkeypatch, capsys):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(HubPushError, match="could not reach.*Nothing was uploaded"):
        push_folder(export_dir, REPO_ID, token="hf_test_token", endpoint=endpoint)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(push_module, "get_token", lambda: "hf_test_token")
    assert cli_main(["push", str(export_dir), REPO_ID]) == 1  # the upload itself failed
    assert "could not reach" in capsys.readouterr().err


def test_push_help_states_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli_main(["push", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 0 done; 2 input refused" in text and "1 the Hub refused or could not be reached" in text


def test_push_failing_during_upload_says_nothing_was_committed(export_dir, online, monkeypatch, recorded_api):
    def fail(self, **kwargs):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(HfApi, "upload_folder", fail)
    with pytest.raises(HubPushError) as error:
        push_folder(export_dir, REPO_ID, revision="dev", token="hf_test_token")
    message = str(error.value)
    assert "failed while uploading (upload_folder)" in message and "was created by this push" in message
    assert "branch 'dev' exists" in message and "either unchanged or all updated" in message

    def reject(self, **kwargs):
        response = httpx2.Response(
            413, request=httpx2.Request("POST", f"https://huggingface.co/api/models/{REPO_ID}/commit/main")
        )
        raise HfHubHTTPError("413 Payload Too Large", response=response, server_message="Payload Too Large")

    monkeypatch.setattr(HfApi, "upload_folder", reject)
    with pytest.raises(HubPushError, match="answered 413: Payload Too Large.*no commit was made"):
        push_folder(export_dir, REPO_ID, token="hf_test_token")


class FakeHub(BaseHTTPRequestHandler):
    """The endpoints of one push, recording what arrives. `server.repos`: repo id -> branch -> {path: bytes}."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, status, payload, headers=None):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _authorized(self):
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self._reply(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def do_GET(self):
        server, path = self.server, unquote(urlparse(self.path).path)
        server.requests.append(("GET", path, self.headers.get("Authorization")))
        if not self._authorized():
            return None
        parts = path.split("/")
        repo = "/".join(parts[3:5]) if len(parts) >= 5 else ""
        if path.startswith("/api/models/") and len(parts) == 5:
            if repo in server.repos:
                return self._reply(200, {"id": repo, "sha": "0" * 40, "private": False})
            return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if path.startswith("/api/models/") and parts[5] == "tree":
            files = server.repos.get(repo, {}).get(parts[6], {})
            tree = [{"type": "file", "path": name, "size": len(data), "oid": "1" * 40} for name, data in files.items()]
            return self._reply(200, tree)
        server.unknown.append(("GET", path))
        return self._reply(404, {"error": "unknown route"})

    def do_POST(self):
        server, path = self.server, unquote(urlparse(self.path).path)
        server.requests.append(("POST", path, self.headers.get("Authorization")))
        body = self._body()
        if not self._authorized():
            return None
        parts = path.split("/")
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo = f"{payload.get('organization') or 'pvm-user'}/{payload['name']}"
            server.created.append((repo, payload.get("private")))
            server.repos.setdefault(repo, {"main": {}})
            return self._reply(200, {"url": f"http://{self.headers['Host']}/{repo}"})
        if path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        repo = "/".join(parts[3:5])
        if parts[5] == "branch":
            branches = server.repos[repo]
            branches.setdefault(parts[6], dict(branches["main"]))
            return self._reply(200, {})
        if parts[5] == "preupload":
            files = json.loads(body)["files"]
            return self._reply(
                200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if parts[5] == "commit":
            branch = parts[6]
            files = dict(server.repos[repo][branch])
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            for line in lines:
                if line["key"] == "header":
                    server.commits.append(line["value"]["summary"])
                elif line["key"] == "file":
                    files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                elif line["key"] == "deletedFile":
                    files.pop(line["value"]["path"], None)
            server.repos[repo][branch] = files
            url = f"http://{self.headers['Host']}/{repo}/commit/{'2' * 40}"
            return self._reply(200, {"commitUrl": url, "commitOid": "2" * 40})
        server.unknown.append(("POST", path))
        return self._reply(404, {"error": "unknown route"})


@pytest.fixture
def fake_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.repos, server.requests, server.unknown, server.created, server.commits = {}, [], [], [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_push_to_a_local_fake_hub(export_dir, tmp_path, online, fake_hub):
    import shutil

    server, endpoint = fake_hub
    folder = tmp_path / "pvm-tiny"
    shutil.copytree(export_dir, folder)
    # A repository that already holds a stale shard and trainer clutter from an earlier Trainer push.
    server.repos[REPO_ID] = {"main": {"model-00009-of-00009.safetensors": b"old", "optimizer.pt": b"old"}}
    result = push_folder(folder, REPO_ID, revision="v1", commit_message="tiny PVM", token=TOKEN, endpoint=endpoint)

    assert server.unknown == []
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in server.requests)
    assert server.commits == ["tiny PVM"]  # one commit
    uploaded = server.repos[REPO_ID]["v1"]
    expected = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert uploaded == expected  # every file byte for byte; the stale files were deleted in the same commit
    assert server.repos[REPO_ID]["main"] == {"model-00009-of-00009.safetensors": b"old", "optimizer.pt": b"old"}
    assert result.commit_oid == "2" * 40 and not result.repo_created


def test_push_with_a_rejected_token(export_dir, online, fake_hub):
    server, endpoint = fake_hub
    with pytest.raises(HubPushError, match=r"rejected the token \(401\).*Nothing was uploaded"):
        push_folder(export_dir, REPO_ID, token="hf_wrong", endpoint=endpoint)
    assert server.created == [] and server.commits == []


def test_publish_exports_then_pushes(export_dir, tmp_path, online, recorded_api):
    """Training's --push_to_hub path: export the training output, then push the export (never the raw folder)."""
    import shutil

    from pvm_qwen3vl.model_cards.callback import publish

    run = tmp_path / "run"
    shutil.copytree(export_dir, run)
    (run / "optimizer.pt").write_bytes(b"0")
    (run / "README.md").write_text("---\ntags:\n- trl\n---\nTRL card\n")
    report, result = publish(run, REPO_ID, token="hf_test_token", verify=False)
    assert report.out_dir == run / "hub-export"
    kwargs = recorded_api[-1][2]
    assert kwargs["folder_path"] == str(run / "hub-export")
    assert "optimizer.pt" not in {name for name, _ in report.files}
    assert f'model_id = "{REPO_ID}"' in (run / "hub-export" / "README.md").read_text()
    assert result.commit_oid == "abc123"


def test_cli_lists_the_hub_commands(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    out = capsys.readouterr().out
    assert "export" in out and "push" in out and "card" in out
