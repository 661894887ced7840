"""Finding, loading and saving checkpoints: the one place that does it for convert, training, evaluation and the
quickstart.

- `resolve_model_path`: `embedded:tiny` (built once into a cache folder), an existing local folder, or a Hub id. A
  local path that does not exist fails at once, instead of after the Hub client's retries.
- `pvm_config_for` / `load_pvm_model`: a plain Qwen3-VL checkpoint converted on the fly (fresh PVM weights; only the
  `.pvm.` keys may be missing, nothing may be unexpected), or a PVM checkpoint as saved.
- `load_for_inference`: any Qwen3-VL checkpoint, PVM or not (its remote code), with its processor, for evaluation.
- `save_checkpoint`: a self-contained PVM folder (weights, config with `auto_map`, both remote-code files, processor,
  generation config) that loads with `trust_remote_code=True`. It refuses to write over a folder that holds files.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from transformers import AutoConfig, AutoProcessor, GenerationConfig, PretrainedConfig

from configuration_pvm_qwen3vl import PVMQwen3VLConfig
from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration
from pvm_qwen3vl.options import PVMArguments

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EMBEDDED_TINY = "embedded:tiny"
TINY_HOME_ENV = "PVM_QWEN3VL_HOME"
REMOTE_CODE_FILES = ("configuration_pvm_qwen3vl.py", "modeling_pvm_qwen3vl.py")


# ----------------------------------------------------------------------------------------------------------------------
# Devices and dtypes
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


def resolve_dtype(dtype: str | None, device: torch.device | None = None) -> torch.dtype | str:
    """`auto` -> the checkpoint's dtype, except float32 on a CPU (half-precision matmuls are slow there)."""
    if dtype in (None, "", "auto"):
        return torch.float32 if device is not None and device.type == "cpu" else "auto"
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


# ----------------------------------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------------------------------


def _tiny_version() -> str:
    """A digest of what the tiny base is built from, so that a stale cached copy is never reused."""
    import pvm_qwen3vl.tiny as tiny

    digest = hashlib.sha256(Path(tiny.__file__).read_bytes())
    for path in sorted(tiny.TINY_TOKENIZER_DIR.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def ensure_tiny_base(seed: int = 0) -> Path:
    """Build the embedded tiny Qwen3-VL base once into `$PVM_QWEN3VL_HOME` (default `~/.cache/pvm-qwen3vl`) and return
    its folder. Safe when several processes start at once: each builds into a private folder and renames it. In a
    distributed launch rank 0 builds while the others wait (transformers' `save_pretrained` writes the weights on
    rank 0 only, so a folder built by another rank would have none)."""
    import torch.distributed as dist

    root = Path(os.environ.get(TINY_HOME_ENV, "~/.cache/pvm-qwen3vl")).expanduser()
    target = root / f"tiny-base-seed{seed}-{_tiny_version()}"
    if (target / "config.json").exists():
        return target
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_rank() == 0:
            _build_tiny_base_into(root, target, seed)
        dist.barrier()
    else:
        _build_tiny_base_into(root, target, seed)
    return target


def _build_tiny_base_into(root: Path, target: Path, seed: int) -> None:
    from pvm_qwen3vl.tiny import build_tiny_base

    root.mkdir(parents=True, exist_ok=True)
    scratch = root / f".building-{uuid.uuid4().hex}"
    with without_zero3_init():  # under a ZeRO-3 launch: a whole model, not one partitioned across the ranks
        build_tiny_base(scratch, seed=seed)
    try:
        os.replace(scratch, target)
        logger.info("Built the embedded tiny Qwen3-VL base into %s", target)
    except OSError:  # another process finished first
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def without_zero3_init():
    """Build models whole inside this block, even when a ZeRO-3 launch is active (transformers otherwise builds and
    loads every model under `deepspeed.zero.Init`, partitioned across the ranks)."""
    import sys

    integration = sys.modules.get("transformers.integrations.deepspeed")
    saved = getattr(integration, "_hf_deepspeed_config_weak_ref", None)
    if integration is None or saved is None:
        yield
        return
    integration._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        integration._hf_deepspeed_config_weak_ref = saved


def resolve_model_path(name: str | os.PathLike | None) -> str:
    """`embedded:tiny` -> the built tiny base; an existing local path -> its absolute path; otherwise a Hub id."""
    if name is None:
        raise ValueError("No model: set model_name_or_path in the recipe or pass the model path.")
    name = str(name)
    if name == EMBEDDED_TINY:
        return str(ensure_tiny_base())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{name}: the folder has no config.json, so it is not a checkpoint.")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") != 1 or path.parent.is_dir():
        raise ValueError(
            f"Model path {name!r} does not exist. Pass a local checkpoint folder, a Hub id such as "
            f"Qwen/Qwen3-VL-8B-Instruct, or {EMBEDDED_TINY!r} for the embedded tiny model."
        )
    return name


def model_type_of(path: str, revision: str | None = None) -> str:
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(path, revision=revision)
    except OSError as error:
        raise ValueError(
            f"Could not read the config of {path!r}: no local folder has that name, and as a Hub id: {error}"
        ) from error
    return config_dict.get("model_type", "")


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def pvm_config_for(
    path: str, options: PVMArguments | None = None, revision: str | None = None
) -> tuple[PVMQwen3VLConfig, bool]:
    """(PVM config, converted) for a plain Qwen3-VL checkpoint (converted with `options`) or a PVM checkpoint (whose
    config must agree with any option given)."""
    kwargs = options.config_kwargs() if options is not None else {}
    model_type = model_type_of(path, revision)
    if model_type == "qwen3_vl":
        return PVMQwen3VLConfig.from_base_config(AutoConfig.from_pretrained(path, revision=revision), **kwargs), True
    if model_type == PVMQwen3VLConfig.model_type:
        config = PVMQwen3VLConfig.from_pretrained(path, revision=revision)
        conflicts = [f"{key}={value!r} (checkpoint: {getattr(config, key)!r})" for key, value in kwargs.items() if getattr(config, key) != value]
        if conflicts:
            raise ValueError(
                f"{path} is already a PVM checkpoint, so the conversion options cannot change it: "
                f"{', '.join(conflicts)}. Drop these options, or start from the plain Qwen3-VL checkpoint."
            )
        return config, False
    raise ValueError(
        f"{path} is a {model_type!r} checkpoint, not Qwen3-VL. Give a Qwen3-VL checkpoint (model_type 'qwen3_vl', "
        f"e.g. Qwen/Qwen3-VL-8B-Instruct or the output of `pvm-qwen3vl tiny-base`), a PVM checkpoint, or {EMBEDDED_TINY!r}."
    )


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


def load_pvm_model(
    path: str,
    options: PVMArguments | None = None,
    *,
    dtype: str | None = "auto",
    attn_implementation: str | None = None,
    revision: str | None = None,
) -> tuple[PVMQwen3VLForConditionalGeneration, bool]:
    """Load `path` into the PVM class: (model, converted). A plain Qwen3-VL checkpoint gets fresh PVM weights (seed the
    RNG first for reproducible ones) with its gates at `pvm_gate_init`; a PVM checkpoint loads as saved."""
    config, converted = pvm_config_for(path, options, revision)
    # A conversion's only missing weights are the new PVM ones (checked below and summarised in one line): keep
    # transformers' per-key load report for loads where something is really missing. (A filter, not a level: the
    # logger's level switches other checks on.)
    report_logger = logging.getLogger("transformers.modeling_utils")
    hide_report = _DropLoadReport() if converted else None
    if hide_report:
        report_logger.addFilter(hide_report)
    try:
        model, info = PVMQwen3VLForConditionalGeneration.from_pretrained(
            path,
            config=config,
            dtype=resolve_dtype(dtype),
            attn_implementation=attn_implementation,
            revision=revision,
            output_loading_info=True,
        )
    finally:
        report_logger.removeFilter(hide_report)
    _keep_used_weight_conversions(model)
    missing = [key for key in info["missing_keys"] if not (converted and ".pvm." in key)]
    unexpected = sorted(info["unexpected_keys"])
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the PVM Qwen3-VL architecture: missing weights {missing[:8]}, unexpected "
            f"weights {unexpected[:8]}."
        )
    if converted:
        added = sum(getattr(param, "ds_numel", param.numel()) for _, param in model.pvm_parameters())
        logger.info(
            "Converted %s: PVM at layers %s (latent %d), %s new parameters, gates at %g",
            path, config.pvm_layers, config.pvm_hidden_size, f"{added:,}", config.pvm_gate_init,
        )  # fmt: skip
    return model, converted


def _keep_used_weight_conversions(model) -> None:
    """Saving reverts the key renamings that loading applied. Under ZeRO-3, transformers 5.23 records every renaming
    of the architecture, used or not (`_load_state_dict_into_zero3_model` in transformers/integrations/deepspeed.py),
    so a trained model would be saved under legacy names (`model.language_model.model.layers...`). Keep only those
    that matched a checkpoint key, as the non-ZeRO loading path does."""
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [conversion for conversion in conversions if conversion.was_used()]


def load_processor(path: str, revision: str | None = None, padding_side: str | None = None):
    """The checkpoint's processor: stock Qwen3-VL (trust_remote_code=False keeps AutoProcessor from prompting about
    the PVM code). Its tokenizer loader reads config.json and warns that the PVM model type is unknown to it: hushed."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        processor = AutoProcessor.from_pretrained(path, revision=revision, trust_remote_code=False)
    finally:
        transformers_logging.set_verbosity(verbosity)
    if padding_side is not None:
        processor.tokenizer.padding_side = padding_side
        processor.tokenizer.truncation_side = padding_side
    return processor


@dataclass
class LoadedModel:
    """A checkpoint ready for inference: the model (eval mode, on its device), its processor (left padding), and the
    name it was loaded from."""

    model: Any
    processor: Any
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_pvm(self) -> bool:
        return hasattr(self.model, "pvm_gates")


def load_for_inference(
    path: str | os.PathLike, device: str | None = "auto", dtype: str | None = "auto", attn_implementation: str | None = None
) -> LoadedModel:
    """Any Qwen3-VL or PVM checkpoint (a local folder, a Hub id or `embedded:tiny`) and its processor, left-padded."""
    from transformers import AutoModelForImageTextToText

    name = resolve_model_path(path)
    model_type = model_type_of(name)
    if model_type not in ("qwen3_vl", PVMQwen3VLConfig.model_type):
        raise ValueError(
            f"{path} is a {model_type!r} checkpoint; the evaluation commands take Qwen3-VL checkpoints (model_type "
            "'qwen3_vl') and their PVM conversions."
        )
    resolved = resolve_device(device)
    model = AutoModelForImageTextToText.from_pretrained(
        name, trust_remote_code=True, dtype=resolve_dtype(dtype, resolved), attn_implementation=attn_implementation
    )
    processor = load_processor(name, padding_side="left")
    return LoadedModel(model.to(resolved).eval(), processor, str(path))


SHIPPED_CONFIGS = MappingProxyType(
    {"Qwen/Qwen3-VL-8B-Instruct": "qwen3-vl-8b-instruct", "Qwen/Qwen3-VL-4B-Instruct": "qwen3-vl-4b-instruct"}
)


def shipped_config(name: str | os.PathLike, revision: str | None = None) -> str | None:
    """The folder of this package's copy of the config of the paper's base models (Qwen/Qwen3-VL-8B-Instruct and
    -4B-Instruct at revision main), for plans that need the architecture only; None for anything else or for a local
    folder of that name."""
    name = str(name)
    if name not in SHIPPED_CONFIGS or revision not in (None, "main") or Path(name).exists():
        return None
    return str(Path(__file__).resolve().parent / "assets" / "configs" / SHIPPED_CONFIGS[name])


def build_meta_model(path: str, options: PVMArguments | None = None, revision: str | None = None):
    """The PVM model for `path` on the meta device: the right architecture and parameter counts, no weights loaded.
    The paper's base models come from the configs this package ships (`shipped_config`): no network."""
    offline = shipped_config(path, revision)
    config, _ = pvm_config_for(offline or path, options, None if offline else revision)
    with torch.device("meta"):
        return PVMQwen3VLForConditionalGeneration(config)


# ----------------------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------------------


def refuse_to_overwrite(out_dir: str | os.PathLike, overwrite: bool, what: str = "the output") -> Path:
    """`out_dir`, unless it is a folder that already holds files and `overwrite` is off (then a ValueError)."""
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(
                f"{out_dir} is not empty: writing {what} there would replace or mix with what it holds. Choose "
                "another folder, or pass --overwrite to replace it."
            )
        shutil.rmtree(out_dir)
    return out_dir


def make_readable(folder: str | os.PathLike) -> None:
    """Give every file the mode a new file gets (0644 under umask 022): `save_pretrained` writes its weights 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def ensure_remote_code(out_dir: str | os.PathLike) -> None:
    """Make sure `out_dir` has both remote-code files (save_pretrained copies them; this covers other writers)."""
    import importlib

    for name in REMOTE_CODE_FILES:
        target = Path(out_dir) / name
        if not target.exists():
            shutil.copyfile(importlib.import_module(name.removesuffix(".py")).__file__, target)


def save_checkpoint(model, out_dir: str | os.PathLike, *, processor=None, generation_source: str | None = None) -> Path:
    """Save a self-contained checkpoint: weights, config with `auto_map`, both remote-code files, the processor and,
    from `generation_source` when it has one, the generation config."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if processor is not None:
        processor.save_pretrained(out_dir)
    if generation_source is not None:
        try:
            GenerationConfig.from_pretrained(generation_source).save_pretrained(out_dir)
        except OSError:
            logger.info("%s has no generation_config.json; keeping the one derived from the model config", generation_source)
    ensure_remote_code(out_dir)
    make_readable(out_dir)
    return out_dir
