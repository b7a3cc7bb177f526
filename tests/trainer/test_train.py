"""The training loop: outputs, determinism, loss normalisation, eval loss, the schedule."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from trainer.config import TrainConfig
from trainer.train import accumulate_gradients, lr_lambda, train

SAMPLE = Path(__file__).resolve().parents[2] / "dataset" / "sample.jsonl"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    lines = SAMPLE.read_text().splitlines()
    (d / "train.jsonl").write_text("\n".join(lines[:160]) + "\n")
    (d / "eval.jsonl").write_text("\n".join(lines[-40:]) + "\n")
    return str(d / "train.jsonl"), str(d / "eval.jsonl")


def small_cfg(**kw) -> TrainConfig:
    base = {
        "max_steps": 6,
        "batch_size": 8,
        "lora_r": 4,
        "lora_alpha": 8,
        "learning_rate": 5e-3,
        "log_every": 2,
        "seed": 7,
    }
    return TrainConfig(**{**base, **kw})


def _adapter(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "adapter_model.safetensors"))


def test_train_writes_every_output(small_data, tmp_path):
    lines: list[str] = []
    out = tmp_path / "out"
    m = train(small_cfg(merge=True), small_data[0], small_data[1], str(out), log=lines.append)
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer_config.json",
        "train_metrics.json",
        "loss_curve.png",
        "train_config.json",
        "merged/config.json",
    ):
        assert (out / name).exists(), name
    saved = json.loads((out / "train_metrics.json").read_text())
    assert saved["steps"] == m["steps"] == 6
    assert len(saved["loss_per_step"]) == 6
    assert saved["supervised_tokens"] > 0 and saved["tokens"] > saved["supervised_tokens"]
    assert 0 <= saved["padding_fraction"] < 0.2
    assert saved["tokens_per_s"] > 0 and saved["supervised_tokens_per_s"] > 0
    assert saved["eval_loss"] == pytest.approx(m["eval_loss"]) and m["eval_loss"] > 0
    assert saved["resumed_from"] is None and saved["batching"] == "group"
    assert saved["loss_per_step"][-1] < saved["loss_per_step"][0]  # it learns
    eff = json.loads((out / "train_config.json").read_text())
    assert eff["lora_r"] == 4 and eff["resolved"]["total_steps"] == 6
    assert sum("step " in x and " loss " in x for x in lines) == 3  # log_every=2
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_same_seed_same_adapter_other_seed_differs(small_data, tmp_path):
    import torch

    a = train(small_cfg(max_steps=3), small_data[0], None, str(tmp_path / "a"), log=lambda _: None)
    b = train(small_cfg(max_steps=3), small_data[0], None, str(tmp_path / "b"), log=lambda _: None)
    c = train(
        small_cfg(max_steps=3, seed=8), small_data[0], None, str(tmp_path / "c"), log=lambda _: None
    )
    wa, wb, wc = (_adapter(tmp_path / x) for x in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["loss_per_step"] == b["loss_per_step"]
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert c["loss_per_step"] != a["loss_per_step"]


def test_micro_batch_pieces_train_the_unsplit_adapter_with_less_padding(small_data, tmp_path):
    # Pieces of <= 64 padded tokens (several per micro-batch of 8 rows) accumulate into the
    # step of the whole micro-batch: the same adapter and losses, with less padding.
    quiet = {"log": lambda _: None}
    whole = train(small_cfg(micro_batch_tokens=-1), small_data[0], None, str(tmp_path / "w"),
                  **quiet)  # fmt: skip
    lines: list[str] = []
    split = train(small_cfg(micro_batch_tokens=64), small_data[0], None, str(tmp_path / "s"),
                  log=lines.append)  # fmt: skip
    assert any("pieces of <= 64 padded tokens" in x for x in lines)
    a, b = _adapter(tmp_path / "w"), _adapter(tmp_path / "s")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert split["loss_per_step"] == pytest.approx(whole["loss_per_step"], abs=1e-5)
    assert split["supervised_tokens"] == whole["supervised_tokens"]
    assert split["tokens"] == whole["tokens"] and split["epochs"] == whole["epochs"]
    assert split["padding_fraction"] < whole["padding_fraction"]


def test_packing_trains_on_the_same_examples(small_data, tmp_path):
    g = train(small_cfg(max_steps=2), small_data[0], None, str(tmp_path / "g"), log=lambda _: None)
    p = train(
        small_cfg(max_steps=2, batching="pack"),
        small_data[0],
        None,
        str(tmp_path / "p"),
        log=lambda _: None,
    )
    assert p["batching"] == "pack"
    assert p["padding_fraction"] < 0.05
    # Same examples per step in both modes; the first step's loss (same init) is comparable.
    assert abs(p["loss_per_step"][0] - g["loss_per_step"][0]) < 0.5


def test_grad_accumulation_normalises_by_all_supervised_tokens(tiny_model_dir, tiny_tokenizer):
    """Micro-batches with 1 and many supervised tokens give the gradient of one big batch."""
    import torch
    from accelerate import Accelerator

    from trainer.batching import collate_padded
    from trainer.config import LoraSettings
    from trainer.formatting import encode_row
    from trainer.modeling import build_lora, load_base_model
    from trainer.train import _loss_module_cls

    rows = [
        {"instruction": "Count.", "input": "a b", "output": "2"},
        {"instruction": "Repeat.", "input": "x", "output": "kiwi boat teacher story result " * 3},
        {"instruction": "Say it.", "output": "late"},
    ]
    ex = [
        {"input_ids": e.input_ids, "labels": e.labels}
        for e in (encode_row(tiny_tokenizer, r) for r in rows)
    ]
    torch.manual_seed(0)
    model = build_lora(load_base_model(tiny_model_dir, precision="fp32"), LoraSettings(lora_r=4))
    with torch.no_grad():  # non-zero lora_B so every LoRA weight gets a gradient
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    loss_model = _loss_module_cls()(model)
    acc = Accelerator(cpu=True)
    params = [p for p in model.parameters() if p.requires_grad]

    micro = [collate_padded(ex[:1], 0), collate_padded(ex[1:], 0)]
    assert micro[0].n_supervised < micro[1].n_supervised / 5
    step_loss, n = accumulate_gradients(loss_model, micro, acc)
    got = [p.grad.clone() for p in params]
    model.zero_grad()

    whole = collate_padded(ex, 0)
    loss, n_whole = loss_model(whole.labels, **whole.inputs)
    (loss / n_whole).backward()
    want = [p.grad.clone() for p in params]
    model.zero_grad()

    assert int(n) == int(n_whole)
    assert float(step_loss) == pytest.approx(loss.item(), rel=1e-5)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-6)
    # The usual mean of per-micro-batch means would weight the 1-token batch far too much.
    naive = [collate_padded(ex[:1], 0), collate_padded(ex[1:], 0)]
    for b in naive:
        ls, nb = loss_model(b.labels, **b.inputs)
        (ls / nb / 2).backward()
    worst = max(((p.grad - w).norm() / w.norm()).item() for p, w in zip(params, want, strict=True))
    assert worst > 0.1


def test_lr_schedule_warms_up_then_decays():
    f = [lr_lambda(s, total=10, warmup=2, schedule="linear") for s in range(10)]
    assert f[0] == 0.5 and f[1] == 1.0 and f[-1] == pytest.approx(0.125)
    assert all(a >= b for a, b in itertools.pairwise(f[1:]))  # non-increasing after warm-up
    c = [lr_lambda(s, total=10, warmup=0, schedule="cosine") for s in range(11)]
    assert c[0] == 1.0 and c[10] == pytest.approx(0.0) and c[5] == pytest.approx(0.5)
    assert lr_lambda(7, total=10, warmup=2, schedule="constant") == 1.0


def test_empty_data_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"instruction": "x", "output": "  "}) + "\n")
    with pytest.raises(ValueError, match="no trainable rows"):
        train(small_cfg(), str(p), None, str(tmp_path / "o"), log=lambda _: None)


def test_gcs_output_is_uploaded(small_data, tmp_path, gcs_bucket):
    from trainer import storage

    uri = f"gs://{gcs_bucket}/runs/a"
    train(small_cfg(max_steps=2), small_data[0], None, uri, log=lambda _: None)
    names = {f.rsplit("/", 1)[-1] for f in storage.list_files(uri + "/")}
    assert {"adapter_model.safetensors", "train_metrics.json", "loss_curve.png"} <= names
