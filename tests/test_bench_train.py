"""benchmarks/bench_train.py: the eager step and, with --compile (or --bf16, --fused-attention), the compiled (or
bfloat16 autocast, or no attention-weight dropout) step timed in one run, their ratio printed (a speed claim is a
ratio against a baseline measured in the same run)."""

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_train")


def tiny(bench, **flags):
    """The smallest model; `flags` picks the comparisons (compile, bf16, fused_attention)."""
    return bench.Args(context=8, batch_size=2, n_layer=1, n_head=2, n_embd=16, d_ff=32, iterations=2, **flags)


def test_eager_prints_throughput_and_mfu(bench, capsys, monkeypatch):
    monkeypatch.setattr(bench, "matmul_peak", lambda: 1e9)  # the 2 s peak measurement is not under test
    mfu = bench.main(tiny(bench, compile=False))
    printed = capsys.readouterr().out
    assert mfu > 0
    assert "tokens/s" in printed
    assert "compiled" not in printed


@pytest.mark.slow
def test_compile_prints_the_ratio_against_eager(bench, capsys, monkeypatch):
    monkeypatch.setattr(bench, "matmul_peak", lambda: 1e9)
    bench.main(tiny(bench, compile=True))
    printed = capsys.readouterr().out
    assert "compiled / eager:" in printed
    ratio = float(printed.split("compiled / eager:")[1].split("x")[0])
    assert ratio > 0


def test_bf16_prints_the_ratio_against_float32(bench, capsys, monkeypatch):
    monkeypatch.setattr(bench, "matmul_peak", lambda: 1e9)
    bench.main(tiny(bench, compile=False, bf16=True))
    printed = capsys.readouterr().out
    ratio = float(printed.split("bf16 / float32:")[1].split("x")[0])
    assert ratio > 0


def test_fused_attention_prints_the_ratio_and_drops_no_attention_weights(
    bench, capsys, monkeypatch, attention_dropouts
):
    monkeypatch.setattr(bench, "matmul_peak", lambda: 1e9)
    seen = attention_dropouts
    bench.main(tiny(bench, compile=False, fused_attention=True))
    printed = capsys.readouterr().out
    ratio = float(printed.split("fused / unfused:")[1].split("x")[0])
    assert ratio > 0
    assert set(seen) == {0.1, 0.0}  # the baseline drops attention weights as ad_train's default does; then none
    assert seen[-1] == 0.0
