"""lmms-eval model `pvm_qwen3_vl`: evaluate PVM (and base Qwen3-VL) checkpoints on lmms-eval's tasks.

    lmms-eval --model pvm_qwen3_vl --model_args pretrained=runs/pvm,batch_size=8 \\
        --tasks mmstar,ai2d_lite --gen_kwargs temperature=0.7 --output_path runs/lmms-eval

lmms-eval (optional, best in its own environment: see `tests/test_eval_lmms.py`) finds the model through the
project's `lmms_eval.models` entry point, `manifest`; in Python, call `register()` before `lmms_eval.evaluator`.

A "simple" lmms-eval model: each request's images go before its text (lmms-eval's `<image>` placeholders dropped, as
its own Qwen3-VL model does), and requests with the same generation settings run in batches, longest first. No
log-likelihood requests (as lmms-eval's Qwen3-VL), no videos; one process, one device. `model_args`: `pretrained`,
`device` (auto), `dtype` (auto), `batch_size` (1), `attn_implementation`, `max_new_tokens` (when a task sets none:
1024), `system_prompt`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model  # the legacy registry, kept by 0.7 beside the manifests
from tqdm.auto import tqdm

MODEL_NAME = "pvm_qwen3_vl"
_PLACEHOLDER = re.compile(r"<image(?:\s*\d+)?>")


@register_model(MODEL_NAME)
class PVMQwen3VL(lmms):
    """A Qwen3-VL or PVM checkpoint behind lmms-eval's model interface."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | str = 1,
        attn_implementation: str | None = None,
        max_new_tokens: int | str = 1024,
        system_prompt: str | None = None,
        **unexpected: Any,
    ) -> None:
        super().__init__()
        if unexpected:
            raise ValueError(
                f"pvm_qwen3_vl: unknown model_args {sorted(unexpected)}; known: pretrained, device, dtype, batch_size, "
                "attn_implementation, max_new_tokens, system_prompt."
            )
        from pvm_qwen3vl.checkpoints import load_for_inference

        self.loaded = load_for_inference(pretrained, device, dtype, attn_implementation)
        self.device, self.batch_size = self.loaded.device, int(batch_size)
        self.default_max_new_tokens, self.system_prompt = int(max_new_tokens), system_prompt

    def generate_until(self, requests: Sequence[Instance]) -> list[str]:
        from pvm_qwen3vl.evaluation.generation import encode_prompts, generate
        from pvm_qwen3vl.prompts import Prompt

        results = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        bar = tqdm(total=len(requests), desc="pvm_qwen3_vl", disable=self.rank != 0)
        for indices in groups.values():
            gen_kwargs = dict(requests[indices[0]].args[1])
            until = gen_kwargs.get("until")
            stops = [until] if isinstance(until, str) else [stop for stop in until or [] if stop]
            indices = sorted(indices, key=lambda index: -len(requests[index].args[0]))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                contexts = [requests[index].args[0] for index in chunk]
                images = [self._visuals(requests[index]) for index in chunk]
                prompts = [Prompt(_PLACEHOLDER.sub("", context).strip(), self.system_prompt) for context in contexts]
                batch = encode_prompts(self.loaded.processor, prompts, images)
                generation = generate(self.loaded, batch, **self._generation_settings(gen_kwargs))
                for index, context, text in zip(chunk, contexts, generation.texts):
                    for stop in stops:  # the text up to the first stop sequence
                        text = text.split(stop)[0]
                    results[index] = text
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                bar.update(len(chunk))
        bar.close()
        return results

    def _visuals(self, request: Instance) -> list:
        from PIL import Image

        _, _, doc_to_visual, doc_id, task, split = request.args[:6]
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        images = []
        for visual in visuals or []:
            if isinstance(visual, Image.Image):
                images.append(visual.convert("RGB"))
            elif visual is not None:
                raise NotImplementedError(
                    f"pvm_qwen3_vl reads still images; task {task!r} gave a {type(visual).__name__}."
                )
        return images

    def _generation_settings(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        sampling = gen_kwargs.get("do_sample") is not False
        top_p = gen_kwargs.get("top_p")
        return {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or self.default_max_new_tokens),
            "temperature": float(gen_kwargs.get("temperature") or 0.0) if sampling else 0.0,
            "top_p": float(top_p) if top_p else None,  # used only when sampling
        }

    def loglikelihood(self, requests):
        raise NotImplementedError("pvm_qwen3_vl answers generate_until requests only (as lmms-eval's qwen3_vl).")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("pvm_qwen3_vl does not implement multi-round generation.")


def manifest():
    """The payload of the `lmms_eval.models` entry point: model id -> this class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path="pvm_qwen3vl.evaluation.lmms_eval_adapter.PVMQwen3VL")


def register() -> None:
    """Make `pvm_qwen3_vl` resolvable by lmms-eval in this process (what the entry point does at import)."""
    import lmms_eval.models as models

    models.MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)
    if isinstance(getattr(models, "AVAILABLE_MODELS", None), dict):
        models.AVAILABLE_MODELS[MODEL_NAME] = "PVMQwen3VL"
