"""The lmms-eval adapter (`pvm_qwen3_vl`): registration, a `generate_until` request, and a local lmms-eval task.

lmms-eval is an optional dependency, so these tests are skipped where it is not installed. It is not installed in
this project's development environment on purpose: lmms-eval 0.7 pins `latex2sympy2`, which forces
antlr4-python3-runtime 4.7.2 and breaks math-verify 0.9 (training rewards and `eval bench` scoring), and it expects
a filelock older than the one the project's stack installs. Run these tests in a separate environment that adds
lmms-eval on top of the project (they were run that way when the adapter was written).
"""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import random_image

pytest.importorskip(
    "lmms_eval",
    reason="lmms-eval is not installed (optional; it conflicts with math-verify 0.9 here: see this module's docstring)",
)

from lmms_eval.api.instance import Instance  # noqa: E402

from pvm_qwen3vl.convert import convert  # noqa: E402
from pvm_qwen3vl.evaluation.generation import encode_prompts, generate  # noqa: E402
from pvm_qwen3vl.evaluation.lmms_eval_adapter import MODEL_NAME, PVMQwen3VL, register  # noqa: E402
from pvm_qwen3vl.options import PVMArguments  # noqa: E402


@pytest.fixture(scope="module")
def pvm_dir(tiny_base, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tiny-pvm-lmms")
    convert(tiny_base, out, PVMArguments(pvm_gate_init=0.5))
    return str(out)


def test_adapter_registers_and_answers_generate_until(pvm_dir):
    from lmms_eval import models

    register()
    assert models.get_model(MODEL_NAME) is PVMQwen3VL
    model = PVMQwen3VL.create_from_arg_string(f"pretrained={pvm_dir},device=cpu", {"batch_size": 2})
    docs = [
        {"question": f"<image> How many shapes? ({index})", "image": random_image(64, 64, index)} for index in range(3)
    ]
    model.task_dict = {"toy": {"test": docs}}
    gen_kwargs = {"max_new_tokens": 5, "temperature": 0, "do_sample": False, "until": ["\n\n"]}
    requests = [
        Instance(
            request_type="generate_until",
            arguments=(doc["question"], gen_kwargs, lambda doc: [doc["image"]], index, "toy", "test"),
            idx=0,
            metadata={"task": "toy", "doc_id": index, "repeats": 1},
        )
        for index, doc in enumerate(docs)
    ]
    answers = model.generate_until(requests)
    assert len(answers) == 3 and all(isinstance(answer, str) for answer in answers)
    # the same greedy answer as the package's own generation on the same prompt
    batch = encode_prompts(model.loaded.processor, ["How many shapes? (1)"], [[docs[1]["image"]]])
    assert answers[1] == generate(model.loaded, batch, max_new_tokens=5).texts[0].split("\n\n")[0]
    with pytest.raises(NotImplementedError):
        model.loglikelihood(requests)


def test_local_task_runs_through_lmms_eval(pvm_dir, tmp_path):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    register()
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for index in range(3):
        random_image(64, 64, index).save(data / f"{index}.png")
        rows.append({"image": f"{index}.png", "question": "Which letter? A or B", "answer": "A"})
    (data / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "pvm_toy_utils.py").write_text(
        textwrap.dedent(
            f"""
            from PIL import Image

            def doc_to_visual(doc):
                return [Image.open({str(data)!r} + "/" + doc["image"]).convert("RGB")]

            def doc_to_text(doc):
                return "<image>\\n" + doc["question"]

            def process_results(doc, results):
                return {{"accuracy": float(results[0].strip() == doc["answer"])}}
            """
        )
    )
    (tasks / "pvm_toy_task.yaml").write_text(
        textwrap.dedent(
            f"""
            task: pvm_toy_task
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {data / "test.jsonl"}
            test_split: test
            output_type: generate_until
            doc_to_visual: !function pvm_toy_utils.doc_to_visual
            doc_to_text: !function pvm_toy_utils.doc_to_text
            doc_to_target: answer
            generation_kwargs:
              max_new_tokens: 4
              temperature: 0
              do_sample: false
            process_results: !function pvm_toy_utils.process_results
            metric_list:
              - metric: accuracy
                aggregation: mean
                higher_is_better: true
            metadata:
              version: 0.0
            """
        )
    )
    results = simple_evaluate(
        model=MODEL_NAME,
        model_args=f"pretrained={pvm_dir},device=cpu",
        tasks=["pvm_toy_task"],
        task_manager=TaskManager("WARNING", include_path=str(tasks)),
        batch_size=2,
        limit=3,
    )
    task_results = results["results"]["pvm_toy_task"]
    accuracy = next(value for key, value in task_results.items() if key.startswith("accuracy"))
    assert 0.0 <= accuracy <= 1.0
