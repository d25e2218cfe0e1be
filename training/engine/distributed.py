"""One run on many processes: DistributedDataParallel through ``torchrun``.

``torchrun --nproc_per_node N -m training imp ...`` (any run command) starts N processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment;
this module is the one place that reads them. Without them (a plain ``python -m training``), or
with ``WORLD_SIZE=1``, nothing here does anything: the run is the single-process run, bit for bit.

What N processes compute is the single-process run's training, split up:

- the global batch and the data order are the single-process run's; rank r takes its contiguous
  slice of every global batch (``training.imagenet.rank_slice``: the first ``B % N`` ranks take one
  example more; a rank's slice may be empty when a final batch is shorter than N). The augmentation
  of the whole global batch is drawn on every rank, so each example gets the crop and flip it gets
  in a single process;
- each rank's loss is its slice's summed cross-entropy times ``N / B``, so that DDP's average of
  the gradients is the gradient of the global batch's mean loss, whatever the slices' sizes;
- batch normalisation normalises with the statistics of the whole global batch (``global_batch_norm``;
  its backward passes through the same all-reduce), as in a single process;
- every rank evaluates the full test (and validation) split: evaluation is deterministic and
  identical on every rank, so early stopping decides the same everywhere; only rank 0 logs it;
- masks are made once by rank 0 (or read from its ``mask.pt``), and every level checks that every
  rank trains under the same mask and from the same weights (``check_same``: an all-gather of a
  SHA-256 of the tensors); a mismatch stops every rank with one line and exit status 1;
- only rank 0 writes files and prints; the others read what it wrote after a barrier
  (``writing()``). So the run folder (``--out``) must be on a file system every node sees.

Backends: NCCL when the run trains on GPUs (device ``cuda:LOCAL_RANK``), gloo on the CPU.

Not identical to a single process: the order of floating-point sums (so weights agree to float
tolerance, not bit for bit; the world size is part of the run's identity), and dropout, whose
random draws are per rank.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import sys
import types
from typing import Iterator, Mapping, Optional

import torch
from torch import nn

from training.errors import RunStopped, UserError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class RankMismatch(RunStopped):
    """Ranks of one distributed run disagree (masks or weights): exit status 1 on every rank."""


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None


def world_size() -> int:
    """The number of processes of this run (``WORLD_SIZE``; 1 without torchrun)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def rank() -> int:
    """This process's rank (``RANK``; 0 without torchrun)."""
    return _env_int("RANK", 0) if world_size() > 1 else 0


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``): the GPU it trains on."""
    return _env_int("LOCAL_RANK", 0) if world_size() > 1 else 0


def enabled() -> bool:
    """Whether this process is one of several of a torchrun run (``WORLD_SIZE`` > 1)."""
    return world_size() > 1


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0; always true in a single process)."""
    return rank() == 0


def active() -> bool:
    """Whether the process group is set up (``setup``): collectives run only then."""
    return enabled() and torch.distributed.is_available() and torch.distributed.is_initialized()


def device(name: str) -> Optional[torch.device]:
    """The device of this rank for ``--device name`` (auto, cpu, cuda), or None in a single process:
    ``cuda:LOCAL_RANK`` for a CUDA run, the CPU otherwise."""
    if not enabled():
        return None
    wants_cuda = name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())
    if wants_cuda and name not in ("auto", "cuda"):
        raise UserError(f"--device {name}: under torchrun every process takes the GPU of its LOCAL_RANK; "
                        "give --device cuda")
    return torch.device("cuda", local_rank()) if wants_cuda else torch.device("cpu")


def setup(device: torch.device) -> None:
    """Join the process group of torchrun's environment (once per process; nothing in a single
    process): NCCL for a CUDA ``device``, gloo for the CPU. Collective calls time out after
    ``LTH_DIST_TIMEOUT`` seconds (default 1800), so a rank that died leaves no other hanging."""
    if not enabled() or active():
        return
    if not torch.distributed.is_available():
        raise UserError("WORLD_SIZE > 1 (torchrun) but this torch build has no torch.distributed")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise UserError(f"WORLD_SIZE is {world_size()} but {', '.join(missing)} is not set; start the run with "
                        "torchrun --nproc_per_node N -m training ...")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=_env_int("LTH_DIST_TIMEOUT", 1800))
    torch.distributed.init_process_group(backend, rank=rank(), world_size=world_size(), timeout=timeout,
                                         **({"device_id": device} if device.type == "cuda" else {}))


def _collective_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if active():
        torch.distributed.barrier()


@contextlib.contextmanager
def writing() -> Iterator[bool]:
    """Around a write of rank 0 that other ranks may read or test for: every rank waits before it
    (so that no rank tests for the file while rank 0 writes it) and after it (so that every rank
    sees it). Yields whether this process writes. Every rank must enter it at the same point."""
    barrier()
    try:
        yield is_main()
    finally:
        barrier()


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over the ranks (``values`` itself in a single process)."""
    if not active():
        return values
    total = values.to(_collective_device()).clone()
    torch.distributed.all_reduce(total)
    return total.to(values.device)


def digest(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """SHA-256 of named tensors: their names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def check_same(tensors: Optional[Mapping[str, torch.Tensor]], what: str) -> None:
    """Check that ``tensors`` (a mask, a state dict) are bit-identical on every rank: an all-gather
    of their SHA-256. On a mismatch every rank raises ``RankMismatch`` naming ``what`` and the ranks
    that differ from rank 0. Nothing in a single process."""
    if not active():
        return
    mine = torch.frombuffer(bytearray(digest(tensors or {})), dtype=torch.uint8).to(torch.int64)
    mine = mine.to(_collective_device())
    every = [torch.empty_like(mine) for _ in range(world_size())]
    torch.distributed.all_gather(every, mine)
    differ = [r for r, other in enumerate(every) if not torch.equal(other, every[0])]
    if differ:
        barrier()  # every rank has seen it: they stop together
        raise RankMismatch(f"{what} differs between ranks (rank 0 and rank{'s' if len(differ) > 1 else ''} "
                           f"{', '.join(map(str, differ))}: SHA-256 checksums do not match); the processes of "
                           "one run must train the same network, so the run stopped. Check that --out is on a "
                           "file system every node sees")


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    if not active():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


# ---------------------------------------------------------------------------------------------
# Batch normalisation over the global batch


def _global_batch_norm_forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``self``'s forward with, in training, the mean and variance of the global batch (all ranks'
    slices): each rank's count, mean and sum of squared deviations (two passes, as a single
    process's kernel) are combined exactly (Chan et al.) after an autograd-aware all-reduce, so
    that the backward pass sums the statistics' gradients over the ranks too."""
    if not (self.training and active()):
        return type(self).forward(self, x)
    self._check_input_dim(x)
    from torch.distributed.nn.functional import all_reduce

    channels, dims = x.shape[1], [0] + list(range(2, x.dim()))
    shape = [1, channels] + [1] * (x.dim() - 2)
    xf = x.float()
    count = x.numel() // max(1, channels)
    if count:
        mean = xf.mean(dims)
        m2 = ((xf - mean.view(shape)) ** 2).sum(dims)
    else:  # an empty slice: it adds nothing, but takes part in the all-reduce
        mean = m2 = xf.sum(dims)
    n_local = torch.full((1,), float(count), device=x.device)
    row = torch.cat([n_local, mean * count, m2])[None]
    width, r = row.shape[1], rank()
    table = torch.cat([row.new_zeros(r, width), row, row.new_zeros(world_size() - r - 1, width)])
    table = all_reduce(table.to(_collective_device())).to(x.device)  # row q: rank q's statistics
    counts, sums, m2s = table[:, :1], table[:, 1 : 1 + channels], table[:, 1 + channels :]
    n = counts.sum()
    global_mean = sums.sum(0) / n
    means = sums / counts.clamp_min(1)
    var = (m2s.sum(0) + (counts * (means - global_mean) ** 2).sum(0)) / n
    if self.track_running_stats and self.running_mean is not None:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            unbiased = var * (n / (n - 1).clamp_min(1))
            self.running_mean.mul_(1 - factor).add_(global_mean.detach().to(self.running_mean.dtype), alpha=factor)
            self.running_var.mul_(1 - factor).add_(unbiased.detach().to(self.running_var.dtype), alpha=factor)
    y = (xf - global_mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y.to(x.dtype)


@contextlib.contextmanager
def global_batch_norm(model: nn.Module) -> Iterator[None]:
    """Inside the block, every batch-norm layer of ``model`` trains with the statistics of the
    global batch (``_global_batch_norm_forward``); nothing changes in a single process or in
    evaluation. The parameters and buffers stay the model's own (checkpoints keep their names)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if active() else []
    for m in layers:
        m.forward = types.MethodType(_global_batch_norm_forward, m)
    try:
        yield
    finally:
        for m in layers:
            del m.forward


def quiet_other_ranks() -> None:
    """On every rank but 0, send standard output to ``/dev/null`` (tables, folder names, progress
    lines): rank 0 prints for the run. Errors and warnings on standard error stay."""
    if enabled() and not is_main():
        sys.stdout = open(os.devnull, "w")
