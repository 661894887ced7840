"""Generating with a loaded checkpoint, and replaying a finished generation in one teacher-forced forward, where the
analyses measure it with read-only hooks (`probes`). A causal model computes at each position of the replay what it
computed while generating, so generating with no hook attached and measuring the replay changes no output.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import BatchFeature

from pvm_qwen3vl.checkpoints import LoadedModel
from pvm_qwen3vl.prompts import Prompt


def pvm_layer_indices(model) -> list[int]:
    """Indices of the decoder layers that carry a PVM branch (empty for a base Qwen3-VL)."""
    return sorted(getattr(model.config, "pvm_layers", None) or [])


def encode_prompts(processor, prompts: Sequence[Prompt | str], images: Sequence[Sequence[Any]]) -> BatchFeature:
    """One user turn per prompt, its images first (a `Prompt` may add a system turn), as a left-padded batch."""
    rendered = []
    for prompt, sample_images in zip(prompts, images, strict=True):
        prompt = Prompt(prompt) if isinstance(prompt, str) else prompt
        content = [{"type": "image"} for _ in sample_images] + [{"type": "text", "text": prompt.user}]
        messages = [{"role": "user", "content": content}]
        if prompt.system:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": prompt.system}]})
        rendered.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    flat_images = [image for sample_images in images for image in sample_images]
    return processor(text=rendered, images=flat_images or None, padding=True, return_tensors="pt")


@dataclass
class GeneratedBatch:
    """`sequences` [B, P + N]: the padded prompt (length P), then the new tokens, padded after each end token;
    `num_tokens`: each sample's tokens before its end token (N when it has none)."""

    sequences: torch.Tensor
    prompt_length: int
    num_tokens: list[int]
    texts: list[str]

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length :]

    @property
    def measured_steps(self) -> list[int]:
        """Per sample, the steps a replay measures: its tokens, and its end token when it has one."""
        return [min(count + 1, self.new_tokens.shape[1]) for count in self.num_tokens]


def generate(
    loaded: LoadedModel,
    batch: BatchFeature,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    min_new_tokens: int | None = None,
    seed: int | None = None,
    replayable: bool = False,
) -> GeneratedBatch:
    """Greedy at `temperature` 0, else sampled (with the checkpoint's top_p / top_k unless given), with torch's
    generators seeded by `seed` for this call only. `replayable` forbids the image/video placeholder tokens, which
    a replay would take for image slots (trained checkpoints do not emit them; random test models do)."""
    model, processor = loaded.model, loaded.processor
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
    if temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 is greedy decoding), got {temperature}.")
    eos = model.generation_config.eos_token_id
    eos_ids = torch.tensor(processor.tokenizer.eos_token_id if eos is None else eos).view(-1)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature)
        kwargs.update({key: value for key, value in (("top_p", top_p), ("top_k", top_k)) if value is not None})
    else:  # greedy: neutralize the checkpoint's sampling settings so that no warning is raised about them
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if replayable:
        kwargs["suppress_tokens"] = [model.config.image_token_id, model.config.video_token_id]
    kwargs["pad_token_id"] = processor.tokenizer.pad_token_id  # the processor padded the prompts with it
    inputs = batch.to(loaded.device)
    devices = [loaded.device.index or 0] if loaded.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        sequences = model.generate(**inputs, **kwargs).cpu()
    prompt_length, num_tokens = inputs["input_ids"].shape[1], []
    for row in sequences[:, prompt_length:]:
        ends = torch.isin(row, eos_ids).nonzero()
        num_tokens.append(int(ends[0]) if len(ends) else len(row))
    trimmed = [row[:count] for row, count in zip(sequences[:, prompt_length:], num_tokens)]
    texts = processor.batch_decode(trimmed, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return GeneratedBatch(sequences, prompt_length, num_tokens, texts)


def teacher_forced_inputs(batch: BatchFeature, generation: GeneratedBatch) -> BatchFeature:
    """Inputs that replay a generation in one forward: the prompt and each sample's tokens up to its end token."""
    sequences, new = generation.sequences, generation.new_tokens.shape[1]
    kept = torch.tensor(generation.measured_steps).unsqueeze(1)
    prompt_mask = batch["attention_mask"].cpu()
    inputs = {key: value for key, value in batch.items() if key not in ("input_ids", "attention_mask")}
    inputs["input_ids"] = sequences
    inputs["attention_mask"] = torch.cat([prompt_mask, (torch.arange(new) < kept).to(prompt_mask.dtype)], 1)
    if "mm_token_type_ids" in batch:  # generated tokens are text
        token_types = batch["mm_token_type_ids"].cpu()
        inputs["mm_token_type_ids"] = torch.cat([token_types, token_types.new_zeros(len(sequences), new)], 1)
    return BatchFeature(inputs)


def replayed_batches(
    loaded: LoadedModel,
    items: Sequence[tuple[Prompt | str, list]],
    *,
    batch_size: int = 1,
    seed: int = 0,
    desc: str = "replay",
    progress: bool = True,
    **sampling: Any,
) -> Iterator[tuple[GeneratedBatch, BatchFeature]]:
    """Generate for (prompt, images) items batch by batch (`sampling`: `generate`'s settings) and yield each
    generation with the inputs, on the model's device, that replay it. The query that produced generated token t
    (0-based) sits at `prompt_length - 1 + t`."""
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=f"{desc} {Path(loaded.name).name}", unit="batch", disable=not progress):
        chunk = [items[index] for index in range(start, min(start + batch_size, len(items)))]
        batch = encode_prompts(loaded.processor, [prompt for prompt, _ in chunk], [images for _, images in chunk])
        generation = generate(loaded, batch, seed=seed + start, replayable=True, **sampling)
        yield generation, teacher_forced_inputs(batch, generation).to(loaded.device)
