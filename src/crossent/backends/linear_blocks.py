"""Linear layer + cross-entropy over blocks of rows and of the vocabulary (the linear-CE engine).

Computes the per-row losses of ``cross_entropy(X @ W.T + b, target)`` and, on request, the
gradients ``dX``, ``dW``, ``db`` of ``sum_i s_i * loss_i`` (``s`` = a row scale: ``1/D`` for
``mean``, the upstream gradient in a ``reduction="none"`` backward) without ever holding the
``N x V`` logits.

Design
------
What is fused. The rows are processed in blocks of ``plan.rows`` rows. For each block:

1. ``Z_b = X_b @ W.T + b`` (GEMM 1) into one reused ``(R, V)`` buffer of the accumulation dtype
   (float32; float64 for float64 inputs);
2. the row kernel (:mod:`crossent.backends.cpu`, or the Triton one on CUDA) overwrites ``Z_b``
   with ``dZ_b`` (the gradient of the scaled row losses) and returns the row losses and lse;
3. ``dX_b = dZ_b @ W`` (GEMM 2), ``dW += dZ_b.T @ X_b`` (GEMM 3), ``db += dZ_b.sum(0)``.
   A uniform scale on CPU (``1/D`` of ``mean``) is the GEMMs' ``alpha`` rather than a multiply
   over the block; the first row block writes ``dW``/``db`` (no zero-filled accumulator).

On CPU, rows whose class-index target is ``ignore_index`` are dropped before the first block
(``index_select``, a deterministic gather), so they cost no GEMM work. On other devices they are
masked instead (counting the kept rows would be a device-to-host synchronisation); their loss,
lse and gradient rows are 0 either way.

Vocabulary blocks. When fewer than ``MIN_ROWS`` rows of full-vocabulary logits fit in the
budget (each row block streams ``W`` and ``dW`` through memory once per GEMM, so short row
blocks make the GEMMs memory-bound), each row block is split into vocabulary blocks of
``plan.vocab`` classes (about ``VOCAB_TARGET``, with as many rows as then fit) and
processed in two passes (this module's own torch-ops code, same formulas as the row contract):
pass 1 computes every vocabulary block's logits and keeps a running row maximum and sum of
exponentials (an online log-sum-exp) and the target logit; pass 2 recomputes each block's
logits, forms the losses' smoothing/probability sums and ``dZ`` from the now known lse, and
accumulates the three products. Exact, but the logits GEMM runs twice: 4 GEMMs instead of 3.

What is recomputed. Nothing in the plain regime. In the vocabulary-blocked regime, the logits
(one extra GEMM). The ``reduction="none"`` backward reruns this engine with the upstream
gradient as the row scale (1 GEMM in the forward, 3 in the backward).

What memory is saved. Working memory is one logits block (``R x Vb`` in the accumulation
dtype), a rounded copy of it for float16/bfloat16 inputs (the GEMMs then run in the input
dtype), the row kernel's cache-sized scratch and a few ``R x D`` row buffers. :func:`plan_blocks`
sizes the blocks so that :func:`working_bytes` stays within a byte budget. Outputs (losses,
lse, ``dX``, ``dW``, ``db``) and, for float16/bfloat16 inputs, the float32 ``dW``/``db``
accumulators are not working memory.

Precision. float32 and float64 inputs run entirely in their own dtype. float16/bfloat16 inputs:
the logits GEMM runs in the input dtype (the logits are rounded once, as torch's ``linear``
rounds them), the loss and ``dZ`` in float32, ``dX`` as ``round(dZ) @ W`` in the input dtype
(as torch's backward; in the vocabulary-blocked regime in float32 against a float32 copy of the
weight block), ``dW`` and ``db`` accumulate in float32 and are rounded once at the end.

Determinism. Fixed block order and boundaries, deterministic gathers and scatters of distinct
rows, no atomics: bitwise-identical results run to run for a fixed thread count.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from crossent.backends.rows import RowOptions, accumulation_dtype

if TYPE_CHECKING:
    import torch

#: Fewest rows per block worth a full-vocabulary GEMM; below this the vocabulary is blocked.
MIN_ROWS = 128
#: Classes per vocabulary block the planner aims for (then as many rows as fit).
VOCAB_TARGET = 1024
#: Vocabulary blocks are a multiple of this many classes (unless the vocabulary is smaller).
VOCAB_ALIGN = 16
#: Bytes per row for the ``(R,)`` vectors of a block (losses, lse, maxima, coefficients, ...).
ROW_VECTOR_BYTES = 256
KERNELS: tuple[str, ...] = ("cpu", "triton")


@dataclass(frozen=True, slots=True)
class BlockPlan:
    """How the engine walks the ``N x V`` logits.

    ``rows``: rows per block. ``vocab``: classes per vocabulary block (the whole vocabulary
    unless ``vocab_blocked``). ``kernel_rows``: rows per row-kernel call (its cache block).
    ``budget``: the byte budget the plan was derived from; ``working_bytes``: the plan's working
    memory according to :func:`working_bytes` (at most ``budget``).
    """

    rows: int
    vocab: int
    kernel_rows: int
    vocab_blocked: bool
    budget: int
    working_bytes: int


class Workload(NamedTuple):
    """What the working memory depends on besides the block sizes."""

    num_classes: int
    in_features: int
    element_size: int  # bytes per element of the input (and of the GEMMs)
    acc_size: int  # bytes per element of the accumulation dtype
    probabilities: bool  # probability targets
    softcap: bool  # soft-capping on
    smoothing: bool  # label_smoothing > 0
    gradients: bool  # every engine call of the plan computes gradients
    kernel: str

    @property
    def low_precision(self) -> bool:
        return self.element_size < self.acc_size

    @property
    def tensor_cores(self) -> bool:
        """float16/bfloat16 with the Triton kernel (CUDA): the logits block stays in the input
        dtype and all three GEMMs run on the tensor cores (see :class:`_Engine`)."""
        return self.low_precision and self.kernel == "triton"


def workload(
    num_classes: int,
    in_features: int,
    dtype: torch.dtype,
    *,
    probabilities: bool = False,
    softcap: bool = False,
    smoothing: bool = False,
    gradients: bool = True,
    kernel: str = "cpu",
) -> Workload:
    """The :class:`Workload` of an input dtype (the accumulation dtype follows from it)."""
    acc = accumulation_dtype(dtype)
    return Workload(
        num_classes, in_features, dtype.itemsize, acc.itemsize, probabilities, softcap,
        smoothing, gradients, kernel,
    )  # fmt: skip


def _kernel_scratch_blocks(w: Workload) -> int:
    """Block buffers the CPU row kernel allocates per call (its design comment): none for the
    plain sweep writing a gradient, one work block otherwise, plus soft-cap and
    probability-target buffers."""
    if w.kernel != "cpu":
        return 0
    if not (w.probabilities or w.softcap or w.smoothing):
        return 0 if w.gradients else 1
    return int(not w.gradients) + int(w.softcap) + 2 * int(w.probabilities)


def default_kernel_rows(w: Workload) -> int:
    """Rows per row-kernel call: the CPU kernel's own cache block (a few MiB of logits)."""
    from crossent.backends import cpu

    return cpu.block_rows_for(w.num_classes, w.acc_size)


def working_bytes(w: Workload, rows: int, vocab: int, kernel_rows: int, vocab_blocked: bool) -> int:
    """Upper estimate of the engine's working memory for one block plan (bytes).

    Counted: the logits block and its low-precision copy; in the vocabulary-blocked regime the
    soft-cap and probability-target block buffers and the float32 copy of a weight block
    (low-precision inputs); otherwise the row kernel's scratch; per row, the gathered inputs,
    the ``dX`` rows and the ``(R,)`` vectors; the column sums for ``db``.
    """
    d, a, e = w.in_features, w.acc_size, w.element_size
    per_element = a + (e if w.low_precision else 0)
    per_row = ROW_VECTOR_BYTES + d * (2 * e + (4 if w.low_precision else 0))
    if w.tensor_cores and not vocab_blocked:
        per_element = e  # the logits block in the input dtype, no float32 copy
        per_row = ROW_VECTOR_BYTES + d * 2 * e
    total = vocab * a  # db column sums
    if vocab_blocked:
        per_element += a * (int(w.softcap) + int(w.probabilities))
        per_row += d * a  # dX accumulator of the row block
        if w.low_precision:
            total += vocab * d * a  # float32 copy of the weight block for dX
    else:
        total += kernel_rows * vocab * a * _kernel_scratch_blocks(w)
    return total + rows * (vocab * per_element + per_row)


def _largest(fits, upper: int) -> int:
    """Largest ``k`` in ``[0, upper]`` with ``fits(k)`` (``fits`` monotone), -1 if none."""
    low, high = -1, upper  # invariant: fits(low) (or low == -1), answer <= high
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _balanced(total: int, most: int) -> int:
    """The block size that splits ``total`` into the fewest blocks of at most ``most``, evenly."""
    blocks = -(-total // most)
    return -(-total // blocks)


def plan_blocks(w: Workload, num_rows: int, budget: int) -> BlockPlan:
    """The block plan for ``num_rows`` rows within ``budget`` bytes (deterministic).

    Rule: as many rows of full-vocabulary logits as fit, if that is at least
    ``min(num_rows, MIN_ROWS)``. Otherwise vocabulary blocks (two passes): as many rows as fit
    with ``VOCAB_TARGET`` classes per block, and then as many classes as fit with those rows; if
    fewer than ``min(num_rows, MIN_ROWS)`` rows fit that way, that many rows (fewer if even
    ``VOCAB_ALIGN`` classes do not fit) with as many classes as fit (a multiple of
    ``VOCAB_ALIGN``). Rows and classes are then spread evenly over the fewest blocks of that
    size, so that no block is a small remainder. Raises ValueError when not even one row of
    ``VOCAB_ALIGN`` classes fits.

    Why: every row block streams ``W`` (and ``dW``) through memory once per GEMM, so few, tall
    row blocks keep the GEMMs compute-bound; vocabulary blocks cost one extra logits GEMM but
    re-read only the small ``(R, D)`` row block per vocabulary block.
    """
    v = w.num_classes
    n = max(num_rows, 1)
    k_default = default_kernel_rows(w)

    def full(rows: int) -> int:
        return working_bytes(w, rows, v, min(rows, k_default), False)

    rows = _largest(lambda r: full(r) <= budget, n)
    wanted = min(n, MIN_ROWS)
    if rows >= wanted or v <= VOCAB_ALIGN:
        if rows < 1:
            raise ValueError(_too_small(budget, full(1)))
        rows = _balanced(n, rows)
        return BlockPlan(rows, v, min(rows, k_default), False, budget, full(rows))

    def split(rows: int, vocab: int) -> int:
        return working_bytes(w, rows, vocab, 0, True)

    step = VOCAB_ALIGN
    rows = _largest(lambda r: split(r, min(v, VOCAB_TARGET)) <= budget, n)
    if rows < wanted:
        rows = wanted
        if split(rows, step) > budget:
            rows = _largest(lambda r: split(r, step) <= budget, wanted)
            if rows < 1:
                raise ValueError(_too_small(budget, split(1, step)))
    rows = _balanced(n, rows)
    units = -(-v // step)
    units = _balanced(units, _largest(lambda u: split(rows, u * step) <= budget, units))
    vocab = min(v, units * step)
    return BlockPlan(rows, vocab, 0, True, budget, split(rows, vocab))


def _too_small(budget: int, needed: int) -> str:
    return (
        f"memory_budget={budget} bytes is too small for linear_cross_entropy: the smallest "
        f"block needs {needed} bytes"
    )


# ------------------------------------------------------------------------------------------------
# the engine


class BlockResult(NamedTuple):
    """Per-row losses and lse (accumulation dtype, 0 for ignored rows) and requested gradients."""

    loss: torch.Tensor
    lse: torch.Tensor
    grad_input: torch.Tensor | None
    grad_weight: torch.Tensor | None
    grad_bias: torch.Tensor | None


@functools.cache
def _float32_output_gemm() -> bool:
    """Whether this torch has CUDA GEMMs of float16/bfloat16 operands with a float32 output
    (``torch.mm(..., out_dtype=torch.float32)``); checked once, on first use."""
    import torch

    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device="cuda")
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):
        return False


def _row_kernel(kernel: str):
    if kernel == "cpu":
        from crossent.backends import cpu

        def run(z, t, w, options, grad, scale, kernel_rows):
            return cpu.cross_entropy_rows(
                z, t, w, options, grad, row_scale=scale, block_rows=kernel_rows or None
            )

        return run
    if kernel == "triton":
        from crossent.backends.triton.cross_entropy import cross_entropy_rows

        def run(z, t, w, options, grad, scale, kernel_rows):
            return cross_entropy_rows(z, t, w, options, grad, row_scale=scale)

        return run
    raise ValueError(f"unknown row kernel {kernel!r}; available: {', '.join(KERNELS)}")


class _Engine:
    """State shared by the blocks of one call: inputs, options, buffers and accumulators."""

    def __init__(
        self, x, weight_matrix, bias, target, class_weight, options, plan, kernel, row_scale, grads
    ):
        import torch

        self.x, self.w, self.b, self.target = x, weight_matrix, bias, target
        self.options, self.plan = options, plan
        self.acc = accumulation_dtype(x.dtype)
        self.low = x.dtype != self.acc
        self.probs = target.dtype.is_floating_point
        self.class_weight = class_weight
        self.row_scale = row_scale
        # A uniform scale on CPU (1/D of ``mean``) becomes the alpha of the gradient GEMMs, so the
        # row kernel writes the unscaled gradient and skips one multiply over the logits block.
        self.alpha = 1.0
        if (
            row_scale is not None
            and row_scale.dim() == 0
            and row_scale.device.type == "cpu"
            and not plan.vocab_blocked
        ):
            self.alpha = float(row_scale)
            self.row_scale = None
        self.want_x, self.want_w, self.want_b = grads
        self.want_grad = any(grads)
        n, d = x.shape
        v = weight_matrix.shape[0]
        device = x.device
        self.kernel = _row_kernel(kernel) if not plan.vocab_blocked else None
        # Tensor-core path (float16/bfloat16 with the Triton kernel, on CUDA): the logits block
        # stays in the input dtype; the kernel reads it, computes in float32 and overwrites it
        # with dZ rounded once (as torch's own backward rounds it); dX = dZ @ W runs in the
        # input dtype and dW accumulates in float32 through GEMMs with a float32 output, so no
        # float32 copy of the logits, of dZ or of X is ever made.
        self.tensor_cores = self.low and kernel == "triton" and not plan.vocab_blocked
        block = plan.rows * max(plan.vocab, 1)
        logits_dtype = x.dtype if self.tensor_cores else self.acc
        self.logits_buf = torch.empty(block, dtype=logits_dtype, device=device)
        self.shadow_buf = (
            torch.empty(block, dtype=x.dtype, device=device)
            if self.low and not self.tensor_cores
            else None
        )
        self.x_acc_buf = (
            torch.empty(plan.rows * d, dtype=self.acc, device=device)
            if self.low and self.want_w and not self.tensor_cores
            else None
        )
        self.loss = torch.zeros(n, dtype=self.acc, device=device)
        self.lse = torch.zeros(n, dtype=self.acc, device=device)
        # Written (not accumulated) by the first row block; zeroed by run() if there is none.
        # On the tensor-core path with a single row block, dW is one GEMM (float32 accumulation
        # inside it) written straight in the input dtype: no float32 accumulator at all.
        single_block = self.tensor_cores and plan.rows >= n
        w_dtype = x.dtype if single_block else self.acc
        self.grad_w = _empty_gradient((v, d), w_dtype, device) if self.want_w else None
        self.grad_b = torch.empty(v, dtype=self.acc, device=device) if self.want_b else None
        self.grad_x = None  # allocated by run(): zeros only when rows are skipped
        self.first_block = True
        if plan.vocab_blocked:
            vb = plan.vocab
            self.cw_acc = None if class_weight is None else class_weight.to(self.acc)
            self.tanh_buf = (
                torch.empty(block, dtype=self.acc, device=device)
                if options.softcap is not None
                else None
            )
            self.q_buf = torch.empty(block, dtype=self.acc, device=device) if self.probs else None
            self.w_acc_buf = (
                torch.empty(vb * d, dtype=self.acc, device=device)
                if self.low and self.want_x
                else None
            )

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _view(buf, rows: int, cols: int):
        return buf[: rows * cols].view(rows, cols)

    def _logits(self, x_b, c0: int, c1: int):
        """``x_b @ W[c0:c1].T + b[c0:c1]`` into the logits buffer (accumulation dtype)."""
        import torch

        r = x_b.shape[0]
        out = self._view(self.logits_buf, r, c1 - c0)
        gemm_out = out if self.shadow_buf is None else self._view(self.shadow_buf, r, c1 - c0)
        w_t = self.w[c0:c1].t()
        if self.b is None:
            torch.mm(x_b, w_t, out=gemm_out)
        else:
            torch.addmm(self.b[c0:c1], x_b, w_t, out=gemm_out)
        if gemm_out is not out:
            out.copy_(gemm_out)
        return out

    def _product(self, a, b, out, accumulate: bool) -> None:
        """``out = alpha * a @ b``, plus ``out`` when ``accumulate``."""
        import torch

        if out.dtype != a.dtype:  # tensor-core path: low-precision operands, float32 output
            if out.device.type == "cuda" and _float32_output_gemm():
                if accumulate:
                    torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
                else:
                    torch.mm(a, b, out_dtype=out.dtype, out=out)
                return
            if out.device.type == "cuda":  # older torch: each block's product rounded once
                product = torch.mm(a, b)
                if accumulate:
                    out.add_(product)
                else:
                    out.copy_(product)
                return
            a, b = a.to(out.dtype), b.to(out.dtype)  # no out_dtype kernel off CUDA (tests)
        if self.alpha == 1.0:
            if accumulate:
                out.addmm_(a, b)
            else:
                torch.mm(a, b, out=out)
        else:  # beta=0 ignores the (uninitialised) contents of out
            torch.addmm(out, a, b, beta=1 if accumulate else 0, alpha=self.alpha, out=out)

    def _accumulate_weight_grads(self, dz, x_acc_b, c0: int, c1: int) -> None:
        import torch

        if self.grad_w is not None:
            self._product(dz.t(), x_acc_b, self.grad_w[c0:c1], not self.first_block)
        if self.grad_b is not None:
            column_sums = dz.sum(0, dtype=self.grad_b.dtype)
            if self.first_block:
                torch.mul(column_sums, self.alpha, out=self.grad_b[c0:c1])
            else:
                self.grad_b[c0:c1].add_(column_sums, alpha=self.alpha)

    def _input_rows(self, x_b):
        """``x_b`` in the accumulation dtype (for the float32 ``dW`` GEMM)."""
        if self.x_acc_buf is None:
            return x_b
        return self._view(self.x_acc_buf, *x_b.shape).copy_(x_b)

    # -- one block of rows, full vocabulary ------------------------------------------------------

    def full_vocabulary(self, x_b, t_b, s_b, dx_out):
        """Losses and lse of one row block through the row kernel; gradients accumulated."""

        v = self.w.shape[0]
        z = self._logits(x_b, 0, v)
        grad = z if self.want_grad else None
        loss, lse = self.kernel(
            z, t_b, self.class_weight, self.options, grad, s_b, self.plan.kernel_rows
        )
        if self.want_grad:
            if dx_out is not None:
                dz = z if self.shadow_buf is None else self._view(self.shadow_buf, *z.shape)
                self._product(dz if dz is z else dz.copy_(z), self.w, dx_out, False)
            if self.grad_w is not None or self.grad_b is not None:
                self._accumulate_weight_grads(z, self._input_rows(x_b), 0, v)
        return loss, lse

    # -- one block of rows, vocabulary blocks (two passes) ---------------------------------------

    def _capped_logits(self, x_b, c0: int, c1: int):
        """Logits of classes ``[c0, c1)``, soft-capped in place (``tanh`` kept for the
        chain rule)."""
        import torch

        z = self._logits(x_b, c0, c1)
        cap = self.options.softcap
        if cap is not None:
            t = self._view(self.tanh_buf, x_b.shape[0], c1 - c0)
            torch.div(z, cap, out=t).tanh_()
            torch.mul(t, cap, out=z)
        return z

    @staticmethod
    def _local_target(index, kept_b, c0: int, c1: int):
        """Rows whose target lies in ``[c0, c1)``, and the targets' columns in that block."""
        import torch

        inside = (index >= c0) & (index < c1) & kept_b
        return inside, torch.where(inside, index - c0, torch.zeros_like(index))[:, None]

    def _lse_pass(self, x_b, index, kept_b):
        """Pass 1: the row log-sum-exps (online over vocabulary blocks) and target logits."""
        import torch

        r, v, vb = x_b.shape[0], self.w.shape[0], self.plan.vocab
        row_max = torch.full((r,), float("-inf"), dtype=self.acc, device=x_b.device)
        sum_exp = torch.zeros(r, dtype=self.acc, device=x_b.device)
        z_y = None if index is None else torch.zeros_like(sum_exp)
        for c0 in range(0, v, vb):
            c1 = min(c0 + vb, v)
            z = self._capped_logits(x_b, c0, c1)
            if index is not None:
                inside, local = self._local_target(index, kept_b, c0, c1)
                z_y.add_(torch.where(inside, z.gather(1, local).squeeze(1), 0.0))
            new_max = torch.maximum(row_max, z.amax(1))
            shift = torch.where(torch.isfinite(new_max), new_max, 0.0)
            sum_exp.mul_(torch.exp(row_max - shift))
            sum_exp.add_(z.sub_(shift[:, None]).exp_().sum(1))
            row_max = new_max
        lse = torch.where(torch.isfinite(row_max), row_max, 0.0) + torch.log(sum_exp)
        # A +inf logit makes the whole row NaN in torch's log_softmax (inf - inf), as in the
        # single-block plan; an online shift of 0 would give lse = inf and finite gradients.
        lse = torch.where(row_max == float("inf"), float("nan"), lse)
        return lse, z_y

    def vocabulary_blocks(self, x_b, t_b, s_b, kept_b, dx_out):
        """Losses and lse of one row block through vocabulary blocks; gradients accumulated."""
        import torch

        opts = self.options
        eps, zeta, cap = float(opts.label_smoothing), float(opts.z_loss), opts.softcap
        r = x_b.shape[0]
        v = self.w.shape[0]
        vb = self.plan.vocab
        acc, device = self.acc, x_b.device
        probs = self.probs
        w = self.cw_acc
        total_weight = float(v) if w is None else w.sum()

        def zeros():
            return torch.zeros(r, dtype=acc, device=device)

        index = None if probs else torch.where(kept_b, t_b, torch.zeros_like(t_b))
        lse, z_y = self._lse_pass(x_b, index, kept_b)

        # pass 2 (gradients, and the sums of smoothing / probability-target losses):
        # row scale s_i (0 for ignored rows) and the per-row coefficients of the gradient
        scale = torch.ones(r, dtype=acc, device=device) if s_b is None else s_b.to(acc)
        scale = torch.broadcast_to(scale, (r,))
        if not probs:
            scale = torch.where(kept_b, scale, 0.0)
            w_y = kept_b.to(acc) if w is None else torch.where(kept_b, w[index], 0.0)
        need_sums = eps > 0 or probs
        sum_w_nl = zeros() if need_sums else None  # sum_c w_c (lse - z_c)
        sum_wq_nl = zeros() if probs else None  # sum_c w_c q_c (lse - z_c)
        if probs:
            sum_wq = zeros()  # sum_c w_c q_c (row total, needed by every block's gradient)
            for c0 in range(0, v, vb):
                c1 = min(c0 + vb, v)
                q = self._view(self.q_buf, r, c1 - c0).copy_(t_b[:, c0:c1])
                sum_wq.add_(q.sum(1) if w is None else torch.mv(q, w[c0:c1]))

        if self.want_grad or need_sums:
            if probs:
                coef = scale * ((1 - eps) * sum_wq + (eps / v) * total_weight)
            else:
                coef = scale * ((1 - eps) * w_y + (eps / v) * total_weight)
                target_coef = scale * ((1 - eps) * w_y)
            if zeta:
                coef = coef + (2 * zeta) * scale * lse
            smooth_coef = scale * (eps / v) if eps > 0 else None
            x_acc_b = self._input_rows(x_b) if self.grad_w is not None else None
            dx_acc = (
                torch.zeros((r, x_b.shape[1]), dtype=acc, device=device)
                if dx_out is not None and self.want_grad
                else None
            )
            for c0 in range(0, v, vb):
                c1 = min(c0 + vb, v)
                z = self._capped_logits(x_b, c0, c1)
                nl = z.neg_().add_(lse[:, None])  # lse - z, in place
                w_blk = None if w is None else w[c0:c1]
                if need_sums:
                    sum_w_nl.add_(nl.sum(1) if w_blk is None else torch.mv(nl, w_blk))
                if probs:
                    wq = self._view(self.q_buf, r, c1 - c0).copy_(t_b[:, c0:c1])
                    if w_blk is not None:
                        wq.mul_(w_blk)
                    sum_wq_nl.add_(torch.bmm(wq.unsqueeze(1), nl.unsqueeze(2)).view(r))
                if not self.want_grad:
                    continue
                p = nl.neg_().exp_()  # softmax, in place
                g = p.mul_(coef[:, None])
                if probs:
                    if eps != 1.0:
                        g.sub_(wq.mul_(scale[:, None]), alpha=1 - eps)
                else:
                    inside, local = self._local_target(index, kept_b, c0, c1)
                    picked = g.gather(1, local)
                    picked.sub_(torch.where(inside, target_coef, 0.0)[:, None])
                    g.scatter_(1, local, picked)
                if smooth_coef is not None:
                    if w_blk is None:
                        g.sub_(smooth_coef[:, None])
                    else:
                        g.addr_(smooth_coef, w_blk, alpha=-1.0)
                if cap is not None:
                    t = self._view(self.tanh_buf, r, c1 - c0)
                    g.addcmul_(g, t.mul_(t), value=-1.0)
                if dx_acc is not None:
                    w_rows = self.w[c0:c1]
                    if self.w_acc_buf is not None:
                        w_rows = self._view(self.w_acc_buf, c1 - c0, w_rows.shape[1]).copy_(w_rows)
                    dx_acc.addmm_(g, w_rows)
                self._accumulate_weight_grads(g, x_acc_b, c0, c1)
            if dx_acc is not None:
                dx_out.copy_(dx_acc)

        if probs:
            loss = (1 - eps) * sum_wq_nl
            if eps > 0:
                loss = loss + (eps / v) * sum_w_nl
        else:
            loss = (1 - eps) * w_y * (lse - z_y)
            if eps > 0:
                loss = loss + (eps / v) * sum_w_nl
        if zeta:
            loss = loss + zeta * lse * lse
        if not probs:
            loss = torch.where(kept_b, loss, 0.0)
            lse = torch.where(kept_b, lse, 0.0)
        return loss, lse

    # -- the walk over row blocks ----------------------------------------------------------------

    def run(self, kept_rows):
        """Process the rows (all, or the ``kept_rows`` index) block by block."""
        import torch

        n = self.x.shape[0]
        count = n if kept_rows is None else kept_rows.numel()
        per_row_scale = self.row_scale is not None and self.row_scale.dim() > 0
        if self.want_x:
            self.grad_x = (
                _empty_gradient(self.x.shape, self.x.dtype, self.x.device)
                if kept_rows is None
                else torch.zeros_like(self.x)
            )
        for start in range(0, count, self.plan.rows):
            stop = min(start + self.plan.rows, count)
            if kept_rows is None:
                rows = slice(start, stop)
                x_b, t_b = self.x[rows], self.target[rows]
                s_b = self.row_scale[rows] if per_row_scale else self.row_scale
                dx_out = self.grad_x[rows] if self.grad_x is not None else None
            else:
                idx = kept_rows[start:stop]
                x_b = self.x.index_select(0, idx)
                t_b = self.target.index_select(0, idx)
                s_b = self.row_scale.index_select(0, idx) if per_row_scale else self.row_scale
                dx_out = torch.empty_like(x_b) if self.want_x else None
            if self.plan.vocab_blocked:
                kept_b = (
                    torch.ones(stop - start, dtype=torch.bool, device=x_b.device)
                    if self.probs
                    else t_b != self.options.ignore_index
                )
                loss_b, lse_b = self.vocabulary_blocks(x_b, t_b, s_b, kept_b, dx_out)
            else:
                loss_b, lse_b = self.full_vocabulary(x_b, t_b, s_b, dx_out)
            if kept_rows is None:
                self.loss[rows] = loss_b
                self.lse[rows] = lse_b
            else:
                self.loss.index_copy_(0, idx, loss_b)
                self.lse.index_copy_(0, idx, lse_b)
                if dx_out is not None:
                    self.grad_x.index_copy_(0, idx, dx_out)
            self.first_block = False
        if self.first_block:  # no rows at all
            for grad in (self.grad_w, self.grad_b):
                if grad is not None:
                    grad.zero_()

    def result(self) -> BlockResult:
        grad_w = None if self.grad_w is None else self.grad_w.to(self.w.dtype)
        grad_b = None if self.grad_b is None else self.grad_b.to(self.b.dtype)
        return BlockResult(self.loss, self.lse, self.grad_x, grad_w, grad_b)


def _empty_gradient(shape, dtype, device):
    """An uninitialised gradient buffer (large CPU ones from the CPU kernel's buffer pool)."""
    import torch

    if device.type == "cpu":
        from crossent.backends import cpu

        return cpu.empty_gradient(torch.empty((), dtype=dtype).expand(*shape))
    return torch.empty(shape, dtype=dtype, device=device)


def kept_row_index(target: torch.Tensor, ignore_index: int) -> torch.Tensor | None:
    """Indices of the rows to process on CPU, or None for "all rows in order".

    None when the target holds probabilities, when no row is ignored, or off the CPU (where
    counting the kept rows would synchronise the device; ignored rows are masked instead).
    """
    import torch

    if target.dtype.is_floating_point or target.device.type != "cpu":
        return None
    kept = target != ignore_index
    if bool(kept.all()):
        return None
    return torch.nonzero(kept).squeeze(1)


def linear_cross_entropy_blocks(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    options: RowOptions,
    plan: BlockPlan,
    *,
    kernel: str = "cpu",
    row_scale: torch.Tensor | None = None,
    grad_input: bool = False,
    grad_weight: bool = False,
    grad_bias: bool = False,
) -> BlockResult:
    """Row losses and lse of ``cross_entropy(input @ linear_weight.T + linear_bias, target)``.

    Args:
        input: ``(N, D)`` floating, unit stride along ``D``.
        linear_weight: ``(V, D)``, the input's dtype, unit stride along ``D``.
        linear_bias: ``(V,)`` or None.
        target: ``(N,)`` int64 class indices (in range or ``ignore_index``) or ``(N, V)``
            floating probabilities.
        weight: ``(V,)`` class weights or None.
        options: the row options (:class:`crossent.backends.rows.RowOptions`).
        plan: the block plan (:func:`plan_blocks`).
        kernel: ``"cpu"`` (blocked torch ops, any device) or ``"triton"`` (CUDA) row kernel.
        row_scale: None (1), a 0-d or an ``(N,)`` tensor ``s``: the gradients are those of
            ``sum_i s_i * loss_i``.
        grad_input, grad_weight, grad_bias: which gradients to compute.

    Returns:
        :class:`BlockResult`: ``loss`` and ``lse`` ``(N,)`` in the accumulation dtype (0 for
        ignored rows); ``grad_input`` ``(N, D)`` in the input dtype; ``grad_weight`` ``(V, D)``
        and ``grad_bias`` ``(V,)`` in their parameters' dtypes (accumulated in float32 for
        low-precision inputs); None where not requested.

    >>> import torch
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> W = torch.tensor([[2.0, 0.0], [0.0, 4.0], [0.5, 0.5]], dtype=torch.float64)
    >>> plan = plan_blocks(workload(3, 2, torch.float64), 2, 2**20)
    >>> y = torch.tensor([0, 1])
    >>> res = linear_cross_entropy_blocks(x, W, None, y, None, RowOptions(), plan)
    >>> [round(v, 6) for v in res.loss.tolist()]
    [0.306356, 0.047373]
    """
    engine = _Engine(
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        options,
        plan,
        kernel,
        row_scale,
        (grad_input, grad_weight, grad_bias),
    )
    engine.run(kept_row_index(target, options.ignore_index))
    return engine.result()
