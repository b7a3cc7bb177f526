"""Cases only a CUDA machine can check: QLoRA kernels, NCCL processes, the plan vs real memory.

Deselected by default (``-m 'not gpu'``); ``make test-gpu`` runs them with the CUDA-marked
packing tests in tests/trainer/test_batching.py. Each skips with its reason where the machine
lacks what it needs (CUDA, a second GPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.fixtures.training import adapter_tensors, sample_rows
from trainer.config import TrainConfig

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = pytest.mark.gpu


def _cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> str:
    return sample_rows(tmp_path_factory.mktemp("gpu"), 160)


def test_qlora_4bit_trains_on_cuda_with_the_gpu_kernels(rows, tmp_path):
    _cuda()
    from trainer.train import train

    cfg = TrainConfig(quantization="4bit", max_steps=8, batch_size=8, lora_r=4, lora_alpha=8,
                      learning_rate=5e-3, log_every=1)  # fmt: skip
    m = train(cfg, rows, None, str(tmp_path / "q"), log=lambda _: None)
    assert m["device"].startswith("cuda") and m["steps"] == 8
    losses = m["loss_per_step"]
    assert all(x == x for x in losses)  # no NaN
    assert min(losses[-3:]) < losses[0]  # it learns on the 4-bit base
    assert any(
        v.abs().sum() > 0 for k, v in adapter_tensors(tmp_path / "q").items() if "lora_B" in k
    )


def test_two_nccl_processes_train_the_adapter_of_one(rows, tmp_path):
    _cuda()
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    from trainer.launch import train_processes

    base = {"max_steps": 4, "grad_accum": 2, "lora_r": 4, "lora_alpha": 8, "learning_rate": 5e-3,
            "seed": 7, "precision": "fp32"}  # fmt: skip
    quiet = {"log": lambda _: None}
    train_processes(1, TrainConfig(batch_size=16, **base), rows, None, str(tmp_path / "1"), None,
                    **quiet)  # fmt: skip
    two = train_processes(2, TrainConfig(batch_size=8, **base), rows, None, str(tmp_path / "2"),
                          None, **quiet)  # fmt: skip
    assert two["processes"] == 2
    a, b = adapter_tensors(tmp_path / "1"), adapter_tensors(tmp_path / "2")
    # TF32 and NCCL reduction order: looser than gloo's 1e-4 on the CPU.
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3


@pytest.mark.parametrize("checkpointing", [False, True])
def test_plan_bounds_the_measured_cuda_peak(tmp_path, checkpointing):
    # The plan is an upper-bound style estimate: at least what torch's allocator reserved for
    # a bf16 LoRA run on a Qwen2.5-0.5B-shaped model, and not wildly above it.
    _cuda()
    import torch

    sys.path.insert(0, str(BENCH))
    from plan_accuracy import build_qwen_shaped, write_rows

    from trainer.plan import estimate, load_model_config
    from trainer.train import train

    model = build_qwen_shaped(tmp_path / "qwen")
    data = tmp_path / "rows.jsonl"
    write_rows(data, n=32, words=1024)
    cfg = TrainConfig(model=model, batch_size=8, max_seq_len=512, max_steps=2,
                      long_rows="truncate", gradient_checkpointing=checkpointing,
                      precision="bf16", log_every=1000)  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    train(cfg, str(data), None, str(tmp_path / "o"), log=lambda _: None)
    measured = torch.cuda.max_memory_reserved() / 2**30
    plan = estimate(load_model_config(model), cfg, accelerator="H100", eval_pass=False,
                    advise=False)  # fmt: skip
    # The plan adds the CUDA context, which the allocator does not see.
    assert measured <= plan.peak_gib <= 2.0 * measured + 1.0, (measured, plan.peak_gib)
