"""Sparse storage of a quantised layer and the ``.lthz`` file (Han, Mao & Dally, "Deep
Compression", ICLR 2016, sec. 2 and Table 2's accounting).

A layer's kept weights are stored in the order of its flattened tensor as pairs (relative index,
weight code). The relative index is the gap to the previous stored entry, written as gap - 1 in a
fixed number of bits (8 for convolutions, 5 for fully connected layers), so the largest gap it
can express is ``2 ** index_bits``. A longer gap gets a filler: an extra entry at the largest
expressible gap whose weight code is 0, the exact zero (every codebook keeps code 0 for it; codes
1..k are the k shared values). Both streams are then Huffman-coded.

``.lthz`` file: ``LTHZ`` and a version byte, the header length (4 bytes, little endian), the header
(JSON: model, dataset, and per tensor its shape and where its bytes are), then the bytes: per
quantised layer the float32 codebook, the Huffman code lengths of both alphabets (one byte per
symbol) and the two Huffman-coded streams; every other tensor (biases, normalisation) raw at its
own dtype.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from training.compression import huffman
from training.engine.checkpoint import atomic_write_bytes
from training.errors import UserError

MAGIC = b"LTHZ"
FILE_VERSION = 1
LTHZ_FORMAT = "lth-toolkit/lthz"


def relative_indices(keep: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored entries of a layer whose flattened mask is ``keep``: (values, fillers), where
    values are gap - 1 in [0, 2 ** index_bits) for every entry (the first gap counts from position
    -1) and ``fillers`` is True for the filler entries inserted where a gap exceeds
    ``2 ** index_bits``. A kept weight's fillers come right before it."""
    span = 1 << index_bits
    positions = np.flatnonzero(np.asarray(keep).reshape(-1))
    gaps = np.diff(positions, prepend=-1)
    fill = (gaps - 1) // span  # fillers before each kept weight
    per = fill + 1
    owner = np.repeat(np.arange(len(positions)), per)
    slot = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)
    fillers = slot < fill[owner]
    values = np.where(fillers, span - 1, gaps[owner] - fill[owner] * span - 1)
    return values.astype(np.int64), fillers


def positions_from(values: np.ndarray) -> np.ndarray:
    """The flat positions of stored entries from their relative index values (gap - 1)."""
    return np.cumsum(np.asarray(values, dtype=np.int64) + 1) - 1


@dataclass
class LayerCode:
    """One quantised layer as stored: its codebook (float32, code c >= 1 is ``codebook[c - 1]``),
    the weight codes and relative index values of its entries (fillers included), the bit widths,
    and the two Huffman codes (code lengths per symbol) with the coded streams."""

    name: str
    shape: tuple[int, ...]
    weight_bits: int
    index_bits: int
    codebook: np.ndarray
    weight_codes: np.ndarray
    index_values: np.ndarray
    fillers: int
    weight_lengths: np.ndarray
    index_lengths: np.ndarray
    weight_stream: tuple[bytes, int]
    index_stream: tuple[bytes, int]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))

    @property
    def entries(self) -> int:
        return len(self.weight_codes)

    @property
    def kept(self) -> int:
        return self.entries - self.fillers

    def decoded(self) -> torch.Tensor:
        """The layer's weights (float32, its shape): the shared values at the kept positions, zero elsewhere."""
        values = np.concatenate([[0.0], self.codebook]).astype(np.float32)[self.weight_codes]
        flat = np.zeros(self.numel, dtype=np.float32)
        flat[positions_from(self.index_values)] = values
        return torch.from_numpy(flat).reshape(self.shape)


def encode_layer(name: str, keep: torch.Tensor, codebook: torch.Tensor, assign: torch.Tensor,
                 weight_bits: int, index_bits: int) -> LayerCode:
    """Store one quantised layer: ``keep`` its mask, ``codebook`` its k <= 2 ** weight_bits - 1
    shared values, ``assign`` (the layer's shape) the index in the codebook of every kept weight."""
    flat_keep = keep.detach().cpu().reshape(-1).numpy().astype(bool)
    values, fillers = relative_indices(flat_keep, index_bits)
    codes = np.zeros(len(values), dtype=np.int64)
    codes[~fillers] = assign.detach().cpu().reshape(-1).numpy()[flat_keep].astype(np.int64) + 1
    book = codebook.detach().cpu().numpy().astype(np.float32)
    if len(book) >= 1 << weight_bits:
        raise ValueError(f"{name}: {len(book)} shared values do not fit {weight_bits} bits with the zero code")
    w_len = huffman.code_lengths(np.bincount(codes, minlength=1 << weight_bits))
    i_len = huffman.code_lengths(np.bincount(values, minlength=1 << index_bits))
    return LayerCode(name, tuple(keep.shape), weight_bits, index_bits, book, codes, values, int(fillers.sum()),
                     w_len, i_len, huffman.encode(codes, w_len), huffman.encode(values, i_len))


def layer_bits(code: LayerCode) -> dict[str, float]:
    """The bits of one layer at each stage (Han, Mao & Dally, Table 2): ``dense`` (float32),
    ``pruned`` (float32 values + fixed-width relative indices, fillers included), ``quantised``
    (fixed-width weight codes and indices + the float32 codebook) and ``huffman`` (both streams
    Huffman-coded + the codebook; the code tables are counted in the real file only); and the
    bits per stored entry of weights and indices after quantisation and after Huffman coding."""
    entries = max(code.entries, 1)
    book = 32 * len(code.codebook)
    return {
        "dense": 32.0 * code.numel,
        "pruned": float(code.entries * (32 + code.index_bits)),
        "quantised": float(code.entries * (code.weight_bits + code.index_bits) + book),
        "huffman": float(code.weight_stream[1] + code.index_stream[1] + book),
        "codebook": float(book),
        "weight_bits_huffman": code.weight_stream[1] / entries,
        "index_bits_huffman": code.index_stream[1] / entries,
    }


def _blob_add(blob: bytearray, data: bytes) -> list[int]:
    start = len(blob)
    blob += data
    return [start, len(data)]


def write_lthz(path: Path, codes: list[LayerCode], others: dict[str, torch.Tensor], header: dict) -> int:
    """Write the ``.lthz`` file (atomically) holding the quantised layers ``codes`` and the raw
    tensors ``others``; ``header`` (model, dataset, ...) goes into its JSON header. Returns the
    file's size in bytes."""
    blob = bytearray()
    tensors: list[dict[str, Any]] = []
    for code in codes:
        if int(code.weight_lengths.max(initial=0)) > 255 or int(code.index_lengths.max(initial=0)) > 255:
            raise ValueError(f"{code.name}: a Huffman code longer than 255 bits")
        tensors.append({
            "name": code.name, "kind": "shared", "shape": list(code.shape), "weight_bits": code.weight_bits,
            "index_bits": code.index_bits, "entries": code.entries, "fillers": code.fillers,
            "codebook": _blob_add(blob, code.codebook.astype("<f4").tobytes()),
            "weight_lengths": _blob_add(blob, code.weight_lengths.astype(np.uint8).tobytes()),
            "index_lengths": _blob_add(blob, code.index_lengths.astype(np.uint8).tobytes()),
            "weight_stream": _blob_add(blob, code.weight_stream[0]) + [code.weight_stream[1]],
            "index_stream": _blob_add(blob, code.index_stream[0]) + [code.index_stream[1]],
        })
    for name, tensor in others.items():
        t = tensor.detach().cpu().contiguous()
        tensors.append({"name": name, "kind": "raw", "shape": list(t.shape), "dtype": str(t.dtype).split(".")[-1],
                        "data": _blob_add(blob, t.reshape(-1).numpy().tobytes())})
    head = json.dumps({"format": LTHZ_FORMAT, "version": FILE_VERSION, **header, "tensors": tensors},
                      separators=(",", ":"), sort_keys=True).encode()
    data = MAGIC + bytes([FILE_VERSION]) + struct.pack("<I", len(head)) + head + bytes(blob)
    atomic_write_bytes(path, data)
    return len(data)


def read_lthz(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read a ``.lthz`` file: (its header, the decoded state dict, the mask of the quantised
    layers). ``UserError`` (one line) for a file that is not one, or is damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if data[:4] != MAGIC or len(data) < 9:
        raise UserError(f"{path} is not a .lthz file (no LTHZ magic)")
    if data[4] > FILE_VERSION:
        raise UserError(f"{path} is .lthz version {data[4]}; this toolkit reads up to {FILE_VERSION}")
    (size,) = struct.unpack("<I", data[5:9])
    try:
        header = json.loads(data[9 : 9 + size])
        blob = memoryview(data)[9 + size :]
        state: dict[str, torch.Tensor] = {}
        mask: dict[str, torch.Tensor] = {}
        part = lambda entry: bytes(blob[entry[0] : entry[0] + entry[1]])  # noqa: E731
        for t in header["tensors"]:
            shape = tuple(t["shape"])
            if t["kind"] == "raw":
                array = np.frombuffer(part(t["data"]), dtype=np.dtype(t["dtype"])).copy()
                state[t["name"]] = torch.from_numpy(array).reshape(shape)
                continue
            w_len = np.frombuffer(part(t["weight_lengths"]), dtype=np.uint8).astype(np.int64)
            i_len = np.frombuffer(part(t["index_lengths"]), dtype=np.uint8).astype(np.int64)
            codes = huffman.decode(part(t["weight_stream"]), t["weight_stream"][2], t["entries"], w_len)
            values = huffman.decode(part(t["index_stream"]), t["index_stream"][2], t["entries"], i_len)
            book = np.frombuffer(part(t["codebook"]), dtype="<f4")
            flat = np.zeros(int(np.prod(shape)), dtype=np.float32)
            keep = np.zeros(len(flat), dtype=bool)
            where = positions_from(values)
            flat[where] = np.concatenate([[0.0], book]).astype(np.float32)[codes]
            keep[where[codes > 0]] = True
            state[t["name"]] = torch.from_numpy(flat).reshape(shape)
            mask[t["name"]] = torch.from_numpy(keep).reshape(shape)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise UserError(f"{path} is damaged and cannot be decoded ({type(exc).__name__}: {exc})") from None
    return header, state, mask


def other_tensors(state: dict[str, torch.Tensor], quantised: set[str]) -> dict[str, torch.Tensor]:
    """The entries of ``state`` stored raw (everything but the quantised layers: biases,
    normalisation, buffers), in state-dict order."""
    return {k: v for k, v in state.items() if k not in quantised}


def tensor_bits(tensors: dict[str, torch.Tensor]) -> int:
    """Bits to store ``tensors`` raw, each at its own dtype (float32 for biases)."""
    return sum(int(t.numel()) * t.element_size() * 8 for t in tensors.values())


def dense_bits(state: dict[str, torch.Tensor], float_bits: Optional[int] = 32) -> int:
    """Bits of the whole state dict stored densely, floating tensors at ``float_bits`` each."""
    return sum(int(t.numel()) * (float_bits if t.is_floating_point() else t.element_size() * 8)
               for t in state.values())
