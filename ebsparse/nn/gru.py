"""SparseGRU: nn.GRU whose weights are sparse, run through the sparse kernels on the CPU.

Per layer and direction the GRU splits into two matmuls of different shapes:
- the input projection gi = x W_ih^T + b_ih of every timestep at once, (L * B, I) x (I, 3H): one
  `sparse_linear` call (a large matmul, where the sparse kernel wins as in any linear layer);
- the recurrence h_t = cell(gi_t, h_{t-1} W_hh^T + b_hh): L small (B, H) x (H, 3H) matmuls in
  sequence. At hidden 128 one step's matmul takes tens of microseconds, less than a dozen
  Python-dispatched ops for the gates would add, so the loop over timesteps runs in C++
  (`ebsparse::gru_recurrence`, csrc/cpu/rnn/gru.cpp): per step one sparse matmul on W_hh's CSR
  pattern and one fused pass of gate arithmetic; its backward runs back through time with the
  CSC pattern and leaves dW_hh to one SDDMM over all L * B rows.

Elsewhere (CUDA, dtypes the CPU kernels lack, backend "dense") the module runs PyTorch's own GRU
(`torch._VF.gru`, cuDNN on a GPU) on the masked weights: the same function, dense speed.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ebsparse.backends import get_backend, registry
from ebsparse.formats import check_density, magnitude_mask
from ebsparse.formats.index import PatternIndex
from ebsparse.nn.mask_state import current_index, mask_state, strict_masks
from ebsparse.nn.sharded import mask_like
from ebsparse.ops import calls
from ebsparse.ops.inputs import LinearInputs
from ebsparse.ops.linear import sparse_linear

# Above this density of W_hh the auto backend runs the recurrence's matmul dense (inside the same
# C++ loop, on the masked weight): at batch 128, hidden 128 (1 thread) the CSR step matmul took
# ~0.5x the dense time at density 0.1 and ~0.7x at 0.25, and loses to it past ~0.5.
RECURRENT_SPARSE_MAX_DENSITY = 0.4
_BACKENDS = ("auto", "native", "dense")


def gru_weight_names(num_layers: int, bidirectional: bool) -> list[str]:
    """The weight parameters of an nn.GRU, in its order: weight_ih_l0, weight_hh_l0, ..."""
    names = []
    for layer in range(num_layers):
        for suffix in ("", "_reverse") if bidirectional else ("",):
            names += [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
    return names


class _Recurrence(torch.autograd.Function):
    """hidden (L, B, H) of one layer direction from gi = x W_ih^T (L, B, 3H), h0 (B, H), W_hh (3H, H)
    and the biases b_ih, b_hh (added, and their gradients summed, in the C++ gate pass). `pattern`
    None: W_hh runs dense (masked) inside the C++ loop."""

    @staticmethod
    def forward(ctx, gi, h0, weight, bias_ih, bias_hh, mask, pattern: PatternIndex | None, reverse: bool,
                dense_weight_grad: bool):
        w = weight if pattern is not None else torch.where(mask, weight, 0)
        rp, ci = (pattern.row_ptr, pattern.col_idx) if pattern is not None else (None, None)
        hidden, saved = torch.ops.ebsparse.gru_recurrence(gi, h0, w, bias_ih, bias_hh, rp, ci, reverse)
        ctx.save_for_backward(h0, hidden, saved, weight, w)
        ctx.mask, ctx.pattern, ctx.reverse, ctx.dense_weight_grad = mask, pattern, reverse, dense_weight_grad
        _record("forward", pattern)
        return hidden

    @staticmethod
    def backward(ctx, grad_hidden):
        h0, hidden, saved, weight, w = ctx.saved_tensors
        p = ctx.pattern
        cp, ri = (p.col_ptr, p.row_idx) if p is not None else (None, None)
        grad_gi, grad_gh, grad_h0, grad_bias_ih, grad_bias_hh = torch.ops.ebsparse.gru_recurrence_backward(
            grad_hidden.contiguous(), h0, hidden, saved, w, cp, ri, ctx.reverse)
        _record("backward", p)
        grad_weight = None
        L, B, H = hidden.shape
        if ctx.needs_input_grad[2]:
            # The state each step read: h0, then the previous step's output (in the direction's order).
            before = (torch.cat([hidden[1:], h0[None]]) if ctx.reverse else torch.cat([h0[None], hidden[:-1]]))
            before, grad_gh2d = before.reshape(L * B, H), grad_gh.reshape(L * B, 3 * H)
            if p is not None:
                inputs = LinearInputs(before, weight, None, ctx.mask, p, ctx.dense_weight_grad)
                grad_weight = calls.gradients(get_backend("native"), inputs, grad_gh2d, False, True)[1]
            else:
                grad_weight = grad_gh2d.t() @ before
                if not ctx.dense_weight_grad:
                    grad_weight = grad_weight.masked_fill_(~ctx.mask, 0)
        needs = ctx.needs_input_grad
        return (grad_gi, grad_h0, grad_weight, grad_bias_ih if needs[3] else None,
                grad_bias_hh if needs[4] else None, None, None, None, None)


def _record(phase: str, pattern) -> None:
    if registry.executed is not None:
        registry.executed.append(("gru_recurrence", phase, "native" if pattern is not None else "dense"))


class SparseGRU(nn.GRU):
    """Drop-in nn.GRU (same constructor, parameter names and state dict) plus one bool mask buffer per
    weight, ``<weight>_mask`` (e.g. ``weight_hh_l0_reverse_mask``: the names the s2s sparsifier
    gives in-place masks, so its checkpoints load either way).

    ``density`` (one float for every weight) masks by magnitude with exact counts; ``masks`` maps
    weight names to masks (weights left out stay dense). ``backend``: None/"auto" (the sparse CPU
    kernels where they run: float32/float64 on the CPU, else PyTorch's GRU on the masked weights),
    "native" (the sparse kernels or an error) or "dense". Change a mask with ``set_mask(name, m)``,
    an in-place op on its buffer or ``load_state_dict``. ``dense_weight_grad`` (RigL's update steps)
    makes the next backward return the full dense weight gradients. PackedSequence inputs and
    ``proj_size`` are not supported.
    """

    def __init__(self, *args, density: float | None = None, masks: dict[str, torch.Tensor] | None = None,
                 backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.proj_size:
            raise ValueError(f"proj_size: SparseGRU has no projection, got {self.proj_size}")
        if backend not in (None, *_BACKENDS):
            raise ValueError(f"backend: expected one of {_BACKENDS} or None, got {backend!r}")
        self.backend = backend
        self.dense_weight_grad = False
        names = self.weight_names
        masks = dict(masks or {})
        unknown = sorted(set(masks) - set(names))
        if unknown:
            raise ValueError(f"masks: unknown weight names {unknown}; expected some of {names}")
        for name in names:
            self.register_buffer(f"{name}_mask", torch.ones_like(getattr(self, name), dtype=torch.bool))
        for name in names:
            if name in masks:
                self.set_mask(name, masks[name])
            elif density is not None:
                self.set_mask(name, magnitude_mask(getattr(self, name).detach(), check_density(density)))

    @property
    def weight_names(self) -> list[str]:
        return gru_weight_names(self.num_layers, self.bidirectional)

    def mask_of(self, name: str) -> torch.Tensor:
        """The bool mask buffer of weight `name` (e.g. "weight_hh_l0")."""
        if name not in self.weight_names:
            raise ValueError(f"name: expected one of {self.weight_names}, got {name!r}")
        return getattr(self, f"{name}_mask")

    def masks(self) -> dict[str, torch.Tensor]:
        return {name: self.mask_of(name) for name in self.weight_names}

    def check_mask(self, name: str, mask, what: str = "mask") -> None:
        weight = getattr(self, name)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"{what}: expected a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != weight.shape:
            raise ValueError(f"{what}: expected shape {tuple(weight.shape)} (that of {name}), got {tuple(mask.shape)}")

    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        """Replace the kept positions of weight `name` and zero it outside them."""
        buffer = self.mask_of(name)
        self.check_mask(name, mask, f"masks[{name!r}]")
        with torch.no_grad():
            buffer.copy_(mask)
            weight = getattr(self, name)
            weight.masked_fill_(~mask_like(buffer, weight), 0)  # a sharded weight: this rank's part

    def density_of(self, name: str) -> float:
        mask = self.mask_of(name)
        return float(mask.sum()) / max(mask.numel(), 1)

    @classmethod
    def from_dense(cls, gru: nn.GRU, masks: dict[str, torch.Tensor] | None = None, *, density: float | None = None,
                   backend: str | None = None) -> "SparseGRU":
        """A SparseGRU holding a copy of `gru`'s parameters, masked by `masks` (weight name -> bool
        mask; weights left out stay dense) or by magnitude at `density`."""
        if not isinstance(gru, nn.GRU):
            raise TypeError(f"gru: expected an nn.GRU, got {type(gru).__name__}")
        if masks is not None and density is not None:
            raise ValueError("from_dense: pass masks or density, not both")
        w = gru.weight_ih_l0
        module = cls(gru.input_size, gru.hidden_size, gru.num_layers, gru.bias, gru.batch_first, gru.dropout,
                     gru.bidirectional, device=w.device, dtype=w.dtype, backend=backend)
        with torch.no_grad():
            for name, p in gru.named_parameters():
                getattr(module, name).copy_(p)
                getattr(module, name).requires_grad_(p.requires_grad)
        module.train(gru.training)
        for name in module.weight_names:
            if masks is not None and name in masks:
                module.set_mask(name, masks[name])
            elif density is not None:
                module.set_mask(name, magnitude_mask(getattr(module, name).detach(), check_density(density)))
        if masks is not None:
            unknown = sorted(set(masks) - set(module.weight_names))
            if unknown:
                raise ValueError(f"masks: unknown weight names {unknown}; expected some of {module.weight_names}")
        return module

    def to_dense(self) -> nn.GRU:
        """An nn.GRU with the masked weights (zeros outside the masks) and the biases."""
        w = self.weight_ih_l0
        dense = nn.GRU(self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first,
                       self.dropout, self.bidirectional, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for name, p in self.named_parameters():
                value = p.masked_fill(~self.mask_of(name), 0) if name in self.weight_names else p
                getattr(dense, name).copy_(value)
        dense.train(self.training)
        return dense

    # --- forward ----------------------------------------------------------------------------------
    def _backend_name(self) -> str:
        name = self.backend or os.environ.get("EBSPARSE_BACKEND") or "auto"
        return name if name in _BACKENDS else "auto"  # a linear-only backend named in the environment

    def _sparse_reasons(self, input: torch.Tensor) -> list[str]:
        return get_backend("native").unavailable_reasons("gru_recurrence", input.device, input.dtype)

    def forward(self, input, hx=None):
        if isinstance(input, nn.utils.rnn.PackedSequence):
            raise TypeError("input: SparseGRU takes a padded tensor (L, B, I) or (B, L, I), not a PackedSequence")
        if strict_masks():
            for name in self.weight_names:
                mask_state(self.mask_of(name)).check_edits(self.mask_of(name), "SparseGRU forward", strict=True)
        name = self._backend_name()
        if name == "dense" or torch.compiler.is_compiling():
            return self._dense_forward(input, hx)
        reasons = self._sparse_reasons(input)
        if reasons:
            if name == "native":
                raise RuntimeError(f"backend 'native' cannot run SparseGRU on {input.device}/{input.dtype}: "
                                   + "; ".join(reasons))
            return self._dense_forward(input, hx)
        return self._sparse_forward(input, hx, explicit=name == "native")

    def _masked_flat_weights(self) -> list[torch.Tensor]:
        out = []
        for name in self._flat_weights_names:
            p = getattr(self, name)
            if name in self.weight_names:
                mask = self.mask_of(name)
                # dense_weight_grad: the value of the masked weight with the gradient of the dense one
                p = p - p.detach().masked_fill(mask, 0) if self.dense_weight_grad else torch.where(mask, p, 0)
            out.append(p)
        return out

    def _dense_forward(self, input, hx):
        if input.dim() not in (2, 3) or input.shape[-1] != self.input_size:
            raise ValueError(f"input: expected (L, B, {self.input_size}), (B, L, {self.input_size}) or "
                             f"(L, {self.input_size}), got {tuple(input.shape)}")
        batched, batch_dim = input.dim() == 3, 0 if self.batch_first else 1
        if not batched:
            input = input.unsqueeze(batch_dim)
            hx = hx.unsqueeze(1) if hx is not None else None
        hx = self._initial_state(input, hx, batch=input.shape[batch_dim])
        out, h_n = torch._VF.gru(input, hx, self._masked_flat_weights(), self.bias, self.num_layers,
                                 float(self.dropout), self.training, self.bidirectional, self.batch_first)
        if registry.executed is not None:
            registry.executed.append(("gru", "forward", "dense"))
        return (out, h_n) if batched else (out.squeeze(batch_dim), h_n.squeeze(1))

    def _initial_state(self, input, hx, batch: int):
        d = 2 if self.bidirectional else 1
        shape = (self.num_layers * d, batch, self.hidden_size)
        if hx is None:
            return input.new_zeros(shape)
        if not isinstance(hx, torch.Tensor) or tuple(hx.shape) != shape:
            raise ValueError(f"hx: expected shape {shape}, got {tuple(getattr(hx, 'shape', ()))}")
        if hx.dtype != input.dtype or hx.device != input.device:
            raise TypeError(f"hx: expected {input.dtype} on {input.device} (that of input), got {hx.dtype} on "
                            f"{hx.device}")
        return hx

    def _sparse_forward(self, input, hx, explicit: bool):
        if input.dim() not in (2, 3) or input.shape[-1] != self.input_size:
            raise ValueError(f"input: expected (L, B, {self.input_size}), (B, L, {self.input_size}) or "
                             f"(L, {self.input_size}), got {tuple(input.shape)}")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)  # unbatched (L, I): batch of one, time first
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        L, B = x.shape[0], x.shape[1]
        if L == 0:
            raise ValueError(f"input: expected at least one timestep, got shape {tuple(input.shape)}")
        if not batched and hx is not None:
            hx = hx.unsqueeze(1)
        hx = self._initial_state(x, hx, batch=B)
        H, D = self.hidden_size, 2 if self.bidirectional else 1
        layer_input, last = x, []
        for layer in range(self.num_layers):
            outputs = []
            for d in range(D):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                w_ih, w_hh = getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix)
                b_ih = getattr(self, "bias_ih" + suffix) if self.bias else None
                b_hh = getattr(self, "bias_hh" + suffix) if self.bias else None
                mask_ih, mask_hh = self.mask_of("weight_ih" + suffix), self.mask_of("weight_hh" + suffix)
                gi = sparse_linear(layer_input.reshape(L * B, -1), w_ih, None, mask_ih,
                                   index=current_index(mask_ih, "SparseGRU"), backend=self.backend,
                                   dense_weight_grad=self.dense_weight_grad).view(L, B, 3 * H)
                pattern = current_index(mask_hh, "SparseGRU")
                if not explicit and pattern.density > RECURRENT_SPARSE_MAX_DENSITY:
                    pattern = None
                hidden = _Recurrence.apply(gi, hx[layer * D + d], w_hh, b_ih, b_hh, mask_hh, pattern, bool(d),
                                           self.dense_weight_grad)
                outputs.append(hidden)
                last.append(hidden[0] if d else hidden[L - 1])
            layer_input = torch.cat(outputs, dim=-1) if D == 2 else outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        out, h_n = layer_input, torch.stack(last)
        if not batched:
            return out.squeeze(1), h_n.squeeze(1)
        return (out.transpose(0, 1) if self.batch_first else out), h_n

    # --- masks in state dicts and train()/eval() ---------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in self.weight_names:
            key = f"{prefix}{name}_mask"
            if key in state_dict:
                try:
                    self.check_mask(name, state_dict[key], key)
                except (TypeError, ValueError) as exc:
                    error_msgs.append(str(exc))
                    return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        # A plain nn.GRU state dict has no masks: keep the current ones.
        for name in self.weight_names:
            if f"{prefix}{name}_mask" in missing_keys:
                missing_keys.remove(f"{prefix}{name}_mask")
        self.check_mask_edits("load_state_dict()")

    def check_mask_edits(self, where: str = "check_mask_edits()") -> bool:
        """Compare every mask with the one its cached pattern was built from (see
        ebsparse.nn.mask_state); True if an edit bypassed a mask's version counter."""
        found = False
        for name in self.weight_names:
            mask = self.mask_of(name)
            found |= mask_state(mask).check_edits(mask, f"SparseGRU.{where}", strict=strict_masks())
        return found

    def train(self, mode: bool = True):
        self.check_mask_edits("train()" if mode else "eval()")
        return super().train(mode)

    def extra_repr(self) -> str:
        kept = sum(int(self.mask_of(n).sum()) for n in self.weight_names)
        total = sum(self.mask_of(n).numel() for n in self.weight_names)
        return f"{super().extra_repr()}, weight density={kept / max(total, 1):.4f}"
