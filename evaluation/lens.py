"""`pvm-qwen3vl eval lens`: internal prediction convergence (the logit lens).

For each decoder layer l, P_layer = softmax(lm_head(final_norm(h_l))) reads the residual stream after layer l as if
it were the last one. The command reports KL(P_final || P_layer), averaged over the generated tokens of a dataset
(each model answers with its own greedy generation, replayed teacher-forced with read-only hooks). P_final is the
same lens applied to the last layer, i.e. the model's output distribution, so the last layer's KL is 0. The paper
finds PVM's KL lower from layer 8 on, its internal predictions settling earlier.

Layers are numbered from 0, as in `pvm_layers`. Outputs: `lens.csv` (`layer,kl`), `lens.json` (also the top-1
agreement of each layer with the final prediction, and the token count), `lens.png`, and with `--compare` the second
model's `lens_compare.csv` and both curves in the figure.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation.common import (
    LoadedModel,
    decoder_layers,
    encode_prompts,
    generate,
    pvm_layer_indices,
    teacher_forced_inputs,
    to_device,
)
from evaluation.probes import HiddenStateProbe
from evaluation.prompts import render_prompt

POSITION_CHUNK = 256  # positions per vocabulary projection: bounds memory to POSITION_CHUNK x vocab floats


class DatasetItems(Sequence):
    """(prompt, images) pairs of a dataset, built on access so that only the current batch's images are decoded."""

    def __init__(self, samples, template: str, system: str | None = None):
        self.samples, self.template, self.system = samples, template, system

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        sample = self.samples[index]
        prompt = render_prompt(self.template, sample.question, sample.options, sample.kind, self.system)
        return prompt, sample.images


@dataclass
class LensResult:
    model: str
    kl: list[float]  # per layer, mean over tokens
    top1_agreement: list[float]  # per layer, share of tokens whose argmax matches the final one
    tokens: int
    pvm_layers: list[int]
    final_logits_max_abs_diff: float  # lens(last layer) against the model's own logits: a self-check


def measure_lens(
    loaded: LoadedModel,
    items: Sequence[tuple[Any, list]],
    *,
    max_new_tokens: int,
    batch_size: int = 1,
    temperature: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> LensResult:
    """Generate for each (prompt, images) item, replay, and average KL(P_final || P_layer) over generated tokens."""
    model = loaded.model
    num_layers = len(decoder_layers(model))
    final_norm = model.model.language_model.norm
    lm_head = model.get_output_embeddings()
    kl_sum = np.zeros(num_layers)
    agree_sum = np.zeros(num_layers)
    tokens = 0
    max_diff = 0.0
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=f"lens {Path(loaded.name).name}", unit="batch", disable=not progress):
        chunk = items[start : start + batch_size]
        batch = encode_prompts(loaded.processor, [text for text, _ in chunk], [images for _, images in chunk])
        generation = generate(
            loaded, batch, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + start, replayable=True
        )
        inputs = teacher_forced_inputs(batch, generation)
        prompt_length, steps = generation.prompt_length, generation.new_tokens.shape[1]
        query_start = prompt_length - 1
        with HiddenStateProbe(model, query_start, query_start + steps) as probe, torch.no_grad():
            output = model(**to_device(inputs, loaded.device), use_cache=False)
        valid = [min(steps, n + int(done)) for n, done in zip(generation.num_tokens, generation.finished)]
        with torch.no_grad():
            for row, count in enumerate(valid):
                if count == 0:
                    continue
                tokens += count
                for begin in range(0, count, POSITION_CHUNK):
                    end = min(count, begin + POSITION_CHUNK)
                    final_logits = lm_head(final_norm(probe.hidden[num_layers - 1][row, begin:end]))
                    reference = output.logits[row, query_start + begin : query_start + end]
                    max_diff = max(max_diff, float((final_logits.float() - reference.float()).abs().max()))
                    final_log_probs = torch.log_softmax(final_logits.float(), dim=-1)
                    final_top1 = final_log_probs.argmax(-1)
                    final_probs = final_log_probs.exp()
                    for layer in range(num_layers):
                        logits = lm_head(final_norm(probe.hidden[layer][row, begin:end])).float()
                        log_probs = torch.log_softmax(logits, dim=-1)
                        kl = (final_probs * (final_log_probs - log_probs)).sum(-1).clamp_min(0.0)
                        kl_sum[layer] += float(kl.sum())
                        agree_sum[layer] += float((log_probs.argmax(-1) == final_top1).sum())
    if tokens == 0:
        raise ValueError("no token was generated; raise --max-new-tokens.")
    return LensResult(
        model=loaded.name,
        kl=[float(value) for value in kl_sum / tokens],
        top1_agreement=[float(value) for value in agree_sum / tokens],
        tokens=tokens,
        pvm_layers=pvm_layer_indices(model),
        final_logits_max_abs_diff=max_diff,
    )


def write_csv(result: LensResult, path: str | os.PathLike) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", "kl"])
        for layer, value in enumerate(result.kl):
            writer.writerow([layer, f"{value:.8g}"])


def write_outputs(out: Path, result: LensResult, compare: LensResult | None, settings: dict[str, Any]) -> dict:
    from evaluation.common import write_json
    from evaluation.plotting import plot_lens

    write_csv(result, out / "lens.csv")
    results = [result]
    if compare is not None:
        write_csv(compare, out / "lens_compare.csv")
        results.append(compare)
    summary = {"settings": settings, "models": [vars(item) for item in results]}
    if compare is not None:
        summary["kl_difference_compare_minus_model"] = [b - a for a, b in zip(result.kl, compare.kl)]
    write_json(out / "lens.json", summary)
    names = [item.model for item in results]
    if len(names) == 2 and names[0] == names[1]:
        names[1] += " (compare)"
    plot_lens(
        {name: item.kl for name, item in zip(names, results)},
        {name: item.pvm_layers for name, item in zip(names, results)},
        out / "lens.png",
    )
    return summary
