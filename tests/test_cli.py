"""The `pvm-qwen3vl` command line: every command is registered, help is cheap, and errors are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pvm_qwen3vl import __version__
from pvm_qwen3vl.cli import build_parser, main

COMMANDS = {"tiny-base", "convert", "train", "eval", "bench", "card", "export", "push", "serve", "quickstart", "experiment"}


def test_every_command_is_registered():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert COMMANDS <= set(choices)


def test_help_imports_neither_torch_nor_transformers_models():
    """`pvm-qwen3vl --help` stays fast: building the parser loads no torch (which takes seconds)."""
    code = "import sys, pvm_qwen3vl.cli as cli; cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"pvm-qwen3vl {__version__}"


def test_a_bad_option_value_is_one_clear_line(tmp_path, capsys):
    assert main(["convert", str(tmp_path), str(tmp_path / "out"), "--memory-source", "bogus"]) == 2
    error = capsys.readouterr().err
    assert error.strip() == (
        "pvm-qwen3vl convert: error: --pvm_memory_source 'bogus' is not one of: visual_embeddings, hidden_states."
    )
