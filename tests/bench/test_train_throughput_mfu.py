"""The training benchmark's MFU arithmetic and its CUDA guard (bench/train_throughput.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train_throughput", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_terms_add_up(bench):
    # 4*N*T + 12*layers*d_attn*sum(L^2) + 6*N_lora*T, each term checked on its own.
    base = dict(n_params=0, n_lora_params=0, n_tokens=10, n_layers=2, attn_dim=8, sum_sq_seq_len=0)
    assert bench.lora_train_flops(**{**base, "n_params": 100}) == 4 * 100 * 10
    assert bench.lora_train_flops(**{**base, "n_lora_params": 7}) == 6 * 7 * 10
    assert bench.lora_train_flops(**{**base, "sum_sq_seq_len": 50}) == 12 * 2 * 8 * 50
    both = bench.lora_train_flops(
        **{**base, "n_params": 100, "n_lora_params": 7, "sum_sq_seq_len": 50}
    )
    assert both == 4000 + 420 + 9600


def test_qwen_05b_flops_are_dominated_by_the_frozen_base(bench):
    # Qwen2.5-0.5B: ~494M parameters, 24 layers, 14 heads x 64; rank-16 all-linear LoRA ~8.8M.
    flops = bench.lora_train_flops(
        n_params=494_032_768,
        n_lora_params=8_798_208,
        n_tokens=100_000,
        n_layers=24,
        attn_dim=896,
        sum_sq_seq_len=400 * 250**2,
    )
    dense = 4 * 494_032_768 * 100_000
    assert dense < flops < 1.2 * dense


def test_mfu_is_achieved_over_peak(bench):
    assert bench.mfu(989e12, 2.0, 989e12) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        bench.mfu(1.0, 0.0, 989e12)
    with pytest.raises(ValueError):
        bench.mfu(1.0, 1.0, 0.0)


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
        ("Tesla T4", 65e12),
        ("Some Future Accelerator", None),
    ],
)
def test_default_peak_by_gpu_name(bench, name, peak):
    assert bench.default_peak_flops(name) == peak


def test_ratio_and_median_skip_missing(bench):
    assert bench.ratio(3.0, 1.5) == 2.0
    assert bench.ratio(None, 1.0) is None
    assert bench.ratio(1.0, 0.0) is None
    assert bench.median_or_none([3.0, None, 1.0, 2.0]) == 2.0
    assert bench.median_or_none([None]) is None


def test_cuda_mode_without_cuda_fails_clearly(bench, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    # --sample: the default data lives in ../shared/ext, which a clone elsewhere may not have.
    assert bench.main(["--device", "cuda", "--shape", "qwen2.5-0.5b", "--sample"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err
    assert "Traceback" not in err
