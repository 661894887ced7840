"""Tiny PVM checkpoints for the vLLM parity tests and benchmarks: head_dim 32 (vLLM's CPU attention needs >= 32),
gates opened and PVM weights perturbed so that the branch changes the tokens. Needs only torch and transformers, so
it runs in the main environment and in `.venv-vllm` alike.

    python -m pvm_qwen3vl.serving.tiny_checkpoints OUT [--gate 0.75] [--variant mlp] [--memory-source hidden_states]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch
from transformers import GenerationConfig

from pvm_qwen3vl.tiny import build_tiny_base

VLLM_HEAD_DIM = 32


def perturb_pvm_weights(model, seed: int, gate: float) -> None:
    """Give every PVM weight a 'trained' look: linear weights ~ N(0, 1/fan_in), norm scales 1 + N(0, 0.3) (the
    cross-attention's q/k norms twice that, so the attention is far from uniform), every gate at `gate`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.pvm_parameters():
            if name.endswith(".gate"):
                param.fill_(gate)
            elif param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(param.shape[1]))
            else:
                scale = 2.0 if ("q_norm" in name or "k_norm" in name) else 1.0
                param.copy_(scale * (1.0 + 0.3 * torch.randn(param.shape, generator=generator)))


def build_tiny_pvm(
    out_dir: str | Path,
    *,
    seed: int = 0,
    gate: float = 0.75,
    head_dim: int = VLLM_HEAD_DIM,
    perturb: bool = True,
    **pvm_kwargs,
) -> Path:
    """Write a tiny PVM checkpoint (tiny random Qwen3-VL base with `head_dim`, PVM on its default layers) to `out_dir`.
    `pvm_kwargs` are `pvm_*` config fields (None: the default). With `perturb=False` the PVM weights keep their
    init. Every gate is `gate` (0.0 for the exactness check)."""
    from transformers import AutoConfig, AutoProcessor

    from configuration_pvm_qwen3vl import PVMQwen3VLConfig
    from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration

    out_dir = Path(out_dir)
    pvm_kwargs = {key: value for key, value in pvm_kwargs.items() if value is not None}
    with tempfile.TemporaryDirectory() as scratch:
        base = build_tiny_base(Path(scratch) / "base", seed=seed, head_dim=head_dim)
        config = PVMQwen3VLConfig.from_base_config(AutoConfig.from_pretrained(base), pvm_gate_init=gate, **pvm_kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = PVMQwen3VLForConditionalGeneration.from_pretrained(base, config=config, dtype=torch.float32)
        if perturb:
            perturb_pvm_weights(model, seed + 1, gate)
        model.generation_config = GenerationConfig.from_pretrained(base)
        model.save_pretrained(out_dir)  # with auto_map and both remote-code files
        AutoProcessor.from_pretrained(base).save_pretrained(out_dir)
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gate", type=float, default=0.75)
    parser.add_argument("--no-perturb", action="store_true")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--memory-source", default=None)
    parser.add_argument("--visual-attention", default=None)
    args = parser.parse_args(argv)
    build_tiny_pvm(
        args.out,
        seed=args.seed,
        gate=args.gate,
        perturb=not args.no_perturb,
        pvm_variant=args.variant,
        pvm_memory_source=args.memory_source,
        pvm_visual_attention=args.visual_attention,
    )
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
