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


def test_frozen_linear_costs_a_forward_and_an_activation_gradient_gemm(bench):
    # Two layers of one shape and a head: each linear gives [M,in]x[in,out] and [M,out]x[out,in].
    shapes = bench.linear_gemm_shapes([(4, 8), (4, 8), (8, 100)], m_tokens=16)
    assert shapes == {(16, 4, 8): 2, (16, 8, 4): 2, (16, 8, 100): 1, (16, 100, 8): 1}
    flops = sum(count * 2 * m * k * n for (m, k, n), count in shapes.items())
    # The same FLOPs as the 4*N*T term of lora_train_flops for these weights.
    n_params = 4 * 8 * 2 + 8 * 100
    assert flops == 4 * n_params * 16


def test_gemm_mix_throughput_weights_shapes_by_their_time(bench):
    # A fast small GEMM must not hide a slow large one: total FLOPs over total time.
    fast = (10, 10, 10, 1, 2 * 1000 / 100e9)  # 100 GFLOP/s
    slow = (100, 100, 100, 3, 2 * 1e6 / 10e9)  # 10 GFLOP/s, three times
    mix = bench.weighted_gemm_flops([fast, slow])
    expected = (2e3 + 3 * 2e6) / (fast[4] + 3 * slow[4])
    assert mix == pytest.approx(expected)
    assert 10e9 < mix < 11e9
    with pytest.raises(ValueError):
        bench.weighted_gemm_flops([])
    with pytest.raises(ValueError):
        bench.weighted_gemm_flops([(1, 1, 1, 1, 0.0)])
