"""Deep Compression (Han, Mao & Dally, ICLR 2016): Huffman coding, relative indices with fillers,
k-means weight sharing, the centroid gradient (eq. 3), the .lthz file, the Table 2 accounting and
the command's one-line errors."""
import heapq
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from training.compression import CompressionSettings, compress, huffman, storage
from training.compression.quantise import SharedWeights, kmeans_linear, quantise_layer, threshold_mask


def reference_total_bits(counts):
    """Total Huffman length by the textbook construction: the sum of all merged weights."""
    heap = [c for c in counts if c > 0]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged
        heapq.heappush(heap, merged)
    return total


@given(st.lists(st.integers(0, 40), min_size=1, max_size=400), st.integers(0, 3))
def test_huffman_is_optimal_and_decodes_exactly(stream, skew):
    symbols = np.array(stream, dtype=np.int64) >> skew  # shifts make some streams very skewed
    counts = np.bincount(symbols, minlength=64)
    lengths = huffman.code_lengths(counts)
    assert int((lengths * counts).sum()) == reference_total_bits(counts.tolist())
    data, nbits = huffman.encode(symbols, lengths)
    assert nbits == int((lengths * counts).sum()) and len(data) == -(-nbits // 8)
    assert np.array_equal(huffman.decode(data, nbits, len(symbols), lengths), symbols)
    codes = huffman.canonical_codes(lengths)
    used = np.flatnonzero(lengths)
    words = {format(int(codes[s]), f"0{lengths[s]}b") for s in used}
    assert not any(a != b and b.startswith(a) for a in words for b in words)  # a prefix code


def test_filler_zero_for_a_gap_larger_than_the_index_range():
    keep = np.zeros(60, dtype=bool)
    keep[[0, 8, 17, 57]] = True  # gaps 1, 8 (fits 3 bits: at most 8), 9 (one filler), 40 (four fillers)
    values, fillers = storage.relative_indices(keep, index_bits=3)
    assert fillers.tolist() == [False, False, True, False, True, True, True, True, False]
    assert values.tolist() == [0, 7, 7, 0, 7, 7, 7, 7, 7]
    assert storage.positions_from(values).tolist() == [0, 8, 16, 17, 25, 33, 41, 49, 57]
    assert int(fillers.sum()) == 5


def test_kmeans_starts_linear_over_min_max():
    values = np.array([-1.0, -0.9, 0.0, 0.1, 1.0, 0.95])
    centroids, assign = kmeans_linear(values, 3)  # linear start: -1, 0, 1
    assert assign.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.allclose(centroids, [-0.95, 0.05, 0.975])
    # a start that is not linear over [min, max] (e.g. density-based, clustered near 0) would split the
    # two middle values; linear initialisation keeps a centroid for each of the three groups
    centroids, assign = kmeans_linear(np.array([0.0, 0.0, 0.0, 0.0, 5.0]), 2)
    assert assign.tolist() == [0, 0, 0, 0, 1] and centroids.tolist() == [0.0, 5.0]


def test_centroid_gradient_is_the_sum_of_the_shared_weights_gradients():
    torch.manual_seed(0)
    layer = nn.Linear(12, 5)
    keep = torch.rand(5, 12) > 0.3
    book, assign = quantise_layer(layer.weight, keep, bits=2)
    form = SharedWeights(book, assign, keep)
    x, y = torch.randn(7, 12), torch.randint(0, 5, (7,))
    weight = form(layer.weight)
    nn.functional.cross_entropy(nn.functional.linear(x, weight, layer.bias), y).backward()
    # the same network with a plain weight tensor: autograd gives every weight its own gradient
    plain = form.decoded().clone().requires_grad_(True)
    nn.functional.cross_entropy(nn.functional.linear(x, plain, layer.bias), y).backward()
    expected = torch.zeros(len(book)).index_add_(0, assign[keep], plain.grad[keep])
    assert torch.allclose(form.codebook.grad, expected, atol=1e-7)
    assert form.codebook.grad.abs().sum() > 0


def test_paper_threshold_rule_keeps_weights_above_quality_times_std():
    w = torch.tensor([[0.1, -2.0, 0.5, 3.0]])
    mask = threshold_mask({"w": w}, {"w": torch.ones(1, 4, dtype=torch.bool)}, 0.5)
    std = float(w.double().std())
    assert mask["w"].tolist() == [[abs(v) > 0.5 * std for v in w[0].tolist()]] == [[False, True, False, True]]


def test_accounting_on_a_layer_like_the_papers_ip1():
    """Table 2, ip1: 235K weights, 8 % kept, 6-bit weights, 5-bit indices -> 3.1 % of float32."""
    rng = np.random.default_rng(0)
    shape, n = (300, 784), 300 * 784
    keep = torch.from_numpy(rng.random(n) < 0.08).reshape(shape)
    kept = int(keep.sum())
    book = torch.linspace(-0.1, 0.1, 63)  # 6 bits: 63 shared values and the zero code
    assign = torch.from_numpy(rng.integers(0, 63, n)).reshape(shape)
    code = storage.encode_layer("ip1", keep, book, assign, weight_bits=6, index_bits=5)
    gaps = np.diff(np.flatnonzero(keep.reshape(-1).numpy()), prepend=-1)
    fillers = int(((gaps - 1) // 32).sum())  # a gap of more than 2^5 = 32 needs fillers
    assert code.fillers == fillers and code.kept == kept
    bits = storage.layer_bits(code)
    bits_only = kept * (6 + 5) / (32 * n)
    assert abs(bits_only - 0.0275) < 0.0005  # 8 % x 11 / 32 = 2.75 %
    by_hand = ((kept + fillers) * (6 + 5) + 63 * 32) / (32 * n)
    assert bits["quantised"] / bits["dense"] == pytest.approx(by_hand)
    assert 0.029 < by_hand < 0.032  # the paper: 3.1 %
    assert bits["pruned"] == (kept + fillers) * (32 + 5)


@pytest.fixture(scope="module")
def compressed(runs, tmp_path_factory):
    _, _, imp = runs
    out = tmp_path_factory.mktemp("compressed")
    return compress(imp.dir, CompressionSettings(centroid_epochs=1, fc_bits=4), out=out, progress=False)


def test_lthz_decodes_bit_exact_and_its_size_is_reported(compressed):
    report = compressed.report
    path = compressed.dir / "model.lthz"
    assert report["file"]["bytes"] == os.path.getsize(path)
    header, state, mask = storage.read_lthz(path)
    quantised = torch.load(compressed.dir / "quantised.pt", weights_only=True)
    assert state.keys() == quantised["state_dict"].keys()
    for name, value in quantised["state_dict"].items():
        assert torch.equal(value.view(torch.int32), state[name].view(torch.int32)), name
    for name, keep in quantised["mask"].items():
        assert torch.equal(keep, mask[name])
        assert len(torch.unique(value := quantised["state_dict"][name][keep])) <= 15  # 4 bits: 15 shared values
    total = report["layers"][-1]
    assert total["layer"] == "total" and report["stages"][-1]["bits"] == pytest.approx(total["bits_huffman"])
    assert report["stages"][-1]["bytes"] < report["stages"][2]["bytes"] < report["stages"][0]["bytes"]
    frame = pd.read_csv(compressed.dir / "compression.csv")
    assert list(frame.layer)[-1] == "total" and (frame.rate_huffman <= frame.rate_quantised).all()
    assert len(pd.read_csv(compressed.dir / "stages.csv")) == 4
    assert json.loads((compressed.dir / "compression.json").read_text())["decoded_bit_exact"] is True


def test_quantised_checkpoint_loads_in_analysis(compressed):
    from analysis.hessian.spectrum import Settings, analyze
    from training.engine.checkpoint import load, read_checkpoint

    ckpt = read_checkpoint(compressed.dir / "quantised.pt")
    assert ckpt["meta"]["kind"] == "quantised" and ckpt["mask"] is not None
    loaded = load(compressed.dir / "quantised.pt")
    assert torch.equal(loaded.model.state_dict()["1.weight"], ckpt["state_dict"]["1.weight"])
    result = analyze(compressed.dir / "quantised.pt", Settings(top_k=1, trace=False, density=False, samples=100),
                     progress=False)
    assert result["weight_density"] == pytest.approx(ckpt["meta"]["density"]) and result["top_eigenvalues"]


def test_second_call_reads_the_finished_folder(compressed, runs):
    before = (compressed.dir / "model.lthz").stat().st_mtime_ns
    again = compress(runs[2].dir, CompressionSettings(centroid_epochs=1, fc_bits=4), out=compressed.dir.parent,
                     progress=False)
    assert again.dir == compressed.dir and (compressed.dir / "model.lthz").stat().st_mtime_ns == before


def test_dense_checkpoint_pruned_by_the_papers_rule(runs, tmp_path):
    logistic = runs[0]
    result = compress(logistic.dir, CompressionSettings(prune_quality=0.5, retrain=1, centroid_epochs=0),
                      out=tmp_path, progress=False)
    pruned = torch.load(result.dir / "pruned.pt", weights_only=True)
    assert 0 < pruned["meta"]["density"] < 1
    assert result.report["stages"][1]["rate"] < 1


def run_cli(argv, capsys):
    from training.__main__ import main

    status = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return status, err


@pytest.mark.parametrize("extra, message", [
    (["--fc-bits", "0"], "--fc-bits must be a whole number of bits from 1 to 16, got 0"),
    (["--conv-index-bits", "17"], "--conv-index-bits must be a whole number of bits from 1 to 16"),
    (["--layer-bits", "nothing.*=4"], "pattern 'nothing.*' matches no prunable layer"),
    (["--layer-bits", "1.*=20"], "bits for '1.*' must be a whole number of bits from 1 to 16"),
    (["--level", "7"], "--level 7 is not a finished level"),
    (["--out", "/proc/nope/x"], "--out /proc/nope/x cannot be created"),
    (["--prune-quality", "-1"], "--prune-quality must be a positive number"),
])
def test_bad_input_is_one_line(extra, message, runs, capsys, tmp_path):
    argv = ["compress", str(runs[2].dir), "--out", str(tmp_path / "out"), *extra]
    if "--out" in extra:
        argv = ["compress", str(runs[2].dir), *extra]
    status, err = run_cli(argv, capsys)
    assert status == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_dense_checkpoint_without_a_rule_and_bad_paths(runs, capsys, tmp_path):
    for argv, message in [
        ([str(runs[0].dir)], "is dense (no weight pruned) and no pruning rule was given"),
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(runs[2].dir / "level_1" / "final.pt"), "--level", "1"], "--level picks a level of a run folder"),
    ]:
        status, err = run_cli(["compress", *argv, "--out", str(tmp_path / "out")], capsys)
        assert status == 2 and len(err) == 1 and message in err[0], err


def test_the_bit_exact_check_raises_on_a_difference_even_under_python_O():
    """A real check, not an assert: one flipped bit in a decoded tensor is an error naming it."""
    from training.compression.pipeline import CompressionBug, check_bit_exact

    state = {"w": torch.tensor([0.5, -0.25, 0.0])}
    mask = {"w": torch.tensor([True, True, False])}
    assert check_bit_exact(state, mask, {"w": state["w"].clone()}, {"w": mask["w"].clone()}) is True
    flipped = state["w"].clone().view(torch.int32)
    flipped[0] ^= 1  # the last mantissa bit
    with pytest.raises(CompressionBug, match="w decoded"):
        check_bit_exact(state, mask, {"w": flipped.view(torch.float32)}, mask)
    with pytest.raises(CompressionBug, match="mask"):
        check_bit_exact(state, mask, state, {"w": torch.tensor([True, False, False])})
