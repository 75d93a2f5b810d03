"""Fused cross-entropy rows with torch ops over cache-sized blocks (the CPU kernel).

Implements the row contract of :mod:`crossent.backends.rows` (same arguments, same results up to
rounding) plus one extension, ``row_scale``, that lets the caller fold a per-row factor (``1/D``
of ``mean``) into the gradient while it is being written.

Design
------
What is fused. Rows are processed in blocks of about ``BLOCK_BYTES`` of logits, so that a block
is read from memory once and then re-read from cache by a handful of torch ops (each written with
``out=`` or in place; no op allocates a block-sized temporary). Two sweeps:

* plain sweep (class indices, no smoothing, no soft-capping; z-loss allowed), per block:
  ``amax`` of the logits (row maximum ``m``), ``softmax`` (one vectorised ATen kernel) written
  straight into the gradient rows (float32/float64) or into a float32 work block (float16 and
  bfloat16 are upcast there first), ``amax`` of ``p`` (``max p = 1 / sum exp(z - m)`` gives
  ``lse = m - log(max p)`` without a second exponential pass), and one multiply by the row
  coefficient ``a_i`` (skipped when every ``a_i`` is 1). Low-precision gradients are written by
  that multiply (computed in float32, rounded once) after saving the float32 target probability;
  the target term ``- b_i`` is applied to all rows at once after the sweep (in float32 for
  low-precision gradients), so a block costs four full-block ops.
* general sweep (label smoothing, soft-capping, probability targets): the block's ``z`` (soft-
  capped, upcast) is formed in a float32/float64 work block (the gradient rows themselves when
  the dtypes agree), shifted by its row maximum, reduced into the weighted row sums the loss
  needs (``sum_c w_c (z_c - m)``, ``sum_c w_c q'_c``, ``sum_c w_c q'_c (z_c - m)``; the shift
  keeps them as accurate as torch's log-softmax sums), softmaxed in place, and turned into the
  gradient in place (coefficient, target or soft-target term, smoothing term, ``1 - tanh**2``)
  before one rounding copy into a low-precision gradient.

Per-row losses and lse are then assembled from ``(R,)`` statistics with a few vector ops.

Column layout (K-dim inputs, both sweeps). A segmentation-style input ``(N, C, d1, ...)``
arrives as its contiguous view ``(N, C, S)``: a block is a run of whole samples ``(samples, C,
S)`` (or a ``(1, C, positions)`` slice of one sample larger than a block), every op above
reduces over its dimension 1, vectorised along the positions, and the target logits are
gathered and the target terms scattered per block, while it is in cache. Copying such an
input into ``(N*S, C)`` rows instead costs a strided pass over it and leaves rows of a few
classes each, on which the row-wise softmax is slow: in benchmarks/cross_entropy_small.py the
rows took 0.38x/0.60x of torch eager's speed at 4 x 21 x 256 x 256 / 8 x 21 x 384 x 384
float32 (record ...-1025.md), the columns 1.55x/2.00x (...-kdim.md).

What is recomputed. Nothing: each logit is read from memory once; each gradient element is written
once (plus, after the plain sweep, one gather/scatter of the ``R`` target entries).

What memory is saved. No ``N x C`` temporary exists besides the gradient itself, which may be the
logits' own storage (the in-place mode): work buffers are one block each and reused. Large
gradient buffers come from :func:`empty_gradient`: a small pool that hands a buffer out again
once no tensor refers to it, so that a training loop writes each step's gradient into memory
the previous step has already faulted in. A fresh buffer costs its page faults and the kernel's
zeroing on first touch (NumPy's allocation asks Linux for transparent huge pages, which makes
that several times cheaper where THP is in ``madvise`` mode). Measured on a 2-core AMD EPYC
(N=4096, C=32768 float32, the row kernel alone): 103 ms into a fresh buffer, 80 ms into a reused
one, 65 ms in place.

Determinism: fixed block boundaries (a function of the shape only) and torch's deterministic CPU
kernels give bitwise-identical results run to run for a fixed thread count.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING

from crossent.backends.rows import RowOptions, accumulation_dtype
from crossent.backends.rows import num_rows as rows_of

if TYPE_CHECKING:
    import torch

#: Target size of one block of rows, counted in the accumulation dtype (float32/float64): about
#: half the L3 cache, so a block and its gradient rows stay cached between the ops, while the
#: number of ops (each an OpenMP parallel region) stays small. Measured on a 2-core AMD EPYC
#: (32 MiB L3), N=4096, C=32768 float32, fwd+bwd medians on an idle machine: 8 MiB 117 ms,
#: 16 MiB 110 ms, 32 MiB 117 ms, whole tensor 123 ms (bfloat16: 112, 109, 136, 300 ms). L2-sized
#: blocks (1-2 MiB) were slower: the softmax kernel is already row-local, and more blocks mean
#: more per-op overhead, which grows badly when other processes compete for the cores.
BLOCK_BYTES = 16 * 2**20

#: Gradient buffers at least this large come from the buffer pool (:func:`empty_gradient`).
POOL_MIN_BYTES = 32 * 2**20

#: Buffers the pool keeps (the most recently used ones): freed ones wait there for reuse, so
#: after the last call up to this many large buffers stay allocated until
#: :func:`release_pooled_buffers`. 0 turns the pool off.
POOL_BUFFERS = 2

_ALIGNMENT = 64

#: Devices whose target term is one ``scatter_add_`` (one op instead of four); elsewhere a
#: gather and an ``index_put_``: torch's deterministic mode refuses ``scatter_add_`` on CUDA,
#: though no entry repeats here.
SCATTER_ADD_DEVICES: tuple[str, ...] = ("cpu",)


class _BufferPool:
    """Byte buffers (NumPy ``uint8`` arrays) that tensors are made from with
    ``torch.from_numpy``; a tensor's storage holds a reference to its array, so an array that
    nothing but the pool refers to is free to hand out again."""

    def __init__(self) -> None:
        self._buffers: list = []  # least recently used first
        self._lock = threading.Lock()
        self._free_count: int | None = None

    def take(self, nbytes: int):
        import numpy as np

        with self._lock:
            if self._free_count is None:
                # The count of an array that only a list refers to, read the way the loop
                # below reads it (the interpreter's own references differ between Python
                # versions); a tensor made from a buffer, or any view of it, holds one more.
                self._free_count = _refcount_at([np.empty(0, dtype=np.uint8)], 0)
            for i in range(len(self._buffers)):
                if (
                    self._buffers[i].nbytes == nbytes
                    and _refcount_at(self._buffers, i) <= self._free_count
                ):
                    buffer = self._buffers.pop(i)
                    self._buffers.append(buffer)
                    return buffer
            raw = np.empty(nbytes + _ALIGNMENT, dtype=np.uint8)
            offset = -raw.ctypes.data % _ALIGNMENT
            buffer = raw[offset : offset + nbytes]
            self._buffers.append(buffer)
            del self._buffers[: max(0, len(self._buffers) - POOL_BUFFERS)]
            return buffer

    def clear(self) -> None:
        with self._lock:
            self._buffers.clear()


def _refcount_at(buffers: list, i: int) -> int:
    return sys.getrefcount(buffers[i])


_POOL = _BufferPool()


def release_pooled_buffers() -> None:
    """Let go of the gradient buffers the pool keeps for reuse (memory still referenced by a
    tensor is freed with that tensor, as usual)."""
    _POOL.clear()


def empty_gradient(like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor shaped and typed like ``like``.

    CPU buffers of at least ``POOL_MIN_BYTES`` come from a pool of ``POOL_BUFFERS`` buffers: a
    buffer is handed out again once no tensor refers to it any more (say, last step's gradient,
    after the optimizer step), which saves the page faults and the zeroing of fresh memory. The
    tensor is an ordinary CPU tensor over that memory, except that its storage cannot be
    resized. Other buffers are plain ``torch.empty``.
    """
    import torch

    nbytes = like.numel() * like.element_size()
    if like.device.type != "cpu" or nbytes < POOL_MIN_BYTES or POOL_BUFFERS <= 0:
        return torch.empty(like.shape, dtype=like.dtype, device=like.device)
    buffer = _POOL.take(nbytes)
    return torch.from_numpy(buffer).view(like.dtype).view(like.shape)


def block_rows_for(num_classes: int, element_size: int) -> int:
    """Rows per block: about ``BLOCK_BYTES`` of ``element_size``-byte elements, at least one."""
    return max(1, BLOCK_BYTES // max(1, num_classes * element_size))


def cross_entropy_rows(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    options: RowOptions,
    grad: torch.Tensor | None = None,
    *,
    row_scale: torch.Tensor | None = None,
    block_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row losses and log-sum-exps, and optionally the gradient, in one blocked sweep.

    Same contract as :func:`crossent.backends.rows.cross_entropy_rows`; ``grad`` may be
    ``logits`` itself (the in-place mode). Extension: with ``row_scale`` (an ``(R,)`` or 0-d
    tensor) the gradient written is that of ``sum_i row_scale_i * loss_i``; ignored rows stay 0
    whatever their scale. ``block_rows`` overrides the block size (tests use it).

    Second extension, the column layout of K-dim inputs: ``logits`` (and ``grad``) may be a
    contiguous ``(N, C, S)`` tensor whose "rows" are its ``R = N * S`` positions (row ``n * S +
    s`` is ``logits[n, :, s]``; ``target`` is ``(R,)`` class indices or ``(N, C, S)``
    probabilities). The blocks are then runs of whole samples (or slices of one large sample) and
    every op reduces over their class dimension, vectorised along the positions, so such an
    input is never copied into rows.

    >>> import torch
    >>> from crossent.backends.rows import RowOptions
    >>> x = torch.tensor([[2.0, 4.0, 0.5]], dtype=torch.float64)
    >>> loss, lse = cross_entropy_rows(x, torch.tensor([1]), None, RowOptions())
    >>> round(loss.item(), 8), round(lse.item(), 7)
    (0.15317821, 4.1531782)
    """
    def unit(t: torch.Tensor) -> bool:  # a single class has no stride to speak of
        if t.dim() == 3:  # the column layout
            return t.is_contiguous()
        return t.numel() == 0 or t.shape[1] == 1 or t.stride(1) == 1

    if not unit(logits) or (grad is not None and not unit(grad)):
        raise ValueError(
            "cross_entropy_rows expects unit stride along the class dimension (or a contiguous "
            "(N, C, S) tensor)"
        )
    acc = accumulation_dtype(logits.dtype)
    if rows_of(logits) == 0:
        empty = logits.new_empty((0,), dtype=acc)
        return empty, empty.clone()
    rows = _Rows(logits, target, weight, options, grad, row_scale, block_rows)
    if rows.plain:
        _plain_sweep(rows)
    else:
        _general_sweep(rows)
    return rows.finish()


class _Rows:
    """Per-row state of one call: coefficients computed up front, statistics filled by a sweep.

    With ``s_i`` the row scale (0 for ignored rows), the gradient of row ``i`` is
    ``p * a_i - b_i e_{y_i} - c_i w`` (class indices) or ``p * a_i - s_i w q'_i``
    (probabilities, smoothed as ``q' = q (1 - eps) + eps / C``), with ``a_i = s_i (total target
    weight + 2 zeta lse_i)``, ``b_i = s_i (1 - eps) w[y_i]``, ``c_i = s_i eps / C``, then times
    ``1 - tanh**2`` under soft-capping. The loss needs the row maximum ``m``, ``max p`` and,
    depending on the options, the target logit and the weighted sums of ``z - m`` and ``q'``.
    """

    def __init__(self, logits, target, weight, options, grad, row_scale, block_rows):
        import torch

        self.logits, self.target, self.grad = logits, target, grad
        num_rows, num_classes = rows_of(logits), logits.shape[1]
        self.num_rows, self.num_classes = num_rows, num_classes
        self.acc = acc = accumulation_dtype(logits.dtype)
        self.eps = float(options.label_smoothing)
        self.zeta = float(options.z_loss)
        self.cap = options.softcap
        self.probs = target.dtype.is_floating_point
        self.plain = not self.probs and self.eps == 0 and self.cap is None
        # Column layout (N, C, S): blocks are runs of whole samples (samples, C, S), or (1, C,
        # positions) slices of one sample when a sample exceeds a block, so that a block is
        # never smaller than necessary (each costs a dozen torch ops); classes are dimension 1
        # of a block in both layouts.
        self.positions = logits.shape[2] if logits.dim() == 3 else None
        per_block = block_rows or block_rows_for(num_classes, acc.itemsize)
        if self.positions is None:
            self.rows_per_block = min(num_rows, per_block)
        elif per_block >= self.positions:  # whole samples
            self.rows_per_block = per_block // self.positions * self.positions
        else:
            self.rows_per_block = per_block
        # every block a run of whole rows / samples (else slices of one sample)
        self.whole = self.positions is None or self.rows_per_block >= self.positions
        device = logits.device

        def vector():
            return torch.empty(num_rows, dtype=acc, device=device)

        self.vector = vector
        self.w = None if weight is None else weight.to(acc)
        self.total_weight = float(num_classes) if self.w is None else self.w.sum()
        if self.probs:
            self.kept = self.index = self.w_y = None
        else:
            self.kept = target != options.ignore_index
            self.index = torch.where(self.kept, target, 0)
            if self.w is None:
                self.w_y = self.kept.to(acc)
            else:
                self.w_y = torch.where(self.kept, self.w[self.index], 0.0)
        if row_scale is None:
            self.scale = torch.ones(num_rows, dtype=acc, device=device)
        else:
            self.scale = torch.broadcast_to(row_scale.to(acc), (num_rows,))
        if self.kept is not None:
            self.scale = torch.where(self.kept, self.scale, 0.0)
        # Statistics filled by the sweeps.
        self.row_max, self.p_max = vector(), vector()
        self.z_y = vector() if not self.probs else None
        self.sum_wu = vector() if self.eps > 0 and not self.probs else None
        self.sum_wq = vector() if self.probs else None
        self.sum_wqu = vector() if self.probs else None
        # Gradient coefficients (class indices; the probability path forms a_i per block).
        self.a = self.b = self.c = self.a_minus_b = None
        self.unit_a = False
        if grad is not None and not self.probs:
            s = self.scale
            if self.eps == 0 and self.w is None:
                self.a = self.b = s  # s * w_y with w_y = 1 on kept rows; s is 0 on the others
            elif self.eps == 0:  # (no eps * total_weight: 0 * inf would be NaN in every row)
                self.a = self.b = s * self.w_y
            else:
                self.a = s * (
                    (1.0 - self.eps) * self.w_y + (self.eps / num_classes) * self.total_weight
                )
                self.b = s * ((1.0 - self.eps) * self.w_y)
            self.c = s * (self.eps / num_classes) if self.eps > 0 else None
            # a - b, formed on its own: the target entry is b (p_y - 1) + p_y (a - b), so that
            # a one-hot row (p_y = 1) keeps its smoothing and z-loss parts (a - b as a
            # difference would cancel them against a large b)
            self.a_minus_b = (
                s * ((self.eps / num_classes) * self.total_weight) if self.eps > 0 else None
            )
            # Skip the multiply when every a_i is 1 (a CPU read; never on an accelerator). A
            # uniform scale other than 1 (``mean``'s 1/D) rules it out without looking.
            uniform = row_scale is not None and row_scale.dim() == 0
            self.unit_a = (
                self.zeta == 0.0
                and device.type == "cpu"
                and not (uniform and self.w is None and float(row_scale) != 1.0)
                and bool(torch.all(self.a == 1.0))
            )

    def block_buffer(self):
        import torch

        shape = (self.rows_per_block, self.num_classes)
        if self.positions is not None:  # viewed per block by work_block
            shape = (self.rows_per_block * self.num_classes,)
        return torch.empty(shape, dtype=self.acc, device=self.logits.device)

    def _width(self, count: int) -> int:
        """Positions per sample in a column block of ``count`` rows."""
        return min(self.positions, count)

    def work_block(self, work, count: int):
        """A packed block of ``count`` rows in a block buffer, shaped as the logits' block."""
        if self.positions is None:
            return work[:count]
        width = self._width(count)
        return work[: self.num_classes * count].view(count // width, self.num_classes, width)

    def blocks(self):
        """``(start, stop)`` row ranges: whole samples, or slices of one sample."""
        span = self.num_rows if self.whole else self.positions
        for first in range(0, self.num_rows, span):
            for start in range(first, first + span, self.rows_per_block):
                yield start, min(start + self.rows_per_block, first + span)

    def block(self, tensor, start: int, stop: int):
        """Rows ``start:stop`` of ``tensor`` (logits-shaped): ``(rows, C)``, ``(samples, C,
        S)`` or ``(1, C, positions)``."""
        if self.positions is None:
            return tensor[start:stop]
        if self.whole:
            return tensor[start // self.positions : stop // self.positions]
        n, first = divmod(start, self.positions)
        return tensor[n : n + 1, :, first : first + stop - start]

    def packed_blocks(self, tensor) -> bool:
        """Whether every block of ``tensor`` is packed (``out=`` ops may write into it)."""
        return self.whole and tensor.is_contiguous()

    def per_row(self, vector):
        """A ``(rows,)`` vector broadcast against a block, one value per row: ``(rows, 1)`` or
        ``(samples, 1, positions)``."""
        if self.positions is None:
            return vector[:, None]
        return vector.view(-1, 1, self._width(vector.shape[0]))

    def along_block_classes(self, weight):
        """A ``(C,)`` vector broadcast along a block's class dimension."""
        return weight if self.positions is None else weight[:, None]

    def class_sum(self, block, weight, out) -> None:
        """``out[i] = sum_c weight_c block[i, c]`` (plain sum without weights) over a block's
        rows, into the ``(rows,)`` vector ``out``."""
        import torch

        if weight is None:
            torch.sum(block, 1, keepdim=True, out=self.per_row(out))
        elif self.positions is None:
            torch.mv(block, weight, out=out)
        else:
            torch.matmul(weight, block, out=self.per_row(out)[:, 0])

    def along_classes(self, vector):
        """An ``(R,)`` vector as the whole tensor's class dimension (1) sees it: ``(R, 1)`` or
        ``(N, 1, S)``, for gathers and scatters over the whole tensor."""
        if self.positions is None:
            return vector[:, None]
        return vector.view(-1, 1, self.positions)

    def target_positions(self):
        """The index tuple of every row's target entry, for ``index_put_``."""
        import torch

        rows = torch.arange(self.num_rows, device=self.logits.device)
        if self.positions is None:
            return rows, self.index
        return rows // self.positions, self.index, rows % self.positions

    def lse_of(self, start, stop):
        import torch

        return self.row_max[start:stop] - torch.log(self.p_max[start:stop])

    def finish(self):
        """Per-row loss and lse from the statistics (a few vector ops over all rows)."""
        import torch

        eps, num_classes = self.eps, self.num_classes
        log_sum = torch.log(self.p_max).neg_()  # log sum_c exp(z_c - m), as max p = 1 / sum
        lse = self.row_max + log_sum
        if self.probs:  # the sums are over the smoothed target q'
            loss = log_sum * self.sum_wq - self.sum_wqu
        else:
            loss = (log_sum - (self.z_y - self.row_max)) * self.w_y
            if eps > 0:
                loss.mul_(1.0 - eps)
                loss.add_((eps / num_classes) * (self.total_weight * log_sum - self.sum_wu))
        if self.zeta != 0.0:
            loss.add_(self.zeta * lse * lse)
        if self.kept is not None:
            loss = torch.where(self.kept, loss, 0.0)
            lse = torch.where(self.kept, lse, 0.0)
        return loss, lse


def _plain_sweep(rows: _Rows) -> None:
    """Class indices without smoothing or soft-capping: softmax, two maxima, one scaling."""
    import torch

    logits, grad, acc = rows.logits, rows.grad, rows.acc
    index = rows.along_classes(rows.index)
    # Column blocks gather their target logits (and scatter their target terms) while they are
    # in cache: over the whole (N, C, S) tensor each entry is a strided access to memory.
    blockwise = rows.positions is not None
    if not blockwise:  # the target logits, before an in-place sweep overwrites them
        if logits.dtype == acc:
            torch.gather(logits, 1, index, out=rows.along_classes(rows.z_y))
        else:
            rows.z_y.copy_(logits.gather(1, index).reshape(-1))
    # softmax straight into the gradient (only a packed one: out= ops write a strided view of
    # a wider tensor as if it were packed, past its rows)
    direct = grad is not None and logits.dtype == acc and rows.packed_blocks(grad)
    work = None if direct else rows.block_buffer()
    z_loss = grad is not None and rows.zeta != 0.0
    scatter_b = direct and blockwise and not z_loss and grad.device.type in SCATTER_ADD_DEVICES
    gather_p_y = grad is not None and (z_loss or not direct)
    if gather_p_y:
        p_y = rows.vector()  # float32 target probabilities, for the target term
    if z_loss:
        z_all = rows.vector()  # the z-loss part of a_i, 2 zeta s_i lse_i, kept on its own
    for start, stop in rows.blocks():
        x_b = rows.block(logits, start, stop)
        m_b = rows.per_row(rows.row_max[start:stop])
        index_b = rows.per_row(rows.index[start:stop])
        if blockwise:  # (before an in-place block is overwritten)
            z_y_b = rows.per_row(rows.z_y[start:stop])
            if x_b.dtype == acc:
                torch.gather(x_b, 1, index_b, out=z_y_b)
            else:
                z_y_b.copy_(x_b.gather(1, index_b))
        if direct:
            p_b = rows.block(grad, start, stop)
            torch.amax(x_b, 1, keepdim=True, out=m_b)
            torch.ops.aten._softmax.out(x_b, 1, False, out=p_b)
        else:
            p_b = rows.work_block(work, stop - start)
            if logits.dtype == acc:
                torch.amax(x_b, 1, keepdim=True, out=m_b)
                torch.ops.aten._softmax.out(x_b, 1, False, out=p_b)
            else:
                p_b.copy_(x_b)
                torch.amax(p_b, 1, keepdim=True, out=m_b)
                torch.ops.aten._softmax.out(p_b, 1, False, out=p_b)
        torch.amax(p_b, 1, keepdim=True, out=rows.per_row(rows.p_max[start:stop]))
        if grad is None:
            continue
        a_b = None if rows.unit_a else rows.a[start:stop]
        if z_loss:
            z_b = z_all[start:stop]
            torch.mul(rows.scale[start:stop], rows.lse_of(start, stop), out=z_b)
            z_b.mul_(2.0 * rows.zeta)
            a_b = a_b + z_b
        if gather_p_y:
            torch.gather(p_b, 1, index_b, out=rows.per_row(p_y[start:stop]))
        if a_b is not None:
            p_b.mul_(rows.per_row(a_b))
        if scatter_b:  # g[i, y_i] + (-b_i), as below
            p_b.scatter_add_(1, index_b, rows.per_row(rows.b[start:stop].neg()))
        if not direct:
            rows.block(grad, start, stop).copy_(p_b)  # computed in float32, rounded once
    if grad is None or scatter_b:
        return
    # Target term: g[i, y_i] = p_y * a_i - b_i (in float32 for low-precision gradients).
    # (index_put_, not scatter_: scatter_ converts a whole bfloat16 tensor to float32 and back.)
    if z_loss:  # b_i (p_y - 1) + p_y z_i: a one-hot row keeps its z-loss gradient
        g_y = torch.addcmul(rows.b * (p_y - 1.0), p_y, z_all).to(grad.dtype)
        grad.index_put_(rows.target_positions(), g_y)
        return
    if direct and grad.device.type in SCATTER_ADD_DEVICES:
        # g[i, y_i] + (-b_i) is g[i, y_i] - b_i exactly, one entry per row.
        grad.scatter_add_(1, index, rows.along_classes(rows.b.neg()))
        return
    if direct:
        g_y = grad.gather(1, index).reshape(-1) - rows.b
    else:
        g_y = p_y if rows.unit_a else p_y * rows.a
        g_y = (g_y - rows.b).to(grad.dtype)
    grad.index_put_(rows.target_positions(), g_y)


def _general_sweep(rows: _Rows) -> None:
    """Smoothing, soft-capping or probability targets: a float32/64 work block per block."""
    import torch

    logits, target, grad, acc, w = rows.logits, rows.target, rows.grad, rows.acc, rows.w
    eps, num_classes, cap = rows.eps, rows.num_classes, rows.cap
    work_is_grad = grad is not None and grad.dtype == acc and rows.packed_blocks(grad)  # (as above)
    work = None if work_is_grad else rows.block_buffer()
    tanh_buf = rows.block_buffer() if cap is not None else None
    # Probability targets are smoothed explicitly, q' = q (1 - eps) + eps / C, as torch does:
    # a term q'_c (z_c - m) is then NaN only where torch's is (q'_c = 0 at a -inf logit).
    q_buf = rows.block_buffer() if rows.probs and (target.dtype != acc or eps > 0) else None
    prod_buf = rows.block_buffer() if rows.probs else None
    w_b = None if w is None else rows.along_block_classes(w)
    for start, stop in rows.blocks():
        count = stop - start
        x_b = rows.block(logits, start, stop)
        g_b = rows.block(grad, start, stop) if grad is not None else None
        m_b = rows.per_row(rows.row_max[start:stop])
        u_b = g_b if work_is_grad else rows.work_block(work, count)
        # z (soft-capped logits) in u_b; ops with out= compute in their inputs' dtype.
        if cap is not None:
            t_b = rows.work_block(tanh_buf, count)
            torch.div(x_b if x_b.dtype == acc else t_b.copy_(x_b), cap, out=t_b)
            t_b.tanh_()
            torch.mul(t_b, cap, out=u_b)
        elif u_b.data_ptr() != x_b.data_ptr():
            u_b.copy_(x_b)
        torch.amax(u_b, 1, keepdim=True, out=m_b)
        if not rows.probs:
            idx_b = rows.per_row(rows.index[start:stop])
            torch.gather(u_b, 1, idx_b, out=rows.per_row(rows.z_y[start:stop]))
        u_b.sub_(m_b)
        if eps > 0 and not rows.probs:
            rows.class_sum(u_b, w, rows.sum_wu[start:stop])
        if rows.probs:
            t_q = rows.block(target, start, stop)
            q_b = t_q if q_buf is None else rows.work_block(q_buf, count).copy_(t_q)
            if eps > 0:
                q_b.mul_(1.0 - eps).add_(eps / num_classes)
            prod_b = rows.work_block(prod_buf, count)
            torch.mul(q_b, u_b, out=prod_b)
            rows.class_sum(q_b, w, rows.sum_wq[start:stop])
            rows.class_sum(prod_b, w, rows.sum_wqu[start:stop])
        p_b = u_b
        torch.ops.aten._softmax.out(u_b, 1, False, out=p_b)
        torch.amax(p_b, 1, keepdim=True, out=rows.per_row(rows.p_max[start:stop]))
        if grad is None:
            continue

        s_b = rows.scale[start:stop]
        if rows.probs:
            a_b = s_b * rows.sum_wq[start:stop]
        else:
            a_b = rows.a[start:stop]
        extra_b = None if rows.probs else rows.a_minus_b  # a - b of the index rows
        extra_b = None if extra_b is None else extra_b[start:stop]
        if rows.zeta != 0.0:
            z_b = (2.0 * rows.zeta) * s_b * rows.lse_of(start, stop)
            a_b = a_b + z_b
            extra_b = z_b if extra_b is None else extra_b + z_b
        if not rows.probs:
            p_y_b = torch.gather(p_b, 1, idx_b)  # before the scaling below
        p_b.mul_(rows.per_row(a_b))
        if rows.probs:  # - s w q'
            if w is None:
                torch.mul(q_b, rows.per_row(s_b), out=prod_b)
            else:
                torch.mul(q_b, w_b, out=prod_b)
                prod_b.mul_(rows.per_row(s_b))
            p_b.sub_(prod_b)
            c_b = None
        else:  # - b e_y, as b (p_y - 1) + p_y (a - b) (see _Rows.a_minus_b)
            picked = rows.per_row(rows.b[start:stop]) * (p_y_b - 1.0)
            if extra_b is not None:
                picked.addcmul_(p_y_b, rows.per_row(extra_b))
            p_b.scatter_(1, idx_b, picked)
            c_b = rows.c[start:stop] if rows.c is not None else None
        if c_b is not None:  # - c w
            if w is None:
                p_b.sub_(rows.per_row(c_b))
            else:
                p_b.addcmul_(rows.per_row(c_b), w_b, value=-1.0)
        if cap is not None:  # times dz/dx = 1 - tanh**2
            t_b = rows.work_block(tanh_buf, count)
            t_b.mul_(t_b)
            p_b.addcmul_(p_b, t_b, value=-1.0)
        if p_b.data_ptr() != g_b.data_ptr():
            g_b.copy_(p_b)
