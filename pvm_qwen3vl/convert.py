"""`pvm-qwen3vl convert`: a Qwen3-VL checkpoint -> a PVM checkpoint that loads with `trust_remote_code=True`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from pvm_qwen3vl.options import PVMArguments, from_namespace


@dataclass
class ConversionReport:
    out_dir: Path
    pvm_layers: list[int]
    pvm_hidden_size: int
    pvm_parameters: int
    total_parameters: int

    def summary(self) -> str:
        base = self.total_parameters - self.pvm_parameters
        return (
            f"PVM layers {self.pvm_layers}, latent {self.pvm_hidden_size}: added {self.pvm_parameters:,} parameters "
            f"({self.pvm_parameters / base:.3%} of the {base:,}-parameter base) -> {self.out_dir}"
        )


def convert(
    base: str | Path, out_dir: str | Path, options: PVMArguments | None = None, *, dtype: str = "auto", overwrite: bool = False
) -> ConversionReport:
    """Load `base` into the PVM class with fresh PVM weights and save a self-contained PVM checkpoint to `out_dir`."""
    from configuration_pvm_qwen3vl import PVMQwen3VLConfig
    from pvm_qwen3vl.checkpoints import (
        load_processor,
        load_pvm_model,
        model_type_of,
        refuse_to_overwrite,
        resolve_model_path,
        save_checkpoint,
    )

    path = resolve_model_path(base)
    if model_type_of(path) == PVMQwen3VLConfig.model_type:  # before anything is loaded, replaced or deleted
        raise ValueError(
            f"{base} is already a PVM checkpoint: there is nothing to convert. Train it, or convert its plain "
            "Qwen3-VL base instead."
        )
    if Path(path).resolve() == Path(out_dir).resolve():
        raise ValueError(f"{out_dir} is the base checkpoint itself: write the converted model to another folder.")
    refuse_to_overwrite(out_dir, overwrite, what="the converted model")
    model, _ = load_pvm_model(path, options, dtype=dtype)
    from pvm_qwen3vl.model_cards.card import write_model_card

    out_dir = save_checkpoint(model, out_dir, processor=load_processor(path), generation_source=path)
    write_model_card(out_dir, origin=path)  # a Hub base becomes `base_model` metadata; a local one is named
    pvm_count = sum(param.numel() for _, param in model.pvm_parameters())
    total = sum(param.numel() for param in model.parameters())
    return ConversionReport(out_dir, list(model.config.pvm_layers), model.config.pvm_hidden_size, pvm_count, total)


def _run(args: argparse.Namespace) -> int:
    report = convert(args.base, args.out, from_namespace(PVMArguments, args), dtype=args.dtype, overwrite=args.overwrite)
    print(report.summary())
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert",
        dataclass_types=[PVMArguments],
        help="a Qwen3-VL checkpoint -> a PVM checkpoint (fresh PVM, gates at 0)",
        description="Load a Qwen3-VL checkpoint into the PVM class with fresh PVM weights (gates at 0: it reproduces "
        "the base exactly) and save a self-contained PVM checkpoint.",
    )
    parser.add_argument("base", help="Qwen3-VL checkpoint: a local folder, a Hub id such as Qwen/Qwen3-VL-8B-Instruct, or embedded:tiny")
    parser.add_argument("out", help="output folder (must be empty or new, unless --overwrite)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto", help="weights dtype")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.set_defaults(func=_run)
