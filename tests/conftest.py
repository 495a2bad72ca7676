"""Fixtures shared by the test files."""

import importlib.util
import os
import sys
import zipfile

import pytest
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_benchmark(name):
    """benchmarks/<name>.py as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def flip_deflate_bytes(path, member="observations.npy"):
    """Flip the first bytes of one member's compressed data in the `.npz` at `path`: reading that member raises
    zlib.error (issue 23, item 1: a traceback before)."""
    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo(member).header_offset
    data = bytearray(path.read_bytes())
    name_length = int.from_bytes(data[offset + 26 : offset + 28], "little")  # the local header's own lengths
    extra_length = int.from_bytes(data[offset + 28 : offset + 30], "little")
    start = offset + 30 + name_length + extra_length
    for i in range(start, start + 6):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def corrupt_deflate_stream():
    """`flip_deflate_bytes`: a learning history whose compressed stream is corrupted, as a test makes one."""
    return flip_deflate_bytes


@pytest.fixture
def attention_dropouts(monkeypatch):
    """The `dropout_p` of every scaled_dot_product_attention call from here on, in order (a list the test reads):
    what `--attn-dropout` and `--dropout` hand PyTorch's attention."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs["dropout_p"])
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen
