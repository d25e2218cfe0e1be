"""Huffman coding of a stream of small integer symbols (Han, Mao & Dally, "Deep Compression",
ICLR 2016, sec. 4: the quantised weight indices and the relative sparse indices of each layer).

Optimal code lengths from the classic two-smallest merge (``heapq``), canonical codes from the
lengths (so a decoder needs only the lengths, one byte per symbol of the alphabet), encoding
vectorised with numpy, decoding by the canonical first-code table, one bit at a time. No new
dependency: the streams here have at most a few hundred thousand symbols.
"""
from __future__ import annotations

import heapq

import numpy as np


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Optimal (Huffman) code lengths in bits for symbols with occurrence ``counts`` (one entry per
    symbol of the alphabet); 0 for symbols that never occur, 1 when only one symbol occurs.
    Returns an int64 array of the alphabet's length."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.int64)
    used = np.flatnonzero(counts)
    if len(used) == 0:
        return lengths
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    # nodes 0..len(used)-1 are the leaves; ties are broken by node number, so the code is deterministic
    heap = [(int(counts[s]), i) for i, s in enumerate(used)]
    heapq.heapify(heap)
    parent: list[int] = [-1] * len(used)
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        node = len(parent)
        parent.append(-1)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (w1 + w2, node))
    depth = [0] * len(parent)
    for node in range(len(parent) - 2, -1, -1):  # parents are numbered after their children
        depth[node] = depth[parent[node]] + 1
    lengths[used] = depth[: len(used)]
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical prefix code for ``lengths`` (symbols ordered by length, then by value): an
    uint64 array of codes, read from the most significant of each code's ``lengths[s]`` bits."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.uint64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (int(lengths[s]), s)):
        code <<= int(lengths[symbol]) - previous
        previous = int(lengths[symbol])
        codes[symbol] = code
        code += 1
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Huffman-code ``symbols`` with the canonical code of ``lengths``; return the bytes (the bits
    packed most significant first, the last byte padded with zeros) and the number of bits."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if len(symbols) == 0:
        return b"", 0
    lens = np.asarray(lengths, dtype=np.int64)[symbols]
    if (lens == 0).any():
        raise ValueError("a symbol without a code (length 0) is in the stream")
    codes = canonical_codes(lengths)[symbols]
    width = int(lens.max())
    j = np.arange(width, dtype=np.int64)
    shift = np.clip(lens[:, None] - 1 - j[None, :], 0, None).astype(np.uint64)
    bits = ((codes[:, None] >> shift) & np.uint64(1)).astype(np.uint8)
    bits = bits[j[None, :] < lens[:, None]]  # row-major: symbol after symbol, each code MSB first
    return np.packbits(bits).tobytes(), int(len(bits))


def decode(data: bytes, nbits: int, count: int, lengths: np.ndarray) -> np.ndarray:
    """Decode ``count`` symbols from the first ``nbits`` bits of ``data`` (written by ``encode``
    with the same ``lengths``); return them as an int64 array. ``ValueError`` for a stream that
    is not such a code."""
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.empty(count, dtype=np.int64)
    if count == 0:
        return out
    order = sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (int(lengths[s]), s))
    if not order:
        raise ValueError("no code to decode with")
    longest = int(lengths.max())
    per_length = np.bincount(lengths[order], minlength=longest + 1).tolist()
    first_code, first_index = [0] * (longest + 1), [0] * (longest + 1)
    code = index = 0
    for length in range(1, longest + 1):
        code <<= 1
        first_code[length], first_index[length] = code, index
        code += per_length[length]
        index += per_length[length]
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=nbits).tolist()
    code = length = done = 0
    for bit in bits:
        code = (code << 1) | bit
        length += 1
        offset = code - first_code[length] if length <= longest else -1
        if 0 <= offset < per_length[length]:
            out[done] = order[first_index[length] + offset]
            done += 1
            code = length = 0
            if done == count:
                break
        elif length >= longest:
            raise ValueError("invalid Huffman stream")
    if done != count:
        raise ValueError(f"Huffman stream ended after {done} of {count} symbols")
    return out
