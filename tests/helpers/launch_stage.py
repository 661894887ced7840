"""A training stage as `accelerate launch` runs it, plus two test hooks set by environment variables (the command line
belongs to the stage's parser):

- `PVM_TEST_FIXED_ROLLOUTS=1` (GRPO): the model still generates (under ZeRO-3 with its parameters gathered), but the
  completions that are scored and trained on are replaced by fixed token sequences, a function of the prompt and of
  the completion's index in its group only. One process and several then train on the same rollouts, whatever the
  sampling RNG of each process.
- `PVM_TEST_GENERATION_DUMP=PATH` (GRPO): at the first generation, inside the trainer's own generation context, also
  generate greedily with and without the cache and save the prompts and both outputs to PATH.rank{N}.pt.

- `PVM_TEST_MEMORY_LOG=PATH`: each rank writes PATH.rank{N}.json: its resident memory (RSS) before the model loads,
  after it loads, at the start of training and after each optimizer step, its peak RSS, and the memory plan's
  per-GPU figures for this run (`pvm_qwen3vl.training.memory`, with this launch's process count), to check the
  formula against what the processes hold.

    accelerate launch --config_file training/accelerate/deepspeed_zero3.yaml tests/helpers/launch_stage.py grpo ...

(It lives in its own folder: run as a script, its folder comes first on sys.path, and `tests/` holds a `vllm`
package of test doubles that would hide the real one.)
"""

from __future__ import annotations

import os
import sys
import zlib

import torch

FIRST_TOKEN, LAST_TOKEN = 300, 1100  # ordinary tokens of the tiny tokenizer (its special tokens start at 1200)


def fixed_completion(prompt_ids: list[int], index: int) -> list[int]:
    """4 + 3 * index tokens drawn from a generator seeded by the prompt and the index (no EOS: the lengths, and so the
    shaping reward, differ within a group)."""
    seed = zlib.crc32(bytes(str(list(prompt_ids)), "ascii")) * 31 + index
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_TOKEN, LAST_TOKEN, (4 + 3 * index,), generator=generator).tolist()


def install_fixed_rollouts() -> None:
    from trl import GRPOTrainer

    generate = GRPOTrainer._generate_single_turn

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs):
        _, logprobs = generate(self, prompt_ids, images, multimodal_fields, num_generations, *args, **kwargs)
        start = self.accelerator.process_index * len(prompt_ids)
        completions = [fixed_completion(ids, (start + i) % num_generations) for i, ids in enumerate(prompt_ids)]
        return completions, logprobs

    GRPOTrainer._generate_single_turn = _generate_single_turn


def install_generation_dump(path: str) -> None:
    from modeling_pvm_qwen3vl import PVMQwen3VLForConditionalGeneration

    generate = PVMQwen3VLForConditionalGeneration.generate
    done = []

    def dumping_generate(self, *args, **kwargs):
        if not done:
            done.append(True)
            inputs = {key: value for key, value in kwargs.items() if isinstance(value, torch.Tensor)}
            greedy = {"max_new_tokens": 8, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            cached = generate(self, **inputs, **greedy, use_cache=True)
            uncached = generate(self, **inputs, **greedy, use_cache=False)
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            torch.save({"inputs": inputs, "cached": cached, "uncached": uncached}, f"{path}.rank{rank}.pt")
        return generate(self, *args, **kwargs)

    PVMQwen3VLForConditionalGeneration.generate = dumping_generate


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def install_memory_log(path: str) -> None:
    import json

    from transformers import TrainerCallback

    import pvm_qwen3vl.training.runner as runner
    from pvm_qwen3vl.training.memory import plan_memory, shapes_of, workload_of

    record = {"rss": {}}
    prepare = runner.prepare

    def measured_prepare(stage, script_args, training_args, model_args, pvm_args):
        record["rss"]["before_load"] = rss_bytes()
        prepared = prepare(stage, script_args, training_args, model_args, pvm_args)
        record["rss"]["loaded"] = rss_bytes()
        shapes = shapes_of(prepared.model)
        work = workload_of(stage, prepared.mode, shapes, training_args, model_args)
        engine = os.environ.get("PVM_TEST_ENGINE", "ddp")
        plan = plan_memory(shapes, work, training_args.world_size, configs=[engine])[0]
        record.update(engine=engine, shapes=shapes.__dict__, workload=work.__dict__, plan=plan.to_dict())
        record["plan_bytes"] = {
            key: getattr(plan, key) for key in ("parameters", "gradients", "optimizer", "activations")
        }
        return prepared

    class MemoryLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            record["rss"]["train_begin"] = rss_bytes()

        def on_step_end(self, args, state, control, **kwargs):
            record["rss"][f"step_{state.global_step}"] = rss_bytes()

        def on_train_end(self, args, state, control, **kwargs):
            record["rss"]["peak"] = peak_rss_bytes()
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            with open(f"{path}.rank{rank}.json", "w", encoding="utf-8") as file:
                json.dump(record, file, indent=1, default=str)

    timer = runner.StepTimerCallback

    class TimerWithMemoryLog(timer):  # the runner adds its step timer to every run: ride along
        def __init__(self):
            super().__init__()
            self.memory = MemoryLog()

        def on_train_begin(self, *args, **kwargs):
            self.memory.on_train_begin(*args, **kwargs)

        def on_step_end(self, *args, **kwargs):
            super().on_step_end(*args, **kwargs)
            self.memory.on_step_end(*args, **kwargs)

        def on_train_end(self, *args, **kwargs):
            self.memory.on_train_end(*args, **kwargs)

    runner.prepare = measured_prepare
    runner.StepTimerCallback = TimerWithMemoryLog


def main() -> int:
    stage, argv = sys.argv[1], sys.argv[2:]
    if os.environ.get("PVM_TEST_FIXED_ROLLOUTS") == "1":
        install_fixed_rollouts()
    if os.environ.get("PVM_TEST_GENERATION_DUMP"):
        install_generation_dump(os.environ["PVM_TEST_GENERATION_DUMP"])
    if os.environ.get("PVM_TEST_MEMORY_LOG"):
        install_memory_log(os.environ["PVM_TEST_MEMORY_LOG"])
    from pvm_qwen3vl.training import grpo, sft
    from pvm_qwen3vl.training.runner import cli

    return cli(stage, (sft if stage == "sft" else grpo).main, argv)


if __name__ == "__main__":
    sys.exit(main())
