"""What every evaluation command shares: loading a checkpoint by path, building chat inputs, generating, and
re-running a generation teacher-forced for measurements, plus small file helpers.

Any Qwen3-VL checkpoint works, base or PVM: both load with
`AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)` (PVM checkpoints carry their modeling
code and an `auto_map`). PVM parts are found by duck typing (a decoder layer with a `pvm` submodule), because a
checkpoint loaded as remote code has its own copy of the PVM classes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------------------------------------------------
# Devices, dtypes, seeds
# ----------------------------------------------------------------------------------------------------------------------


def resolve_device(device: str | None = "auto") -> torch.device:
    """`auto` -> the first CUDA device when there is one, else the CPU; anything else is passed to `torch.device`."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"--device: {device!r} is not a torch device; use auto, cpu, cuda or cuda:N.") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu.")
    return resolved


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype | str:
    """`auto` -> the checkpoint's dtype on GPU and float32 on CPU (half-precision matmuls are slow there)."""
    if dtype in (None, "", "auto"):
        return "auto" if device.type != "cpu" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (run index, batch index, ...), independent of Python's hash salt."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@contextmanager
def seeded(seed: int | None, device: torch.device):
    """Run a block with torch's generators seeded, then restore their state: a seed makes one call reproducible
    without changing the caller's random state. `None` leaves the generators alone."""
    if seed is None:
        yield
        return
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A checkpoint ready for evaluation: the model (eval mode, on its device), its processor (left padding), and the
    name it was loaded from."""

    model: Any
    processor: Any
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_pvm(self) -> bool:
        return bool(pvm_layer_indices(self.model))


def load_model(
    path: str | os.PathLike,
    device: str | None = "auto",
    dtype: str | None = "auto",
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load a Qwen3-VL or PVM checkpoint (a local folder or a Hub id) and its processor.

    `attn_implementation="eager"` is required by the measurements that read attention weights.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = str(path)
    resolved_device = resolve_device(device)
    kwargs: dict[str, Any] = {"trust_remote_code": True, "dtype": resolve_dtype(dtype, resolved_device)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(name, **kwargs)
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    except OSError as error:
        hint = "" if Path(name).exists() else " (no local folder has that name, and the Hub could not serve it)"
        raise OSError(
            f"--model {name}: cannot load a checkpoint{hint}. Give a Qwen3-VL or PVM checkpoint folder with a "
            f"config.json and the processor files, e.g. the output of `pvm-qwen3vl tiny-base` or `convert`. ({error})"
        ) from error
    decoder_layers(model, name)  # fails early, with a clear message, on a model that is not Qwen3-VL
    model.to(resolved_device).eval()
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"--model {name}: its processor has no tokenizer; a Qwen3-VL processor is needed.")
    tokenizer.padding_side = "left"
    return LoadedModel(model=model, processor=processor, name=name)


def decoder_layers(model, name: str = "the model") -> torch.nn.ModuleList:
    """The language model's decoder layers (`model.model.language_model.layers`)."""
    try:
        return model.model.language_model.layers
    except AttributeError as error:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(
            f"{name} is a {model_type!r} model without Qwen3-VL's `model.language_model.layers`; the evaluation "
            "commands support Qwen3-VL checkpoints (model_type 'qwen3_vl') and their PVM conversions."
        ) from error


def pvm_layer_indices(model) -> list[int]:
    """Indices of the decoder layers that carry a PVM branch (empty for a base Qwen3-VL)."""
    try:
        layers = model.model.language_model.layers
    except AttributeError:
        return []
    return [index for index, layer in enumerate(layers) if hasattr(layer, "pvm") and hasattr(layer, "_pvm")]


def visual_token_ids(model) -> list[int]:
    """Token ids that stand for visual tokens in the text sequence (image and video pads)."""
    config = model.config
    ids = [getattr(config, "image_token_id", None), getattr(config, "video_token_id", None)]
    return [int(token) for token in ids if token is not None]


def eos_token_ids(model, processor) -> list[int]:
    """Every token id that ends generation for this checkpoint."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = processor.tokenizer.eos_token_id
    ids = eos if isinstance(eos, (list, tuple)) else [eos]
    return [int(token) for token in ids if token is not None]


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------


def user_message(text: str, num_images: int, system: str | None = None) -> list[dict]:
    """Chat messages for one user turn: its images first, then the text."""
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    if system:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    return messages


def encode_prompts(processor, prompts: Sequence[Any], images: Sequence[Sequence[Any]]) -> dict[str, torch.Tensor]:
    """Render chat prompts (one user turn each, with its images first) and process them into a left-padded batch.
    Each prompt is a `prompts.Prompt` (user text and system prompt) or a plain user text."""
    if len(prompts) != len(images):
        raise ValueError(f"encode_prompts: {len(prompts)} prompts but {len(images)} image lists.")
    rendered = []
    for prompt, sample_images in zip(prompts, images):
        user, system = (prompt, None) if isinstance(prompt, str) else (prompt.user, prompt.system)
        messages = user_message(user, len(sample_images), system)
        rendered.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    flat_images = [image for sample_images in images for image in sample_images]
    batch = processor(text=rendered, images=flat_images or None, padding=True, return_tensors="pt")
    return dict(batch)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


# ----------------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Generation:
    """A batch's generation: `sequences` [B, P + N] (prompt then new tokens, padded after each end), the padded
    prompt length P, the number of generated tokens of each sample before its end-of-sequence token
    (`num_tokens`), whether each sample stopped at an end token (`finished`), and the decoded texts."""

    sequences: torch.Tensor
    prompt_length: int
    num_tokens: list[int]
    finished: list[bool]
    texts: list[str]

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length :]


def generate(
    loaded: LoadedModel,
    batch: dict[str, torch.Tensor],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    min_new_tokens: int | None = None,
    seed: int | None = None,
    replayable: bool = False,
) -> Generation:
    """Generate for a processed batch. `temperature` 0 is greedy decoding; above 0 samples (with the checkpoint's
    top_p / top_k unless given). `seed` seeds the sampler for this call only (see `seeded`).

    `replayable` forbids the image/video placeholder tokens, so that `teacher_forced_inputs` can replay the output:
    a placeholder in the replayed ids would be taken for an image slot (and fail Qwen3-VL's feature count check).
    Trained checkpoints do not emit them; random test models do."""
    model, processor = loaded.model, loaded.processor
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
    if temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 is greedy decoding), got {temperature}.")
    eos_ids = eos_token_ids(model, processor)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        kwargs["temperature"] = temperature
        if top_p is not None:
            kwargs["top_p"] = top_p
        if top_k is not None:
            kwargs["top_k"] = top_k
    else:  # greedy: neutralize the checkpoint's sampling settings so that no warning is raised about them
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if min_new_tokens:
        kwargs["min_new_tokens"] = min_new_tokens
    if replayable:
        kwargs["suppress_tokens"] = visual_token_ids(model)
    pad_id = processor.tokenizer.pad_token_id
    kwargs["pad_token_id"] = pad_id if pad_id is not None else eos_ids[0]
    inputs = to_device(batch, loaded.device)
    with seeded(seed, loaded.device), torch.no_grad():
        sequences = model.generate(**inputs, **kwargs)
    prompt_length = inputs["input_ids"].shape[1]
    new_tokens = sequences[:, prompt_length:].cpu()
    num_tokens, finished, trimmed = [], [], []
    eos = torch.tensor(eos_ids)
    for row in new_tokens:
        ends = torch.isin(row, eos).nonzero()
        length = int(ends[0]) if len(ends) else len(row)
        num_tokens.append(length)
        finished.append(bool(len(ends)))
        trimmed.append(row[:length])
    texts = processor.batch_decode(trimmed, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return Generation(sequences.cpu(), prompt_length, num_tokens, finished, texts)


def teacher_forced_inputs(batch: dict[str, torch.Tensor], generation: Generation) -> dict[str, torch.Tensor]:
    """Inputs that replay a generation in one forward: the prompt and every generated token up to each sample's end
    token (included), the rest masked. A causal model computes at each position exactly what it computed while
    generating, so measurements on this forward describe the generation itself."""
    sequences = generation.sequences
    prompt_length = generation.prompt_length
    new = sequences.shape[1] - prompt_length
    steps = torch.arange(new).unsqueeze(0)
    kept = torch.tensor([min(n + 1, new) for n in generation.num_tokens]).unsqueeze(1)
    attention_mask = torch.cat([batch["attention_mask"].cpu(), (steps < kept).to(batch["attention_mask"].dtype)], 1)
    inputs = {key: value for key, value in batch.items() if key not in ("input_ids", "attention_mask")}
    inputs["input_ids"] = sequences
    inputs["attention_mask"] = attention_mask
    if "mm_token_type_ids" in batch:  # generated tokens are text
        token_types = batch["mm_token_type_ids"]
        inputs["mm_token_type_ids"] = torch.cat(
            [token_types.cpu(), token_types.new_zeros(len(sequences), new).cpu()], 1
        )
    return inputs


# ----------------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file. A last line cut short by an interruption is ignored (with a warning); a broken line
    anywhere else is an error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file.")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                logger.warning("%s: ignoring its incomplete last line (an interrupted write)", path)
                continue
            raise ValueError(f"{path}, line {number}: not valid JSON ({error}).") from error
    return rows


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows in one write, flushed and synced, so that an interruption loses at most the rows being written."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json(path: str | os.PathLike, payload: Any) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def prepare_out_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out
