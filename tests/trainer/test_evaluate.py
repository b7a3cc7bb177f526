"""Base-vs-tuned evaluation on the tiny model with a real (perturbed or trained) LoRA adapter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trainer.config import EvalConfig
from trainer.formatting import IGNORE_INDEX, encode_row, end_token_id
from trainer.sample_data import _COUNT

REPO = Path(__file__).resolve().parents[2]
# The word-count task: the sample family a LoRA on the random tiny model learns fastest.
COUNT_INSTRUCTIONS = tuple(_COUNT)


def _sample_rows() -> list[dict]:
    lines = (REPO / "dataset" / "sample.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, 2 threads made a tiny step ~20x slower
    (3.1 s vs 0.16 s, measured) by spinning against other processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """Varied rows (different prompt and response lengths), plus one full of table breakers."""
    picked = _sample_rows()[:6]
    breaker = {
        "instruction": "Join with | pipes\nand lines",
        "input": "a | b",
        "output": "a | b\n*c*",
    }
    return [picked[0], breaker, *picked[1:]]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A LoRA adapter whose B matrices are random, so tuned really differs from base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: str, adapter_dir: str):
    from trainer.evaluate import _load

    return _load(tiny_model_dir, adapter_dir)


def _manual_loss(model, tokenizer, rows, max_seq_len: int) -> float:
    """Row by row, unpadded: summed CE over supervised positions / their count."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in rows:
            enc = encode_row(tokenizer, row, max_seq_len=max_seq_len, long_rows="truncate")
            ids = torch.tensor([enc.input_ids])
            logits = model(input_ids=ids).logits[0].float()
            for t in range(1, len(enc.labels)):
                if enc.labels[t] != IGNORE_INDEX:
                    total += F.cross_entropy(logits[t - 1], torch.tensor(enc.labels[t])).item()
                    count += 1
    return total / count


def test_eval_loss_is_token_weighted_over_supervised_tokens(loaded, rows) -> None:
    from trainer.evaluate import eval_loss

    model, tok = loaded
    expected = _manual_loss(model, tok, rows, 512)
    # Uneven batches (5, 5, 2) with right padding must not change the token-weighted mean.
    got = eval_loss(model, tok, rows, batch_size=5, max_seq_len=512)
    assert got == pytest.approx(expected, abs=1e-5)
    assert eval_loss(model, tok, rows, batch_size=1, max_seq_len=512) == pytest.approx(
        expected, abs=1e-5
    )
    # The base side (adapter disabled) is a different model, so a different loss.
    with model.disable_adapter():
        base = eval_loss(model, tok, rows, batch_size=5, max_seq_len=512)
    assert abs(base - got) > 1e-3


def test_eval_loss_restores_train_mode_and_refuses_empty_rows(loaded) -> None:
    from trainer.evaluate import eval_loss

    model, tok = loaded
    model.train()
    try:
        eval_loss(model, tok, [{"instruction": "a", "output": "b"}], batch_size=2, max_seq_len=64)
        assert model.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match="row 2: empty-after-format"):
        eval_loss(
            model,
            tok,
            [{"instruction": "a", "output": "b"}, {"instruction": "a", "output": "  "}],
            batch_size=2,
            max_seq_len=64,
        )


def test_batched_left_padded_generation_equals_one_by_one(loaded, rows) -> None:
    from trainer.evaluate import generate

    model, tok = loaded
    batched = generate(model, tok, rows, max_new_tokens=8, batch_size=4)
    single = [generate(model, tok, [r], max_new_tokens=8, batch_size=1)[0] for r in rows]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.n_tokens for g in batched] == [g.n_tokens for g in single]
    # Prompts of different lengths really share batches (so left padding is exercised).
    from trainer.formatting import render_prompt

    lengths = sorted(len(tok(render_prompt(tok, r))["input_ids"]) for r in rows)
    assert lengths[0] < lengths[3] and lengths[4] < lengths[-1]
    end_text = tok.convert_ids_to_tokens(end_token_id(tok))
    assert all(end_text not in g.text and 1 <= g.n_tokens <= 8 for g in batched)


def test_generation_stops_at_the_end_token(loaded, rows) -> None:
    """A hook forces tokens A, B, then the end token, then C: output is A B and decoding stops."""
    from trainer.evaluate import generate

    model, tok = loaded
    # Ordinary (non-special) ids: the specials are the first few ids of the tiny vocabulary.
    a, b, c = 300, 301, 302
    end = end_token_id(tok)
    calls = []

    def force(_module, _inputs, output):
        step = len(calls)
        calls.append(step)
        want = [a, b, end][step] if step < 3 else c
        output[:, -1, want] += 1e4
        return output

    head = model.get_base_model().lm_head
    handle = head.register_forward_hook(force)
    try:
        gens = generate(model, tok, rows[:3], max_new_tokens=10, batch_size=3)
    finally:
        handle.remove()
    assert len(calls) == 3, "generation should stop after the end token, not run 10 steps"
    expected = tok.decode([a, b], skip_special_tokens=True).strip()
    for g in gens:
        assert g.text == expected and g.n_tokens == 3 and g.stopped


def test_evaluate_writes_metrics_and_report(tiny_model_dir, adapter_dir, rows, tmp_path) -> None:
    from trainer.evaluate import evaluate

    data = _write_jsonl(tmp_path / "eval.jsonl", rows)
    cfg = EvalConfig(max_new_tokens=6, eval_batch_size=4, max_eval_samples=len(rows))
    out = tmp_path / "out"
    logs: list[str] = []
    result = evaluate(cfg, tiny_model_dir, adapter_dir, data, str(out), log=logs.append)

    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) == {"base", "tuned", "gate"}
    assert set(saved["base"]) == set(saved["tuned"])
    required = {"eval_loss", "perplexity", "exact_match", "rouge_l", "bleu", "n_rows"}
    required |= {"n_generated", "generated_tokens", "wall_seconds"}
    assert required <= set(saved["base"])
    assert saved["base"]["n_generated"] == saved["tuned"]["n_generated"] == len(rows)
    assert saved["base"]["eval_loss"] != saved["tuned"]["eval_loss"]
    assert saved["tuned"]["generated_tokens"] <= 6 * len(rows)
    # The gate compares eval_loss (lower is better) with the default 0.0 requirement.
    g = saved["gate"]
    assert g["improvement"] == pytest.approx(g["base"] - g["tuned"])
    assert result.passed == g["passed"] == (g["improvement"] >= 0)
    assert result.metrics["tuned"]["eval_loss"] == pytest.approx(saved["tuned"]["eval_loss"])

    report = (out / "eval_report.md").read_text()
    assert report == result.report_md
    assert "| # | prompt | reference | base output | tuned output |" in report
    table = report[report.index("| # | prompt") :].strip().splitlines()
    assert len(table) == 2 + min(len(rows), 10)
    for line in table:
        # Escaped pipes and <br> newlines keep every row at exactly 5 cells.
        assert len(re.findall(r"(?<!\\)\|", line)) == 6, line
    assert "\\|" in report and "<br>" in report
    assert "## Gate: PASSED" in report or "## Gate: FAILED" in report
    assert any("gate" in line for line in logs)


def test_evaluate_reads_and_writes_gcs(tiny_model_dir, adapter_dir, rows, gcs_bucket, tmp_path):
    """Adapter, data and output all on (emulated) GCS: downloaded, evaluated, uploaded."""
    from trainer import storage
    from trainer.evaluate import evaluate

    root = f"gs://{gcs_bucket}"
    storage.upload_dir(adapter_dir, f"{root}/adapter")
    storage.write_text(f"{root}/eval.jsonl", "".join(json.dumps(r) + "\n" for r in rows[:3]))
    cfg = EvalConfig(max_new_tokens=3, eval_batch_size=3, max_eval_samples=2)
    result = evaluate(
        cfg, tiny_model_dir, f"{root}/adapter", f"{root}/eval.jsonl", f"{root}/eval", log=print
    )
    saved = json.loads(storage.read_text(f"{root}/eval/metrics.json"))
    assert saved["tuned"]["n_generated"] == 2 and saved["base"]["n_rows"] == 3
    assert saved["gate"]["passed"] == result.passed
    assert storage.read_text(f"{root}/eval/eval_report.md") == result.report_md
    with pytest.raises(FileNotFoundError, match="adapter"):
        evaluate(cfg, tiny_model_dir, f"{root}/missing", f"{root}/eval.jsonl", f"{root}/x")


def test_evaluate_reports_bad_rows_with_file_and_line(tiny_model_dir, adapter_dir, tmp_path):
    from trainer.evaluate import evaluate

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "a"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: missing or non-string 'output'"):
        evaluate(EvalConfig(), tiny_model_dir, adapter_dir, str(bad), str(tmp_path / "o"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{not json\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: invalid JSON"):
        evaluate(EvalConfig(), tiny_model_dir, adapter_dir, str(broken), str(tmp_path / "o"))
    empty_out = tmp_path / "empty.jsonl"
    empty_out.write_text(
        '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": " "}\n'
    )
    with pytest.raises(ValueError, match=r"empty\.jsonl:2: empty-after-format"):
        evaluate(EvalConfig(), tiny_model_dir, adapter_dir, str(empty_out), str(tmp_path / "o"))
    good = _write_jsonl(tmp_path / "good.jsonl", [{"instruction": "a", "output": "b"}])
    with pytest.raises(FileNotFoundError, match=r"no adapter_config\.json"):
        evaluate(EvalConfig(), tiny_model_dir, str(tmp_path), good, str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="eval data not found"):
        evaluate(EvalConfig(), tiny_model_dir, adapter_dir, str(tmp_path / "nope.jsonl"), "o")


def test_md_cell_escapes_table_breakers() -> None:
    from trainer.evaluate import md_cell

    assert md_cell("a | b\nc") == "a \\| b<br>c"
    assert md_cell("<|im_end|>") == "&lt;\\|im\\_end\\|&gt;"
    assert md_cell("") == "&nbsp;"
    assert md_cell("a\x00b\tc") == "a\\\\x00b c"  # NUL shown as \x00 (backslash escaped)
    assert md_cell("x" * 500, limit=10) == "x" * 9 + "…"


def test_cli_exit_code_follows_the_gate(tiny_model_dir, adapter_dir, rows, tmp_path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    data = _write_jsonl(tmp_path / "eval.jsonl", rows[:4])
    common = ["evaluate", "--adapter", adapter_dir, "--data", data, "--model", tiny_model_dir]
    common += ["--max-new-tokens", "4", "--max-eval-samples", "2", "--eval-batch-size", "2"]
    runner = CliRunner()
    ok = runner.invoke(
        app, [*common, "--output", str(tmp_path / "a"), "--gate-min-improvement", "-1"]
    )
    assert ok.exit_code == 0, ok.output
    assert "gate PASSED" in ok.output and "eval_loss" in ok.output
    assert (tmp_path / "a" / "metrics.json").exists()
    # A random perturbation cannot improve exact match by 2 (the maximum is 1).
    failed = runner.invoke(
        app,
        [
            *common,
            "--output",
            str(tmp_path / "b"),
            "--gate-metric",
            "exact_match",
            "--gate-min-improvement",
            "2",
        ],
    )
    assert failed.exit_code == 1, failed.output
    assert "gate FAILED" in failed.output
    bad = runner.invoke(app, [*common, "--output", str(tmp_path / "c"), "--gate-metric", "acc"])
    assert bad.exit_code == 2
    assert "gate_metric must be" in bad.output and "Traceback" not in bad.output


def test_cli_options_cover_every_eval_config_field() -> None:
    import dataclasses

    import typer

    from pipelines import cli_eval

    app = typer.Typer()
    cli_eval.register(app)

    @app.command()
    def _other() -> None:  # a second command keeps typer from collapsing the group
        pass

    group = typer.main.get_command(app)
    cmd = group.commands["evaluate"]
    opts = {p.name: p for p in cmd.params if isinstance(p, typer.core.TyperOption)}
    for f in dataclasses.fields(EvalConfig):
        assert f.name in opts, f.name
        assert cli_eval.option_name(f.name) in opts[f.name].opts
        assert opts[f.name].default == f.default
        assert opts[f.name].help == f.metadata["help"]
    for name in ("adapter", "data", "output", "model", "system_prompt", "max_seq_len"):
        assert name in opts


@pytest.fixture(scope="module")
def count_split() -> tuple[list[dict], list[dict]]:
    rows = [r for r in _sample_rows() if r["instruction"] in COUNT_INSTRUCTIONS]
    return rows[:-24], rows[-24:]


def test_training_on_count_rows_lowers_tuned_eval_loss(
    tiny_model_dir, count_split, tmp_path
) -> None:
    """A few dozen LoRA steps on the count task: tuned beats base on held-out count rows."""
    import torch

    from trainer.config import LoraSettings
    from trainer.evaluate import evaluate
    from trainer.modeling import build_lora, load_base_model, load_tokenizer

    train_rows, eval_rows = count_split
    torch.manual_seed(0)
    tok = load_tokenizer(tiny_model_dir)
    model = build_lora(load_base_model(tiny_model_dir, precision="fp32"), LoraSettings())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    encoded = [encode_row(tok, r, max_seq_len=128) for r in train_rows]
    model.train()
    batch = 8
    for step in range(30):
        chunk = [encoded[(step * batch + i) % len(encoded)] for i in range(batch)]
        width = max(len(e.input_ids) for e in chunk)
        ids = torch.full((batch, width), tok.pad_token_id)
        labels = torch.full((batch, width), IGNORE_INDEX)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for j, e in enumerate(chunk):
            ids[j, : len(e.input_ids)] = torch.tensor(e.input_ids)
            labels[j, : len(e.labels)] = torch.tensor(e.labels)
            mask[j, : len(e.input_ids)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    adapter = tmp_path / "adapter"
    model.save_pretrained(str(adapter))

    data = _write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    cfg = EvalConfig(max_new_tokens=8, eval_batch_size=12, max_eval_samples=6)
    result = evaluate(cfg, tiny_model_dir, str(adapter), data, str(tmp_path / "out"), log=print)
    base, tuned = result.metrics["base"], result.metrics["tuned"]
    assert tuned["eval_loss"] < base["eval_loss"] - 0.3, (base, tuned)
    assert result.passed
    assert tuned["rouge_l"] >= base["rouge_l"]
