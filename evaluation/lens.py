"""`pvm-qwen3vl eval lens`: internal prediction convergence (the logit lens).

For each decoder layer l, P_layer = softmax(lm_head(final_norm(h_l))) reads the residual stream after layer l as if
it were the last one. KL(P_final || P_layer) is averaged over the tokens of each model's own greedy generation,
replayed under read-only hooks; P_final is the model's output, so the last layer's KL is 0. The paper finds PVM's KL
lower from layer 8 on: its internal predictions settle earlier. Layers are numbered from 0, as in `pvm_layers`. Outputs: `lens.csv` (`layer,kl`), `lens.json` (also the top-1
agreement of each layer with the final prediction, and the token count), `lens.png`, and with `--compare` the second
model's `lens_compare.csv` and both curves in the figure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvm_qwen3vl.checkpoints import LoadedModel
from pvm_qwen3vl.evaluation.generation import pvm_layer_indices, replayed_batches
from pvm_qwen3vl.evaluation.probes import HiddenStateProbe

POSITION_CHUNK = 256  # positions per vocabulary projection: bounds memory to POSITION_CHUNK x vocab floats


@dataclass
class LensResult:
    model: str
    kl: list[float]  # per layer, mean over tokens
    top1_agreement: list[float]  # per layer, share of tokens whose argmax matches the final one
    tokens: int
    pvm_layers: list[int]
    final_log_probs_max_abs_diff: float  # lens(last layer) against the model's own output: a self-check


def measure_lens(loaded: LoadedModel, items: Sequence[tuple[Any, list]], **options: Any) -> LensResult:
    """Generate greedily for each (prompt, images) item, replay, and average KL(P_final || P_layer) over the
    generated tokens; `options` (`max_new_tokens`, `batch_size`, `seed`, `progress`) go to `replayed_batches`."""
    model = loaded.model
    num_layers = len(model.model.language_model.layers)
    kl_sum, agree_sum = np.zeros(num_layers), np.zeros(num_layers)
    tokens, max_diff = 0, 0.0

    def lens(hidden: torch.Tensor) -> torch.Tensor:  # log P_layer for hidden states [N, D]
        return torch.log_softmax(model.get_output_embeddings()(model.model.language_model.norm(hidden)).float(), -1)

    for generation, inputs in replayed_batches(loaded, items, desc="lens", **options):
        start = generation.prompt_length - 1
        with HiddenStateProbe(model, start, start + generation.new_tokens.shape[1]) as probe, torch.no_grad():
            keep = inputs["input_ids"].shape[1] - start  # logits of the generated positions only: logits[:, i] is start + i
            logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
            for row, count in enumerate(generation.measured_steps):
                tokens += count
                for begin in range(0, count, POSITION_CHUNK):
                    end = min(count, begin + POSITION_CHUNK)
                    final = lens(probe.hidden[num_layers - 1][row, begin:end])
                    reference = torch.log_softmax(logits[row, begin:end].float(), dim=-1)
                    max_diff = max(max_diff, float((final - reference).abs().max()))
                    for layer in range(num_layers):  # one layer at a time: a [positions, vocab] tensor each
                        log_probs = final if layer == num_layers - 1 else lens(probe.hidden[layer][row, begin:end])
                        kl_sum[layer] += float((final.exp() * (final - log_probs)).sum(-1).clamp_min(0.0).sum())
                        agree_sum[layer] += float((log_probs.argmax(-1) == final.argmax(-1)).sum())
    if tokens == 0:
        raise ValueError("no token was generated; raise --max-new-tokens.")
    kl, agreement = (kl_sum / tokens).tolist(), (agree_sum / tokens).tolist()
    return LensResult(loaded.name, kl, agreement, tokens, pvm_layer_indices(model), max_diff)


def write_outputs(out: Path, results: list[LensResult], settings: dict[str, Any]) -> dict:
    """Write `lens.csv` (and `lens_compare.csv` for a second model), `lens.json` and `lens.png`; return the summary."""
    from pvm_qwen3vl.evaluation.plotting import plot_lens

    out.mkdir(parents=True, exist_ok=True)
    for name, result in zip(("lens.csv", "lens_compare.csv"), results):
        rows = "".join(f"{layer},{value:.8g}\n" for layer, value in enumerate(result.kl))
        (out / name).write_text("layer,kl\n" + rows, encoding="utf-8")
    summary: dict[str, Any] = {"settings": settings, "models": [vars(item) for item in results]}
    if len(results) == 2:
        summary["kl_difference_compare_minus_model"] = [b - a for a, b in zip(results[0].kl, results[1].kl)]
    (out / "lens.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plot_lens(results, out / "lens.png")
    return summary
