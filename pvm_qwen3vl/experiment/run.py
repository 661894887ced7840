"""`pvm-qwen3vl experiment`: every arm on the stress task, for several seeds, in parallel worker processes.

    pvm-qwen3vl experiment --out evaluation/results/pvm-miniature-$(date +%F)   # the committed run (< 30 min, 2 cores)
    pvm-qwen3vl experiment --recipe my.yaml --seeds 0 1 --workers 1 --out runs/exp

A recipe (YAML, `pvm_qwen3vl/experiment/recipes/`) sets the data, the arms and the optimisation; any recipe field can
be overridden on the command line. A job is one seed of one arm (with the arms that continue it, e.g. `pvm_grpo` after
`pvm`): it builds the items (deterministic, from their own seed streams), trains, scores every evaluation item and
measures the mechanism on a subset, and writes `OUT/jobs/<arm>-seed<seed>.json` (every item's result, the training
log). Jobs run in `--workers` processes of one torch thread each (the tiny model's matrices are too small to split
across threads), so the same seed gives the same numbers whatever the machine's thread settings. Finished jobs are
kept, so an interrupted run resumes. Then `OUT/results.json`, `OUT/results.md` and the figures are written
(`report.py`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = RECIPES / "experiment.yaml"


@dataclass
class ExperimentRecipe:
    """What one experiment runs. Every field has a command-line flag of the same name."""

    base: str = field(default="embedded:tiny-pretrained", metadata={"help": "the plain Qwen3-VL base every arm starts from"})
    arms: list[str] = field(
        default_factory=lambda: ["base", "control", "pvm", "pvm_llm", "mlp", "hidden_states", "pvm_grpo"],
        metadata={"help": "arms to run (base, control, pvm, pvm_llm, mlp, hidden_states, pvm_grpo)"},
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "training seeds (PVM init, batch order)"})
    data_seed: int = field(default=0, metadata={"help": "seed of the training and evaluation items' streams"})
    n_train: int = field(default=4000, metadata={"help": "training items"})
    train_depth: int = field(default=128, metadata={"help": "training probes' target depths: 0..train_depth tokens (+ up to a sentence)"})
    train_text_share: float = field(default=0.5, metadata={"help": "share of text probes among the training items"})
    eval_per_bin: int = field(default=100, metadata={"help": "evaluation items per depth bin (image probes)"})
    text_eval_per_bin: int = field(default=40, metadata={"help": "text-probe evaluation items per depth bin"})
    eval_bins: list[int] = field(
        default_factory=lambda: [0, 32, 64, 128, 256, 512], metadata={"help": "edges of the evaluation depth bins"}
    )
    mechanism_per_bin: int = field(default=16, metadata={"help": "items per bin on which attention is measured"})
    eval_split: str = field(
        default="eval", metadata={"help": "split scored: eval (the results), or dev (for choosing settings)", "choices": ["eval", "dev"]}
    )
    pvm_layers: list[int] | None = field(default=None, metadata={"help": "decoder layers of the PVM branches (default: the preset)"})
    steps: int = field(default=300, metadata={"help": "SFT steps (every SFT arm)"})
    batch_size: int = field(default=16, metadata={"help": "SFT batch size"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "linear warmup share of the steps"})
    control_learning_rate: float = field(default=3e-3, metadata={"help": "peak LR of the language model when it trains (control, pvm_llm)"})
    pvm_learning_rate: float = field(default=1e-2, metadata={"help": "peak LR of a PVM branch (pvm, pvm_llm, mlp, hidden_states)"})
    grpo_steps: int = field(default=100, metadata={"help": "GRPO steps (pvm_grpo)"})
    grpo_learning_rate: float = field(default=1e-4, metadata={"help": "GRPO LR (constant, no warmup, as the paper)"})
    grpo_group_size: int = field(default=8, metadata={"help": "completions sampled per probe"})
    grpo_temperature: float = field(default=1.0, metadata={"help": "sampling temperature of GRPO"})

    def __post_init__(self):
        if self.eval_split not in ("eval", "dev"):
            raise ValueError(f"eval_split must be 'eval' or 'dev', got {self.eval_split!r}")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        self.bins  # noqa: B018  (checks the edges)

    @property
    def bins(self) -> list[tuple[int, int]]:
        edges = list(self.eval_bins)
        if len(edges) < 2 or edges != sorted(set(edges)):
            raise ValueError(f"eval_bins must be increasing edges such as 0 32 64 128 256 512, got {edges}")
        return list(zip(edges[:-1], edges[1:]))


@dataclass
class RunArguments:
    """Where and how an experiment runs."""

    out: str = field(default="runs/experiment", metadata={"help": "output folder (resumes the finished jobs in it)"})
    recipe: str = field(default=str(DEFAULT_RECIPE), metadata={"help": "YAML recipe (see pvm_qwen3vl/experiment/recipes)"})
    workers: int = field(default=2, metadata={"help": "parallel worker processes, one torch thread each"})
    name: str | None = field(default=None, metadata={"help": "name in the results (default: the output folder's name)"})


def load_recipe(path: str | Path, **overrides) -> ExperimentRecipe:
    """A recipe from YAML, with `overrides` (field -> value) on top; unknown keys are refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path}: no such file (the shipped ones are in {RECIPES}).")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    known = {item.name for item in fields(ExperimentRecipe)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown recipe key(s) {unknown}; the keys are {sorted(known)}.")
    values.update({key: value for key, value in overrides.items() if value is not None})
    return ExperimentRecipe(**values)


# ----------------------------------------------------------------------------------------------------------------------
# One job: one seed of one arm (and the arms that continue it)
# ----------------------------------------------------------------------------------------------------------------------


def resolve_base(name: str) -> str:
    from pvm_qwen3vl.checkpoints import resolve_model_path
    from pvm_qwen3vl.experiment.pretrained import PRETRAINED_ALIAS, pretrained_base

    return str(pretrained_base()) if name == PRETRAINED_ALIAS else resolve_model_path(name)


class Workbench:
    """The processor, tokens, pixel cache and items of one process, built once from the recipe."""

    def __init__(self, recipe: ExperimentRecipe):
        from pvm_qwen3vl.checkpoints import load_processor
        from pvm_qwen3vl.experiment import task

        self.base = resolve_base(recipe.base)
        self.processor = processor = load_processor(self.base)
        self.tokens, self.pixels = task.Tokens(processor), task.PixelCache(processor)
        depths, bins = task.DepthRange(0, recipe.train_depth), recipe.bins
        self.train = task.generate("train", recipe.n_train, recipe.data_seed, depths, self.tokens, text_share=recipe.train_text_share)
        # Image probes (the measure) and text probes (a check that reading the monologue still works), each from its
        # own stream of the eval split. Eval items cycle through the bins, so the first ones cover every bin equally.
        split = recipe.eval_split
        self.eval = task.generate(split, recipe.eval_per_bin * len(bins), recipe.data_seed, bins, self.tokens)
        self.text_eval = task.generate(
            split, recipe.text_eval_per_bin * len(bins), recipe.data_seed, bins, self.tokens, text_share=1.0, stream=1
        )
        self.mechanism = self.eval[: recipe.mechanism_per_bin * len(bins)]


_BENCH: dict[str, Workbench] = {}


def run_job(recipe: ExperimentRecipe, chain: list[str], seed: int, out: str, save_arms: tuple[str, ...] = ()) -> list[dict]:
    """Train, score and measure the arms of `chain` in order (each continuing the previous one's model) at `seed` on
    one torch thread; write and return one record per arm, and save the models of `save_arms`."""
    import torch
    from transformers.utils import logging as transformers_logging

    threads, verbosity = torch.get_num_threads(), transformers_logging.get_verbosity()
    torch.set_num_threads(1)
    transformers_logging.set_verbosity_error()  # loading reports and progress bars, once per arm: noise here
    transformers_logging.disable_progress_bar()
    try:
        return _run_chain(recipe, chain, seed, Path(out), save_arms)
    finally:
        torch.set_num_threads(threads)
        transformers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()


def _run_chain(recipe: ExperimentRecipe, chain: list[str], seed: int, out: Path, save_arms) -> list[dict]:
    from pvm_qwen3vl.checkpoints import save_checkpoint
    from pvm_qwen3vl.experiment import measure
    from pvm_qwen3vl.experiment.arms import ARMS, load_arm_model, trainable_groups
    from pvm_qwen3vl.experiment.train import Schedule, pvm_gates, train_grpo, train_sft

    key = json.dumps(asdict(recipe), sort_keys=True)
    if key not in _BENCH:  # a worker process builds the items once and reuses them for its later jobs
        _BENCH[key] = Workbench(recipe)
    bench = _BENCH[key]
    records, model = [], None
    for name in chain:
        arm = ARMS[name]
        start = time.perf_counter()
        model = load_arm_model(arm, bench.base, seed, recipe.pvm_layers) if arm.starts_from is None else model
        log = None
        if arm.stage == "sft":
            schedule = Schedule(recipe.steps, recipe.batch_size, recipe.pvm_learning_rate, recipe.warmup_ratio)
            # The language model always trains at the control's learning rate, a PVM branch at the branch's.
            lr = {"llm": recipe.control_learning_rate, "pvm": recipe.pvm_learning_rate}
            groups = [{"params": params, "lr": lr[group]} for group, params in trainable_groups(model, arm.trainable).items()]
            log = train_sft(model, groups, bench.train, bench.tokens, bench.pixels, schedule, seed)
        elif arm.stage == "grpo":
            # the paper's stage 2: a constant learning rate, no warmup
            schedule = Schedule(recipe.grpo_steps, recipe.batch_size, recipe.grpo_learning_rate, 0.0, constant=True)
            parameters = [p for params in trainable_groups(model, arm.trainable).values() for p in params]
            log = train_grpo(
                model, parameters, bench.train, bench.tokens, bench.pixels, schedule, seed,
                group_size=recipe.grpo_group_size, temperature=recipe.grpo_temperature,
            )  # fmt: skip
        trained = time.perf_counter()
        record = {
            "arm": name,
            "seed": seed,
            "records": measure.score_probes(model, bench.eval, bench.tokens, bench.pixels),
            "text_records": measure.score_probes(model, bench.text_eval, bench.tokens, bench.pixels),
            "mechanism": measure.mechanism(model, bench.mechanism, bench.tokens, bench.pixels, recipe.bins),
            "gates": {str(layer): round(value, 6) for layer, value in pvm_gates(model).items()},
            "log": log.to_json() if log else None,
            "train_seconds": round(trained - start, 1),
            "eval_seconds": round(time.perf_counter() - trained, 1),
        }
        if name in save_arms:
            save_checkpoint(model, out / "models" / f"{name}-seed{seed}", processor=bench.processor)
        path = out / "jobs" / f"{name}-seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record) + "\n", encoding="utf-8")
        records.append(record)
    return records


# ----------------------------------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------------------------------


def plan_jobs(recipe: ExperimentRecipe) -> list[tuple[list[str], int]]:
    """(chain of arms, seed) per job, the longest first. The base does not depend on the seed: it runs once."""
    from pvm_qwen3vl.experiment.arms import resolve_arms

    arms = resolve_arms(list(recipe.arms))
    roots = [arm.name for arm in arms if arm.starts_from is None]
    chains = {root: [root] + [arm.name for arm in arms if arm.starts_from == root] for root in roots}
    jobs = [(chains[root], seed) for seed in recipe.seeds for root in roots if root != "base"]
    jobs.sort(key=lambda job: -len(job[0]))
    if "base" in roots:
        jobs.append((["base"], recipe.seeds[0]))
    return jobs


def _done(out: Path, chain: list[str], seed: int) -> list[dict] | None:
    paths = [out / "jobs" / f"{name}-seed{seed}.json" for name in chain]
    if all(path.is_file() for path in paths):
        return [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    return None


def experiment(
    recipe: ExperimentRecipe, out: str | Path, workers: int = 2, name: str | None = None,
    save_arms: list[str] | tuple[str, ...] = (), fresh: bool = False,
) -> dict:  # fmt: skip
    """Run (or resume) every job, then write results.json, results.md and the figures under `out`. `save_arms`: arms
    whose trained models are saved under `out/models/<arm>-seed<seed>`. `fresh`: discard the finished jobs of an
    earlier run of this recipe in `out` instead of resuming them."""
    import shutil

    from tqdm.auto import tqdm

    from pvm_qwen3vl.experiment import report

    out = Path(out)
    settings = out / "recipe.json"
    if fresh and settings.is_file():
        for folder in ("jobs", "models"):
            shutil.rmtree(out / folder, ignore_errors=True)
        settings.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if settings.is_file() and json.loads(settings.read_text()) != asdict(recipe):
        raise ValueError(f"{out} holds runs of another recipe ({settings}); use another --out or delete that folder.")
    settings.write_text(json.dumps(asdict(recipe), indent=2) + "\n", encoding="utf-8")
    load_start = [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    jobs = plan_jobs(recipe)
    results: list[dict] = []
    pending = []
    for chain, seed in jobs:
        finished = _done(out, chain, seed)
        if finished is None:
            pending.append((chain, seed))
        else:
            results += finished
    with tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc="experiment jobs", unit="job") as bar:
        if workers <= 1:
            for chain, seed in pending:
                results += run_job(recipe, chain, seed, str(out), tuple(save_arms))
                bar.update()
        else:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {
                    pool.submit(run_job, recipe, chain, seed, str(out), tuple(save_arms)): (chain, seed)
                    for chain, seed in pending
                }
                for future in as_completed(futures):
                    results += future.result()
                    chain, seed = futures[future]
                    bar.set_postfix_str(f"{'+'.join(chain)} seed {seed}")
                    bar.update()
    runs: dict[str, dict[int, dict]] = {}
    for record in results:
        runs.setdefault(record["arm"], {})[record["seed"]] = record
    ordered = {arm: runs[arm] for arm in recipe.arms if arm in runs}
    summary = report.aggregate(ordered, list(recipe.seeds), recipe.bins)
    results_json = {
        "name": name or out.name,
        "paper": "arXiv 2605.00814",
        **summary,
        "bins": [list(pair) for pair in recipe.bins],
        "seeds": list(recipe.seeds),
        "recipe": asdict(recipe),
        "items": {"train": recipe.n_train, "eval_per_bin": recipe.eval_per_bin, "text_eval_per_bin": recipe.text_eval_per_bin,
                  "mechanism_per_bin": recipe.mechanism_per_bin},  # fmt: skip
        "workers": workers,
        "load_average_start": load_start,
        # the time of the jobs run by this call; jobs resumed from an earlier call are counted apart
        "wall_seconds": round(time.perf_counter() - start, 1),
        "jobs_run": len(pending),
        "jobs_resumed": len(jobs) - len(pending),
        "machine": report.machine(),
    }
    report.write(out, results_json, ordered, recipe.train_depth)
    return results_json


def register(commands) -> None:
    """The `experiment` command."""

    def run(args) -> int:
        from pvm_qwen3vl.options import from_namespace

        run_args = from_namespace(RunArguments, args)
        overrides = {item.name: getattr(args, item.name) for item in fields(ExperimentRecipe)}
        recipe = load_recipe(run_args.recipe, **overrides)  # unset flags are None: load_recipe keeps the recipe's value
        results = experiment(recipe, run_args.out, workers=run_args.workers, name=run_args.name)
        print((Path(run_args.out) / "results.md").read_text(encoding="utf-8"))
        longest = results.get("pvm_minus_control_longest")
        if longest and longest["mean"] is not None:
            print(f"PVM - control, longest bin: {longest['mean']:+.3f} [{longest['ci_low']:+.3f}, {longest['ci_high']:+.3f}]")
        print(f"results: {Path(run_args.out).resolve() / 'results.json'}")
        return 0

    parser = commands.add_parser(
        "experiment",
        help="the miniature replication: PVM against its control arms on the stress task (CPU, offline)",
        description=__doc__.split("\n\n")[0],
    )
    for item in fields(RunArguments):
        parser.add_argument(f"--{item.name}", default=item.default, type=type(item.default) if item.default is not None else str,
                            help=item.metadata["help"])  # fmt: skip
    for item in fields(ExperimentRecipe):  # recipe overrides: unset ones keep the recipe's value
        kind = {"arms": str, "seeds": int, "eval_bins": int, "pvm_layers": int}.get(item.name)
        if kind is not None:
            parser.add_argument(f"--{item.name}", nargs="+", type=kind, default=None, help=item.metadata["help"])
        else:
            parser.add_argument(f"--{item.name}", type=type(item.default), default=None, help=item.metadata["help"])
    parser.set_defaults(func=run)
