"""Exact Hessian-vector products by Pearlmutter's R-operator, with each batch's primal pass cached.

For the mean cross-entropy of a network built from convolutions, linear layers, batch norm in
evaluation mode and piecewise-linear or linear glue (ReLU, max and average pooling, flatten,
padding, slicing, residual additions), ``H v`` needs the activations, the backpropagated
gradients at each layer's output and the ReLU/max-pool patterns of the point, which do not
depend on ``v``. They are computed once per batch (one forward and one backward pass, by
autograd) and kept; each product is then one tangent forward pass (``dz = W dx + dW x``) and one
tangent backward pass (``dg_x = W^T dg_z + dW^T g_z``, ``dg_W = dg_z x^T + g_z dx^T``). On small
batches the k probe vectors are folded into the batch dimension, so that every layer does a few
large matrix products instead of k small ones; on large ones each probe has its own pass, where
a convolution's two input-gradient terms are one transposed product of ``[dg_z, g_z]`` with
``[W; dW]``. Second derivatives of ReLU and max pooling are zero almost everywhere, so the only
second-order terms are the bilinear ones of each parametrised layer and the softmax Hessian of
the loss: the result is the exact Hessian, equal to double backward.

``RopEngine.check(model)`` says why a model is not supported (anything else in its graph,
grouped convolutions, batch norm in training mode); ``HessianOperator`` then falls back to
autograd's double backward.
"""
from __future__ import annotations

import operator
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

Batch = tuple[torch.Tensor, torch.Tensor]

_CONV = (nn.Conv1d, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_PARAM = _CONV + (nn.Linear,) + _BN
_IDENTITY = (nn.Dropout, nn.Identity)
_LINEAR_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d)
_LINEAR_FUNCTIONS = {torch.flatten, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.avg_pool1d,
                     F.avg_pool2d, F.pad, operator.getitem}
_LINEAR_METHODS = {"flatten"}
_RELU_FUNCTIONS = {F.relu, torch.relu}
_ADD = {operator.add, torch.add}
# On CPU, the probes of a call share passes over chunks of fewer examples than this (folded into
# the batch axis); larger chunks take one probe per pass, whose products are large already and
# have a faster path through convolutions' input gradients. Measured on the MNIST-1D CNN with 8
# probes: folding was 1.6x faster at 96 examples, even at 192 and 1.2x slower at 500.
_FOLD_EXAMPLES = 256


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> Optional[str]:
    if node.op in ("placeholder", "output"):
        return node.op
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, _CONV):
            ok = m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)
            return "conv" if ok else None
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, _BN):
            return "bn" if not m.training and m.track_running_stats else None
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            return "maxpool" if not m.return_indices and m.dilation in (1, (1, 1)) else None
        if isinstance(m, _IDENTITY):
            return "identity" if not m.training or isinstance(m, nn.Identity) else None
        if isinstance(m, nn.Flatten):
            return "linear_op" if m.start_dim >= 1 else None
        if isinstance(m, _LINEAR_MODULES):
            return "linear_op"
        return None
    if node.op == "call_function":
        if node.target in _RELU_FUNCTIONS and not node.kwargs.get("inplace", False):
            return "relu"
        if node.target in _ADD and "alpha" not in node.kwargs:
            return "add"
        if node.target is F.pad:
            ok = node.kwargs.get("mode", "constant") == "constant" and not node.kwargs.get("value")
            return "linear_op" if ok and len(node.args) <= 2 else None
        if node.target is operator.getitem:  # slices that keep the whole batch axis
            index = node.args[1]
            items = index if isinstance(index, tuple) else (index,)
            ok = all(isinstance(i, slice) or i is Ellipsis for i in items)
            return "linear_op" if ok and items[0] in (slice(None), Ellipsis) else None
        if node.target is torch.flatten:
            return "linear_op" if _start_dim(node) >= 1 else None
        return "linear_op" if node.target in _LINEAR_FUNCTIONS else None
    if node.op == "call_method":
        if node.target == "relu":
            return "relu"
        if node.target == "flatten":
            return "linear_op" if _start_dim(node) >= 1 else None
        return None
    return None


def _start_dim(node: fx.Node) -> int:
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)


def _accumulate(result: list, i: int, value) -> None:
    """Add ``value`` into slot i (a module called twice shares its parameters)."""
    if isinstance(value, torch.Tensor):
        result[i] = value if result[i] is None else result[i] + value


def _fold(t: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k*C, ...) -> (k*B, C, ...): probes from the channel axis into the batch axis."""
    b, kc = t.shape[:2]
    return t.reshape(b, k, kc // k, *t.shape[2:]).transpose(0, 1).reshape(k * b, kc // k, *t.shape[2:])


def _unfold(t: torch.Tensor, k: int) -> torch.Tensor:
    """(k*B, C, ...) -> (B, k*C, ...), the inverse of ``_fold``."""
    kb, c = t.shape[:2]
    return t.reshape(k, kb // k, c, *t.shape[2:]).transpose(0, 1).reshape(kb // k, k * c, *t.shape[2:])


def _per_probe(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``a @ w[i]`` for each i: a shared (B, ..., n) tensor against k matrices (k, n, m), giving
    (k, B, ..., m). A linear layer's input may have any number of leading axes."""
    return torch.matmul(a.unsqueeze(0), w.view(w.shape[0], *(1,) * (a.dim() - 2), *w.shape[1:]))


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """A (B, C, L) tensor stored channels-fastest, as the (B, C, 1, L) channels-last tensor it
    views. CPU backends take 1-D convolutions in that layout without a reorder; on the MNIST-1D
    CNN they ran 1.1x faster overall. (2-D convolutions are left alone: channels-last made LeNet-5
    and ResNet-20 slower.) Element-wise operations keep the layout, so tangents stay in it."""
    return t.unsqueeze(2).contiguous(memory_format=torch.channels_last).squeeze(2) if t.dim() == 3 else t


def _conv(m: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``m``'s convolution of ``x`` with another weight and bias. A Conv1d runs as a 2-D one of
    unit height on channels-last input: torch would make a 3-D input contiguous."""
    if isinstance(m, nn.Conv1d):
        x = _channels_last(x) if x.is_cpu else x  # a no-op for tangents already in that layout
        return F.conv2d(x.unsqueeze(2), weight.unsqueeze(2), bias, (1, *m.stride), (0, *m.padding),
                        (1, *m.dilation)).squeeze(2)
    return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation)


def _conv_backward(m: nn.Module, grads: Sequence[torch.Tensor], x: torch.Tensor, weight: torch.Tensor,
                   want_input: bool) -> torch.Tensor:
    """The gradient of ``_conv(m, x, weight)`` whose output gradient is ``grads`` concatenated
    along channels: with respect to the input if ``want_input`` (``x`` gives only its shape),
    else to the weight."""
    one_d = isinstance(m, nn.Conv1d)
    if one_d and x.is_cpu:
        grads, x = [_channels_last(g) for g in grads], _channels_last(x)
    if one_d:
        grads, x, weight = [g.unsqueeze(2) for g in grads], x.unsqueeze(2), weight.unsqueeze(2)
        geometry = [1, *m.stride], [0, *m.padding], [1, *m.dilation]
    else:
        geometry = list(m.stride), list(m.padding), list(m.dilation)
    grad = torch.cat(list(grads), 1) if len(grads) > 1 else grads[0]  # 4-D, so cat keeps channels-last
    outputs = torch.ops.aten.convolution_backward(grad, x, weight, None, *geometry, False, [0, 0], 1,
                                                  (want_input, not want_input, False))
    result = outputs[0] if want_input else outputs[1]
    return result.squeeze(2) if one_d else result


class RopEngine:
    """Batched exact Hessian-vector products for ``model`` (see the module docstring).

    ``names`` are the parameters that make up the vector space, in order; other parameters are
    constants. ``weights[i]`` multiplies batch i's summed loss (1/N gives the mean over all data).
    Primal passes are cached while their total size stays under ``cache_bytes``. Once every
    batch is cached, batches of equal weight are merged into chunks whose largest activation
    takes at most ``chunk_bytes`` per probe: in evaluation mode examples do not interact, so this
    is exact, and fewer, larger matrix products run faster.
    """

    @staticmethod
    def check(model: nn.Module) -> Optional[str]:
        """None if the model is supported, else the reason it is not."""
        try:
            graph = fx.symbolic_trace(model).graph
        except Exception as e:  # noqa: BLE001 - any tracing failure means "not supported"
            return f"the model cannot be traced by torch.fx ({type(e).__name__})"
        modules = dict(model.named_modules())
        for node in graph.nodes:
            if _kind(node, modules) is None:
                return f"unsupported operation {node.op} {node.target}"
            if node.op == "call_function" and node.target in _ADD and not any(isinstance(a, fx.Node) for a in node.args):
                return "an addition of constants"
        if sum(n.op == "placeholder" for n in graph.nodes) != 1:
            return "the model takes more than one input"
        return None

    def __init__(self, model: nn.Module, names: Sequence[str], batches: Sequence[Batch],
                 weights: Sequence[float], cache_bytes: int = 1 << 30, chunk_bytes: int = 1 << 27):
        reason = self.check(model)
        if reason is not None:
            raise ValueError(f"R-operator engine: {reason}")
        self.model = model
        self.modules = dict(model.named_modules())
        self.graph = fx.symbolic_trace(model).graph
        self.nodes = list(self.graph.nodes)
        self.kinds = {n: _kind(n, self.modules) for n in self.nodes}
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.batches, self.weights = list(batches), list(weights)
        self.cache_bytes = cache_bytes
        self.chunk_bytes = chunk_bytes
        self._cache: list[Optional[dict]] = [None] * len(self.batches)
        self._merged = False
        self._cached_bytes = 0
        self.output = next(n for n in self.nodes if n.op == "output").args[0]
        # nodes whose value depends on a parameter of the space: only these carry tangents
        self._param_of: dict[fx.Node, dict[str, str]] = {}
        live: set[fx.Node] = set()
        for node in self.nodes:
            if self.kinds[node] in ("conv", "linear", "bn"):
                owned = {local: f"{node.target}.{local}" for local in ("weight", "bias")}
                owned = {k: v for k, v in owned.items() if v in self.index}
                self._param_of[node] = owned
                if owned:
                    live.add(node)
            if any(isinstance(a, fx.Node) and a in live for a in node.all_input_nodes):
                live.add(node)
        self.live = live

    # primal pass -----------------------------------------------------------------------
    def _primal(self, i: int) -> dict:
        cached = self._cache[i]
        if cached is not None:
            return cached
        x, y = self.batches[i]
        values: dict[fx.Node, torch.Tensor] = {}
        saved: dict = {}
        with torch.enable_grad():
            for node in self.nodes:
                kind = self.kinds[node]
                if kind == "placeholder":
                    values[node] = x
                    continue
                if kind == "output":
                    break
                args = fx.node.map_arg(node.args, lambda n: values[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
                if kind in ("conv", "linear", "bn"):
                    m = self.modules[node.target]
                    inp = args[0]
                    out = m(inp)
                    if kind == "bn":
                        scale = torch.rsqrt(m.running_var + m.eps)
                        shape = (1, -1) + (1,) * (inp.dim() - 2)
                        saved[node] = {"xhat": ((inp - m.running_mean.view(shape)) * scale.view(shape)).detach(),
                                       "scale": scale.view(shape).detach()}
                    else:
                        saved[node] = {"x": inp.detach()}
                elif kind == "relu":
                    out = F.relu(args[0])
                    saved[node] = {"mask": (out > 0).to(out.dtype)}  # a float mask multiplies 5x faster than a bool one
                elif kind == "maxpool":
                    m = self.modules[node.target]
                    pool = F.max_pool1d if isinstance(m, nn.MaxPool1d) else F.max_pool2d
                    out, idx = pool(args[0], m.kernel_size, m.stride, m.padding, m.dilation,
                                    ceil_mode=m.ceil_mode, return_indices=True)
                    saved[node] = {"idx": idx.flatten(2), "in_shape": args[0].shape[1:]}
                elif kind == "identity":
                    out = args[0]
                elif node.op == "call_module":
                    out = self.modules[node.target](*args, **kwargs)
                elif node.op == "call_method":
                    out = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:
                    out = node.target(*args, **kwargs)
                values[node] = out
            logits = values[self.output]
            loss = F.cross_entropy(logits, y, reduction="sum")
            wanted = [n for n in self._param_of if n in self.live and values[n].requires_grad]
            grads = torch.autograd.grad(loss, [values[n] for n in wanted], allow_unused=True)
        for n, g in zip(wanted, grads):
            saved[n]["g"] = g
        probs = torch.softmax(logits.detach(), dim=1)
        record = {"saved": saved, "probs": probs, "shapes": {n: v.shape for n, v in values.items()},
                  "batch": len(y)}
        size = sum(t.numel() * t.element_size() for d in saved.values() for t in d.values()
                   if isinstance(t, torch.Tensor)) + probs.numel() * probs.element_size()
        if self._cached_bytes + size <= self.cache_bytes:
            self._layout(saved)
            self._cache[i] = record
            self._cached_bytes += size
        return record

    def _merge(self) -> None:
        """Concatenate cached batches into chunks (see the class docstring); once."""
        self._merged = True
        records = [self._primal(i) for i in range(len(self.batches))]
        if any(r is None for r in self._cache) or len(set(self.weights)) != 1 or len(records) < 2:
            return
        first = records[0]
        per_example = max(shape[1:].numel() for shape in first["shapes"].values()) * first["probs"].element_size()
        limit = max(max(r["batch"] for r in records), self.chunk_bytes // per_example)
        chunks, current = [], []
        for r in records:
            if current and sum(c["batch"] for c in current) + r["batch"] > limit:
                chunks.append(current)
                current = []
            current.append(r)
        chunks.append(current)
        merged = []
        for group in chunks:
            if len(group) == 1:
                merged.append(group[0])
                continue
            saved = {}
            for node, entries in group[0]["saved"].items():
                saved[node] = {key: torch.cat([r["saved"][node][key] for r in group])
                               if isinstance(value, torch.Tensor) and key != "scale" else value
                               for key, value in entries.items()}
            self._layout(saved)  # concatenation does not keep a 3-D tensor's layout
            total = sum(r["batch"] for r in group)
            merged.append({"saved": saved, "probs": torch.cat([r["probs"] for r in group]), "batch": total,
                           "shapes": {n: torch.Size((total, *sh[1:])) for n, sh in group[0]["shapes"].items()}})
        self._cache = merged
        self.weights = [self.weights[0]] * len(merged)

    def _layout(self, saved: dict) -> None:
        """Store the 1-D activations, gradients and masks that meet tangents channels-last (CPU only;
        cached records only, where the copy is paid once)."""
        if self.batches[0][0].device.type != "cpu":
            return
        for entries in saved.values():
            for key in ("x", "g", "mask", "xhat"):
                if isinstance(entries.get(key), torch.Tensor):
                    entries[key] = _channels_last(entries[key])

    # tangent passes --------------------------------------------------------------------
    def _items(self, k: int) -> list[tuple[int, slice]]:
        """The passes of a call, as (chunk, probes) pairs. On CPU a cached chunk of at least
        ``_FOLD_EXAMPLES`` examples takes one probe per pass; smaller chunks take all the probes
        at once, and so do chunks that are not cached (their primal pass is then computed once per
        call) and every chunk on an accelerator (one large pass beats several small ones there)."""
        on_cpu = self.batches[0][0].device.type == "cpu"
        items = []
        for i in range(len(self.weights)):
            rec = self._cache[i]
            group = 1 if on_cpu and rec is not None and rec["batch"] >= _FOLD_EXAMPLES else k
            items += [(i, slice(start, min(k, start + group))) for start in range(0, k, group)]
        return items

    def __call__(self, tangents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``sum_i weights[i] * H_i V`` for ``tangents[j]`` of shape (k, *shape of names[j]).

        Returns one (k, *shape) tensor per parameter, in ``names`` order, where ``H_i`` is the
        Hessian of batch i's summed cross-entropy.
        """
        out = [torch.zeros_like(t) for t in tangents]
        if not self._merged:
            self._merge()
        with torch.no_grad():
            for i, probes in self._items(tangents[0].shape[0]):
                for j, h in enumerate(self._batch_hvp(i, [t[probes] for t in tangents])):
                    if h is not None:
                        out[j][probes].add_(h, alpha=self.weights[i])
        return out

    def quadratic(self, tangents: Sequence[torch.Tensor]) -> torch.Tensor:
        """``sum_i weights[i] * v^T H_i v`` for each of the k vectors: a (k,) tensor.

        Needs only the tangent forward pass: with the layer outputs' gradients ``g`` fixed, the
        second directional derivative of the loss is ``dz^T S dz`` at the logits (S the softmax
        Hessian) plus ``2 <g, dW dx>`` at every parametrised layer (ReLU and max pooling have no
        second derivative), so it costs about half of a Hessian-vector product.
        """
        k = tangents[0].shape[0]
        total = torch.zeros(k, dtype=tangents[0].dtype, device=tangents[0].device)
        if not self._merged:
            self._merge()
        with torch.no_grad():
            for i, probes in self._items(k):
                total[probes] += self.weights[i] * self._batch_quadratic(i, [t[probes] for t in tangents])
        return total

    def _batch_quadratic(self, i: int, tangents) -> torch.Tensor:
        k = tangents[0].shape[0]
        rec = self._primal(i)
        dz = self._forward_tangents(rec, tangents, k)
        p = rec["probs"]
        d = dz[self.output].reshape(k, *p.shape)
        part = (p * d * d).sum((1, 2)) - ((p * d).sum(-1) ** 2).sum(1)
        for node, kind in self.kinds.items():
            if kind in ("conv", "linear", "bn") and node in self.live:
                part = part + 2 * self._second_order(node, kind, dz, rec["saved"][node], tangents, k)
        return part

    def _second_order(self, node, kind, dz, s, tangents, k) -> torch.Tensor:
        """<g, dW dx> at one layer for each probe (zero where either tangent is absent)."""
        dx = dz.get(node.args[0])
        dw = self._param_tangent(node, "weight", tangents)
        g = s.get("g")
        if dx is None or dw is None or g is None:
            return torch.zeros(k, dtype=tangents[0].dtype, device=tangents[0].device)
        m = self.modules[node.target]
        if kind == "bn":
            prod = dx.view(k, *g.shape) * (dw.view(k, 1, *s["scale"].shape[1:]) * s["scale"])
        elif kind == "linear":
            prod = torch.matmul(dx.reshape(k, -1, dx.shape[-1]), dw.transpose(1, 2)).reshape(k, *g.shape)
        else:
            conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
            # probe i's input against probe i's weights: a grouped convolution over the probes
            prod = conv(_unfold(dx, k), dw.flatten(0, 1), None, m.stride, m.padding, m.dilation, groups=k)
            prod = prod.view(g.shape[0], k, *g.shape[1:]).transpose(0, 1)
        return (prod * g).flatten(1).sum(1)

    def _forward_tangents(self, rec: dict, tangents, k: int) -> dict:
        dz: dict[fx.Node, Optional[torch.Tensor]] = {}
        for node in self.nodes:
            kind = self.kinds[node]
            if kind == "output":
                break
            dz[node] = None if node not in self.live else self._tangent_forward(
                node, kind, dz, rec["saved"].get(node), rec["shapes"][node], tangents, k)
        return dz

    def _param_tangent(self, node: fx.Node, local: str, tangents) -> Optional[torch.Tensor]:
        name = self._param_of[node].get(local)
        return tangents[self.index[name]] if name is not None else None

    def _batch_hvp(self, i: int, tangents) -> list[Optional[torch.Tensor]]:
        rec = self._primal(i)
        saved, shapes = rec["saved"], rec["shapes"]
        k = tangents[0].shape[0]
        dz = self._forward_tangents(rec, tangents, k)

        result: list[Optional[torch.Tensor]] = [None] * len(self.names)
        dg: dict[fx.Node, Optional[torch.Tensor]] = {}
        # the softmax Hessian of the summed cross-entropy applied to the logits' tangent
        p = rec["probs"]
        d = dz[self.output].reshape(k, *p.shape)
        dg[self.output] = (p * d - p * (p * d).sum(-1, keepdim=True)).reshape(k * p.shape[0], -1)
        for node in reversed(self.nodes):
            kind = self.kinds[node]
            if kind in ("output", "placeholder") or node not in self.live:
                continue
            g_out = dg.pop(node, None)
            self._tangent_backward(node, kind, g_out, dz, dg, saved.get(node), shapes, tangents, k, result)
        return result

    def _tangent_forward(self, node, kind, dz, s, out_shape, tangents, k):
        args = node.args
        if kind in ("conv", "linear", "bn"):
            m = self.modules[node.target]
            dx = dz.get(args[0])
            dw = self._param_tangent(node, "weight", tangents)
            db = self._param_tangent(node, "bias", tangents)
            parts = []
            if kind == "bn":
                scale = s["scale"]
                gamma = m.weight.view(scale.shape) if m.weight is not None else None
                xhat = s["xhat"]
                if dx is not None:
                    parts.append(dx * (scale * gamma if gamma is not None else scale))
                if dw is not None:
                    parts.append((dw.view(k, 1, *scale.shape[1:]) * xhat).flatten(0, 1))
                if db is not None:
                    parts.append(db.view(k, 1, *scale.shape[1:]).expand(k, *xhat.shape).flatten(0, 1))
            else:
                x = s["x"]
                # probe i's bias tangent rides along with its weight-tangent product
                bias = db.flatten() if db is not None and dw is not None else None
                if kind == "linear":
                    if dx is not None:
                        parts.append(F.linear(dx, m.weight))
                    if dw is not None:
                        prod = _per_probe(x, dw.transpose(1, 2))
                        if db is not None:
                            prod = prod + db.view(k, *(1,) * (x.dim() - 1), -1)
                        parts.append(prod.flatten(0, 1))
                else:
                    if dx is not None:
                        parts.append(_conv(m, dx, m.weight))
                    if dw is not None:
                        parts.append(_fold(_conv(m, x, dw.flatten(0, 1), bias), k))
                if db is not None and bias is None:  # features on axis 1 (conv) or last (linear)
                    view = (k, 1, -1) + (1,) * (x.dim() - 2) if kind == "conv" else (k, *(1,) * (x.dim() - 1), -1)
                    db_full = db.view(view)
                    if parts:
                        parts[0] = (parts[0].view(k, -1, *parts[0].shape[1:]) + db_full).flatten(0, 1)
                    else:
                        parts.append(db_full.expand(k, *out_shape).flatten(0, 1))
            total = parts[0]
            for extra in parts[1:]:
                total = total + extra
            return total
        inputs = [dz.get(a) if isinstance(a, fx.Node) else None for a in args]
        if kind == "add":
            present = [t for t in inputs if t is not None]
            total = present[0]
            for extra in present[1:]:
                total = total + extra
            return total
        dx = inputs[0]
        if dx is None:
            return None
        if kind == "identity":
            return dx
        if kind == "relu":
            mask = s["mask"]
            return (mask * dx.view(k, *mask.shape)).flatten(0, 1)  # mask first: the result takes its layout
        if kind == "maxpool":
            idx = s["idx"]
            flat = dx.flatten(2).view(k, dx.shape[0] // k, dx.shape[1], -1)
            out = flat.gather(3, idx.unsqueeze(0).expand(k, *idx.shape))
            return out.reshape(k * out_shape[0], *out_shape[1:])
        return self._apply_linear(node, dx)

    def _apply_linear(self, node: fx.Node, t: torch.Tensor) -> torch.Tensor:
        args = (t,) + tuple(node.args[1:])
        if node.op == "call_module":
            return self.modules[node.target](t)
        if node.op == "call_method":
            return getattr(t, node.target)(*args[1:], **node.kwargs)
        return node.target(*args, **node.kwargs)

    def _is_flatten(self, node: fx.Node) -> bool:
        return (node.target is torch.flatten or node.op == "call_method" and node.target == "flatten"
                or node.op == "call_module" and isinstance(self.modules[node.target], nn.Flatten))

    def _tangent_backward(self, node, kind, g_out, dz, dg, s, shapes, tangents, k, result):
        args = node.args

        def send(target, value):
            if value is None or not isinstance(target, fx.Node) or target not in self.live:
                return
            dg[target] = value if dg.get(target) is None else dg[target] + value

        if kind in ("conv", "linear", "bn"):
            m = self.modules[node.target]
            inp = args[0]
            dx = dz.get(inp)
            dw = self._param_tangent(node, "weight", tangents)
            g = s.get("g")  # the gradient at this layer's output, shared by all probes
            need_input = inp in self.live
            w_name = self._param_of[node].get("weight")
            b_name = self._param_of[node].get("bias")
            if kind == "bn":
                scale, xhat = s["scale"], s["xhat"]
                gamma = m.weight.view(scale.shape) if m.weight is not None else None
                if need_input:
                    parts = []
                    if g_out is not None:
                        parts.append(g_out * (scale * gamma if gamma is not None else scale))
                    if dw is not None and g is not None:
                        parts.append(((dw.view(k, 1, *scale.shape[1:]) * scale) * g).flatten(0, 1))
                    send(inp, sum(parts[1:], parts[0]) if parts else None)
                dims = [0] + list(range(2, xhat.dim()))
                if w_name is not None:
                    total = 0
                    if g_out is not None:
                        total = (g_out.view(k, *xhat.shape) * xhat).sum([d + 1 for d in dims])
                    if dx is not None and g is not None:
                        total = total + (dx.view(k, *g.shape) * (g * scale)).sum([d + 1 for d in dims])
                    _accumulate(result, self.index[w_name], total)
                if b_name is not None and g_out is not None:
                    _accumulate(result, self.index[b_name], g_out.view(k, *xhat.shape).sum([d + 1 for d in dims]))
                return
            x = s["x"]
            if kind == "linear":
                if need_input:
                    parts = []
                    if g_out is not None:
                        parts.append(g_out @ m.weight)
                    if dw is not None and g is not None:
                        parts.append(_per_probe(g, dw).flatten(0, 1))
                    send(inp, sum(parts[1:], parts[0]) if parts else None)
                if w_name is not None:
                    total = None
                    if g_out is not None:
                        total = torch.matmul(g_out.reshape(k, -1, g_out.shape[-1]).transpose(1, 2),
                                             x.reshape(-1, x.shape[-1]))
                    if dx is not None and g is not None:
                        extra = torch.matmul(g.reshape(-1, g.shape[-1]).t(), dx.reshape(k, -1, dx.shape[-1]))
                        total = extra if total is None else total + extra
                    _accumulate(result, self.index[w_name], total)
                if b_name is not None and g_out is not None:
                    _accumulate(result, self.index[b_name], g_out.reshape(k, -1, g_out.shape[-1]).sum(1))
                return
            # convolution: the transposed products by aten's convolution backward
            if need_input and k == 1 and g_out is not None and dw is not None and g is not None:
                # both terms, W^T dg_z + dW^T g, as one transposed product of [dg_z, g] with [W; dW]
                send(inp, _conv_backward(m, [g_out, g], x, torch.cat([m.weight, dw[0]]), want_input=True))
            elif need_input:
                # conv_transpose, not convolution_backward: several times faster on CPU
                transpose = F.conv_transpose1d if isinstance(m, nn.Conv1d) else F.conv_transpose2d
                spatial = shapes[node][2:]
                extra_pad = [size - ((o - 1) * st - 2 * p + d * (kk - 1) + 1) for size, o, st, p, d, kk in
                             zip(x.shape[2:], spatial, m.stride, m.padding, m.dilation, m.kernel_size)]
                conv_t = {"stride": m.stride, "padding": m.padding, "output_padding": extra_pad, "dilation": m.dilation}
                parts = []
                if g_out is not None:
                    parts.append(transpose(g_out, m.weight, **conv_t))
                if dw is not None and g is not None:
                    w_stack = dw.transpose(0, 1).flatten(1, 2)  # (Cout, k*Cin, *K)
                    parts.append(_fold(transpose(g, w_stack, **conv_t), k))
                send(inp, sum(parts[1:], parts[0]) if parts else None)
            if w_name is not None:
                wshape = m.weight.shape
                total = None
                if g_out is not None:
                    dummy = g_out.new_empty(1).expand(k * wshape[0], *wshape[1:])
                    total = _conv_backward(m, [_unfold(g_out, k)], x, dummy, want_input=False).reshape(k, *wshape)
                if dx is not None and g is not None:
                    dummy = g.new_empty(1).expand(wshape[0], k * wshape[1], *wshape[2:])
                    extra = _conv_backward(m, [g], _unfold(dx, k), dummy, want_input=False)
                    extra = extra.reshape(wshape[0], k, *wshape[1:]).transpose(0, 1)
                    total = extra if total is None else total + extra
                _accumulate(result, self.index[w_name], total)
            if b_name is not None and g_out is not None:
                dims = [1] + list(range(3, g_out.dim() + 1))
                _accumulate(result, self.index[b_name], g_out.view(k, -1, *g_out.shape[1:]).sum(dims))
            return
        if g_out is None:
            return
        if kind == "add":
            for a in args:
                send(a, g_out)
            return
        inp = args[0]
        if kind == "identity":
            send(inp, g_out)
        elif kind == "relu":
            mask = s["mask"]
            send(inp, (mask * g_out.view(k, *mask.shape)).flatten(0, 1))
        elif kind == "maxpool":
            idx, in_shape = s["idx"], s["in_shape"]
            b = idx.shape[0]
            flat = g_out.new_zeros(k, b, in_shape[0], in_shape[1:].numel())
            flat.scatter_add_(3, idx.unsqueeze(0).expand(k, *idx.shape), g_out.flatten(2).view(k, b, idx.shape[1], -1))
            send(inp, flat.view(k * b, *in_shape))
        else:  # a linear op: its transpose by autograd on a zero point of the tangent's shape
            shape = (k * shapes[inp][0], *shapes[inp][1:])
            if self._is_flatten(node):  # the transpose of a flatten is a reshape back
                send(inp, g_out.reshape(shape))
                return
            with torch.enable_grad():
                u = g_out.new_zeros(shape, requires_grad=True)
                (back,) = torch.autograd.grad(self._apply_linear(node, u), u, g_out)
            send(inp, back)
