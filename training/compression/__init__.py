"""Deep Compression of tickets (Han, Mao & Dally, "Deep Compression", ICLR 2016): pruning with the
paper's threshold rule, k-means weight sharing with fine-tuned centroids, sparse relative-index
storage with fillers, Huffman coding, the ``.lthz`` file and the paper's Table 2 accounting.

``compress(source, CompressionSettings(...))`` is the Python API; ``python -m training compress``
the command (``training.compression.command.COMPRESS``)."""
from training.compression.pipeline import CompressionSettings, Compressed, compress, format_report

__all__ = ["CompressionSettings", "Compressed", "compress", "format_report"]
