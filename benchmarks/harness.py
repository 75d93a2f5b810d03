"""Benchmark harness shared by every crossent performance suite: validate, then time, then measure.

Run a suite with ``python -m benchmarks <suite> [--quick] [--out DIR] [--threads N]`` from the
repository root (with ``PYTHONPATH=src`` unless crossent is installed). For every case the harness

1. **validates** each provider against a float64 reference (loss and every input gradient); a
   provider whose error exceeds its bound aborts the run (``ValidationError``): 8x the
   baseline provider's own error on the case, at least a few roundoffs of the dtype, at most
   ``DEFAULT_TOLERANCE`` (:func:`tolerance_bounds`);
2. **times** forward, backward and forward+backward, interleaving the providers run by run and
   reporting the median (``torch.set_num_threads(2)`` unless ``--threads``); each timed call
   follows an untimed call of the same provider (steady state, as in a training loop; ``--cold``
   turns this off); a provider's first call (the validation call) is reported as ``warmup_s``
   (it includes ``torch.compile``'s compilation) and never enters the medians;
3. **measures peak extra memory** of each provider in a fresh subprocess: peak RSS minus the RSS
   once the inputs exist (``/proc/self/clear_refs`` resets the high-water mark after a warm-up
   call; the child runs with ``MALLOC_MMAP_THRESHOLD_=131072`` so freed buffers leave the RSS,
   and crossent's gradient-buffer pool is emptied after the warm-up, so a pooled buffer counts);
4. prints a Markdown table (times, ratios to the baseline provider, memory, errors) and writes
   ``<suite>.csv``, ``<suite>.json`` and ``<suite>.md`` into ``--out`` (default ``results/``),
   together with the machine description, the load average and how busy the CPUs were with
   other work just before each case was timed (``--wait-idle S`` waits up to S seconds for an
   idle machine first; on a shared machine, compare only ratios measured in the same run).

Other options: ``--threads N``, ``--repeats K``, ``--providers NAME...``, ``--cases NAME...``,
``--no-memory``, ``--cold``. ``main(argv)`` is the programmatic entry point (e.g. for a CLI
command).

Writing a suite
---------------
A suite is a module ``benchmarks/<name>.py`` (or one listed in ``SUITES``) that defines::

    BASELINE: str                                   # provider name the ratios refer to
    def cases(quick: bool) -> list[Case]: ...
    def providers() -> list[Provider]: ...

``Case(name, params, make_inputs, reference_loss, ...)``: ``make_inputs()`` returns a fresh dict
of tensors (seeded); tensors that need a gradient have ``requires_grad=True``.
``reference_loss(inputs)`` computes the loss with plain torch ops; the harness calls it on float64
copies of the floating inputs to build the reference. ``reference_bytes`` (e.g. the logits' size)
is the unit of the ``peak / ref`` memory column.

``Provider(name, build, prepare=None, supports=None)``: ``build(case)`` returns the timed loss
function ``fn(state) -> scalar tensor`` (called once per case and process, so it may compile);
``prepare(inputs) -> state`` runs untimed before every call (default: the inputs themselves), for
example to clone logits that an in-place provider will overwrite; ``supports(case)`` may skip a
case. The backward is always ``loss.backward()``; gradients are read from the inputs' ``.grad``.

Example (the complete ``benchmarks/cross_entropy.py`` follows this pattern)::

    from benchmarks.harness import Case, Provider
    BASELINE = "torch eager"
    def providers():
        import torch.nn.functional as F
        return [Provider("torch eager", lambda case: lambda s: F.cross_entropy(s["x"], s["y"]))]
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Suite name -> module: the suites of this directory (named in error messages and ``--help``).
#: Others are looked up as ``benchmarks.<name>``, or as a module path.
SUITES: dict[str, str] = {
    name: f"benchmarks.{name}"
    for name in ("classifier", "cross_entropy", "cross_entropy_small", "linear", "linear_small",
                 "losses_small")
}  # fmt: skip

#: The most relative error a provider may have against the float64 reference, per input dtype.
#: Within that, each bound is relative to the baseline provider's own error on the same case
#: (``BASELINE_FACTOR`` times it, but never below ``TOLERANCE_FLOOR``): a gradient 5e-5 off in
#: float32 fails although it is far below 1e-4. The measured errors are reported next to the
#: times.
DEFAULT_TOLERANCE: dict[str, float] = {
    "float64": 1e-10,
    "float32": 1e-4,
    "float16": 1e-2,
    "bfloat16": 5e-2,
}
BASELINE_FACTOR = 8.0
#: A few roundoffs of the dtype (of its output, for half precision): what a correct result may
#: differ by whatever the baseline's own error.
TOLERANCE_FLOOR: dict[str, float] = {
    "float64": 1e-13,
    "float32": 1e-6,
    "float16": 2e-3,
    "bfloat16": 1e-2,
}

Inputs = dict[str, Any]


class ValidationError(AssertionError):
    """A provider disagrees with the float64 reference beyond the case tolerance."""


@dataclass(frozen=True)
class Case:
    """One benchmark configuration.

    ``dtype`` names the floating dtype under test (it selects the default tolerance);
    ``tolerance`` overrides it.
    """

    name: str
    params: Mapping[str, Any]
    make_inputs: Callable[[], Inputs]
    reference_loss: Callable[[Inputs], Any]
    dtype: str = "float32"
    reference_bytes: int = 0
    reference_label: str = "logits"
    tolerance: float | None = None


@dataclass(frozen=True)
class Provider:
    """One implementation under test (see the module docstring)."""

    name: str
    build: Callable[[Case], Callable[[Inputs], Any]]
    prepare: Callable[[Inputs], Inputs] | None = None
    supports: Callable[[Case], bool] | None = None


@dataclass
class Result:
    """Everything measured for one (case, provider) pair; times in seconds, memory in bytes."""

    suite: str
    case: str
    provider: str
    params: dict[str, Any]
    forward_s: float = math.nan
    backward_s: float = math.nan
    total_s: float = math.nan
    warmup_s: float = math.nan
    speedup: float = math.nan
    peak_extra_bytes: float = math.nan
    peak_ratio: float = math.nan
    loss_error: float = math.nan
    grad_error: float = math.nan
    samples: dict[str, list[float]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# suite loading


def load_suite(name: str) -> Any:
    """Import the suite module registered as ``name`` (or ``benchmarks.<name>``)."""
    module_name = SUITES.get(name, f"benchmarks.{name}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        known = ", ".join(sorted(SUITES))
        raise SystemExit(f"unknown benchmark suite {name!r}; registered suites: {known}") from None
    for attribute in ("cases", "providers"):
        if not hasattr(module, attribute):
            raise SystemExit(f"suite module {module_name} does not define {attribute}()")
    return module


def _baseline(module: Any, providers: Sequence[Provider]) -> str:
    return getattr(module, "BASELINE", providers[0].name)


def _select(items: Sequence[Any], names: Sequence[str] | None, what: str) -> list[Any]:
    if not names:
        return list(items)
    by_name = {item.name: item for item in items}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SystemExit(f"unknown {what} {missing}; available: {sorted(by_name)}")
    return [by_name[n] for n in names]


# ------------------------------------------------------------------------------------------------
# running one call


def _clear_grads(inputs: Inputs) -> None:
    for value in inputs.values():
        if getattr(value, "requires_grad", False):
            value.grad = None


def _state(provider: Provider, inputs: Inputs) -> Inputs:
    return provider.prepare(inputs) if provider.prepare is not None else inputs


def _timed_call(fn: Callable[[Inputs], Any], state: Inputs) -> tuple[float, float]:
    """Run one forward+backward; return (forward seconds, backward seconds)."""
    start = time.perf_counter()
    loss = fn(state)
    middle = time.perf_counter()
    loss.backward()
    end = time.perf_counter()
    return middle - start, end - middle


def _float64_copy(inputs: Inputs) -> Inputs:
    import torch

    copy: Inputs = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            copy[key] = value.detach().to(torch.float64).requires_grad_(value.requires_grad)
        else:
            copy[key] = value
    return copy


def _relative_error(value: Any, reference: Any) -> float:
    import torch

    value = value.detach().to(torch.float64)
    reference = reference.detach().to(torch.float64)
    if value.shape != reference.shape:
        return math.inf
    if reference.numel() == 0:
        return 0.0
    scale = reference.abs().max().item()
    diff = (value - reference).abs()
    # Treat matching non-finite entries (e.g. nan loss) as equal.
    same = (value == reference) | (value.isnan() & reference.isnan())
    diff = torch.where(same, torch.zeros_like(diff), diff)
    err = diff.max().item()
    return err / scale if scale > 0 else err


def validate(
    case: Case,
    providers: Sequence[Provider],
    built: Mapping[str, Callable],
    baseline: str | None = None,
) -> dict:
    """Compare every provider with the float64 reference; raise ValidationError if one is off.

    The bound on each error is :func:`tolerance_bounds` of the ``baseline`` provider's errors
    (the case's fixed tolerance when it sets one, or when the baseline is not among the
    providers). Returns ``{provider: (loss error, gradient error, first-call seconds)}``; the
    first call includes any compilation, so its time is reported as the warm-up time.
    """
    import torch

    inputs = case.make_inputs()
    ref_inputs = _float64_copy(inputs)
    needs_grad = [k for k, v in inputs.items() if getattr(v, "requires_grad", False)]
    loss64 = case.reference_loss(ref_inputs)
    ref_loss = loss64.detach()
    if needs_grad:
        loss64.backward()
    ref_grads = {k: ref_inputs[k].grad for k in needs_grad}
    del ref_inputs, loss64
    tolerance = case.tolerance if case.tolerance is not None else DEFAULT_TOLERANCE[case.dtype]
    errors: dict[str, tuple[float, float, float]] = {}
    for provider in providers:
        _clear_grads(inputs)
        state = _state(provider, inputs)
        start = time.perf_counter()
        loss = built[provider.name](state)
        loss_value = loss.detach().clone()
        loss.backward()
        first_call_s = time.perf_counter() - start
        loss_err = _relative_error(loss_value, ref_loss)
        grad_err = 0.0
        for key in needs_grad:
            grad = inputs[key].grad
            if grad is None:
                grad_err = math.inf
                break
            grad_err = max(grad_err, _relative_error(grad, ref_grads[key]))
        errors[provider.name] = (loss_err, grad_err, first_call_s)
        del state, loss
    if case.tolerance is None and baseline in errors:
        base_loss, base_grad, _ = errors[baseline]
        loss_bound, grad_bound = tolerance_bounds(case.dtype, base_loss, base_grad)
    else:
        loss_bound = grad_bound = tolerance
    for name, (loss_err, grad_err, _) in errors.items():
        if not (loss_err <= loss_bound and grad_err <= grad_bound):
            raise ValidationError(
                f"{case.name}: provider {name!r} is wrong: relative loss error {loss_err:.3g} "
                f"(bound {loss_bound:.3g}), gradient error {grad_err:.3g} (bound "
                f"{grad_bound:.3g}; the baseline {baseline!r} is the yardstick)"
            )
    _clear_grads(inputs)
    del inputs, ref_grads
    gc.collect()
    torch.manual_seed(0)
    return errors


def tolerance_bounds(dtype: str, baseline_loss: float, baseline_grad: float) -> tuple[float, float]:
    """``(loss bound, gradient bound)``: ``BASELINE_FACTOR`` times the baseline's own errors,
    at least ``TOLERANCE_FLOOR`` and at most ``DEFAULT_TOLERANCE`` of ``dtype``."""

    def bound(baseline_error: float) -> float:
        scaled = BASELINE_FACTOR * baseline_error if math.isfinite(baseline_error) else math.inf
        return min(DEFAULT_TOLERANCE[dtype], max(TOLERANCE_FLOOR[dtype], scaled))

    return bound(baseline_loss), bound(baseline_grad)


def cpu_busy_fraction(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy (any process) over ``seconds``; nan where /proc/stat is absent."""

    def sample() -> list[int] | None:
        try:
            with open("/proc/stat") as stat:
                return [int(v) for v in stat.readline().split()[1:9]]
        except (OSError, ValueError):
            return None

    before = sample()
    time.sleep(seconds)
    after = sample()
    if before is None or after is None:
        return math.nan
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta)
    idle = delta[3] + delta[4]  # idle + iowait
    return (total - idle) / total if total > 0 else math.nan


def wait_for_idle(limit_s: float, busy_below: float = 0.1) -> float:
    """Wait up to ``limit_s`` for the CPUs to be idle; return the last busy fraction seen."""
    deadline = time.monotonic() + limit_s
    busy = cpu_busy_fraction()
    while not busy < busy_below and time.monotonic() < deadline:
        busy = cpu_busy_fraction(2.0)
    return busy


def time_case(
    case: Case,
    providers: Sequence[Provider],
    built: Mapping[str, Callable],
    repeats: int,
    warm: bool = True,
) -> dict[str, dict[str, list[float]]]:
    """Interleaved timing: every repeat runs each provider in turn.

    With ``warm`` (the default) each timed call directly follows an untimed call of the same
    provider, so it meets the allocator and cache state of a training loop's steady state
    (its own buffers just freed), not the state the previous provider left behind; the
    interleaving still spreads slow drifts of a shared machine over all providers.
    """
    inputs = case.make_inputs()
    samples = {p.name: {"forward": [], "backward": [], "total": []} for p in providers}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for provider in providers:
                fn = built[provider.name]
                # Collect before the untimed call, not between it and the timed one: a
                # collection walks every Python object and evicts the caches, which costs a
                # small call about 1 ms (measured at 64 x 1000) that a training loop does not pay.
                gc.collect()
                if warm:
                    _clear_grads(inputs)
                    _timed_call(fn, _state(provider, inputs))
                _clear_grads(inputs)
                state = _state(provider, inputs)
                fwd, bwd = _timed_call(fn, state)
                del state
                record = samples[provider.name]
                record["forward"].append(fwd)
                record["backward"].append(bwd)
                record["total"].append(fwd + bwd)
    finally:
        if gc_was_enabled:
            gc.enable()
    _clear_grads(inputs)
    del inputs
    gc.collect()
    return samples


# ------------------------------------------------------------------------------------------------
# memory (child process)


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _release_caches() -> None:
    """Let go of what the warm-up left cached for reuse (crossent's gradient-buffer pool), so
    that the measured call's peak counts every buffer it needs, as a first call's would."""
    try:
        from crossent.backends import cpu
    except ImportError:  # pragma: no cover - crossent (or torch) missing
        return
    cpu.release_pooled_buffers()


def measure_memory_here(case: Case, provider: Provider) -> float:
    """Peak RSS growth (bytes) of one forward+backward, measured in the current process."""
    fn = provider.build(case)
    inputs = case.make_inputs()
    _timed_call(fn, _state(provider, inputs))  # warm-up: lazy initialisation, compilation
    _clear_grads(inputs)
    gc.collect()
    _release_caches()
    state = _state(provider, inputs)
    gc.collect()
    if _reset_peak_rss() and (base := _status_kib("VmRSS")) is not None:
        _timed_call(fn, state)
        peak = _status_kib("VmHWM")
        return float((peak - base) * 1024) if peak is not None else math.nan
    import resource  # fallback: no reset available, so only growth beyond the old peak shows

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _timed_call(fn, state)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024
    return float((after - before) * scale)


def measure_memory(
    suite: str, cases: Sequence[Case], provider: Provider, args: argparse.Namespace
) -> dict[str, float]:
    """Run :func:`measure_memory_here` for every case in one fresh interpreter per provider.

    Returns ``{case name: peak extra bytes}``; nan for a case the child could not measure.
    """
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    env["MALLOC_TRIM_THRESHOLD_"] = "0"
    command = [sys.executable, "-m", "benchmarks", "_memory", suite, "--provider", provider.name]
    command += ["--threads", str(args.threads), "--cases", *(case.name for case in cases)]
    if args.quick:
        command.append("--quick")
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root)
    measured: dict[str, float] = {case.name: math.nan for case in cases}
    for line in completed.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            measured[record["case"]] = float(record["peak_extra_bytes"])
    if completed.returncode != 0:
        print(f"  memory probe failed for {provider.name}: {completed.stderr[-2000:]}")
    return measured


def _memory_child(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks _memory")
    parser.add_argument("suite")
    parser.add_argument("--provider", required=True)
    parser.add_argument("--cases", nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    module = load_suite(args.suite)
    (provider,) = _select(module.providers(), [args.provider], "provider")
    for case in _select(module.cases(args.quick), args.cases, "case"):
        peak = measure_memory_here(case, provider)
        print(json.dumps({"case": case.name, "peak_extra_bytes": peak}), flush=True)
        gc.collect()


# ------------------------------------------------------------------------------------------------
# reporting


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine_description(threads: int) -> dict[str, Any]:
    """CPU model, core count, threads used, torch/python versions (for every result file)."""
    import torch

    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_1min": _load_average(),
    }


def _load_average() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not available on every platform
        return math.nan


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e3:.1f}"


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def _mib(nbytes: float) -> str:
    return "n/a" if math.isnan(nbytes) else f"{nbytes / 2**20:.0f}"


def _err(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1e}"


def markdown_table(results: Sequence[Result], machine: Mapping[str, Any], baseline: str) -> str:
    """The table printed and written to ``<suite>.md``."""
    lines = [
        f"Machine: {machine['cpu']} ({machine['cpu_capability']}), {machine['logical_cores']} "
        f"logical cores, {machine['threads']} threads, torch {machine['torch']}, "
        f"Python {machine['python']}, {machine['date']}, "
        f"load average {machine.get('load_average', 'n/a')}; "
        "CPU busy with other work just before timing each case: "
        + ", ".join(f"{k}: {v:.0%}" for k, v in machine.get("busy_before_timing", {}).items())
        + ".",
        f"Times are medians in ms; speedup = {baseline} fwd+bwd time / provider fwd+bwd time; "
        "peak = peak extra RSS during fwd+bwd (fresh process), in MiB and relative to the "
        "reference size; errors are relative to a float64 reference.",
        "",
        "| case | provider | fwd ms | bwd ms | fwd+bwd ms | speedup | peak MiB | peak/ref "
        "| loss err | grad err | warm-up s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.case} | {r.provider} | {_ms(r.forward_s)} | {_ms(r.backward_s)} "
            f"| {_ms(r.total_s)} | {_ratio(r.speedup)} | {_mib(r.peak_extra_bytes)} "
            f"| {_ratio(r.peak_ratio)} | {_err(r.loss_error)} | {_err(r.grad_error)} "
            f"| {r.warmup_s:.2f} |"
        )
    return "\n".join(lines) + "\n"


def write_results(
    out: Path, suite: str, results: Sequence[Result], machine: Mapping[str, Any], table: str
) -> None:
    """Write ``<suite>.csv``, ``<suite>.json`` and ``<suite>.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    columns = [
        "case",
        "provider",
        "forward_s",
        "backward_s",
        "total_s",
        "warmup_s",
        "speedup",
        "peak_extra_bytes",
        "peak_ratio",
        "loss_error",
        "grad_error",
    ]
    param_keys = sorted({k for r in results for k in r.params})
    with open(out / f"{suite}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["suite", *columns, *param_keys])
        for r in results:
            writer.writerow(
                [suite, *(getattr(r, c) for c in columns), *(r.params.get(k) for k in param_keys)]
            )
    payload = {
        "suite": suite,
        "machine": dict(machine),
        "results": [r.__dict__ for r in results],
    }
    (out / f"{suite}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    (out / f"{suite}.md").write_text(table)


# ------------------------------------------------------------------------------------------------
# driver


def run_suite(suite: str, args: argparse.Namespace) -> list[Result]:
    """Validate, time and measure every case of ``suite``; write and print the results."""
    import torch

    torch.set_num_threads(args.threads)
    module = load_suite(suite)
    all_providers = _select(module.providers(), args.providers, "provider")
    baseline = _baseline(module, all_providers)
    cases = _select(module.cases(args.quick), args.cases, "case")
    repeats = args.repeats if args.repeats else (3 if args.quick else 7)
    load_before = _load_average()
    busy_by_case: dict[str, float] = {}
    results: list[Result] = []
    for case in cases:
        providers = [p for p in all_providers if p.supports is None or p.supports(case)]
        print(f"[{suite}] {case.name}: building {len(providers)} providers", flush=True)
        built = {p.name: p.build(case) for p in providers}
        print(f"[{suite}] {case.name}: validating against float64", flush=True)
        errors = validate(case, providers, built, baseline)
        busy = wait_for_idle(args.wait_idle) if args.wait_idle else cpu_busy_fraction()
        busy_by_case[case.name] = busy
        print(
            f"[{suite}] {case.name}: timing ({repeats} interleaved repeats; CPUs "
            f"{busy:.0%} busy with other work just before)",
            flush=True,
        )
        samples = time_case(case, providers, built, repeats=repeats, warm=args.warm)
        del built
        gc.collect()
        case_results = []
        for provider in providers:
            s = samples[provider.name]
            case_results.append(
                Result(
                    suite=suite,
                    case=case.name,
                    provider=provider.name,
                    params=dict(case.params),
                    forward_s=statistics.median(s["forward"]),
                    backward_s=statistics.median(s["backward"]),
                    total_s=statistics.median(s["total"]),
                    warmup_s=errors[provider.name][2],
                    loss_error=errors[provider.name][0],
                    grad_error=errors[provider.name][1],
                    samples=s,
                )
            )
        base = next((r for r in case_results if r.provider == baseline), None)
        for r in case_results:
            if base is not None:
                r.speedup = base.total_s / r.total_s
        results.extend(case_results)
    if args.memory:
        by_name = {case.name: case for case in cases}
        for provider in all_providers:
            mine = [c for c in cases if provider.supports is None or provider.supports(c)]
            print(f"[{suite}] {provider.name}: peak memory (fresh process)", flush=True)
            measured = measure_memory(suite, mine, provider, args)
            for r in results:
                if r.provider == provider.name and r.case in measured:
                    r.peak_extra_bytes = measured[r.case]
                    if by_name[r.case].reference_bytes:
                        r.peak_ratio = r.peak_extra_bytes / by_name[r.case].reference_bytes
    machine = machine_description(args.threads)
    machine["load_average"] = f"{load_before} before / {machine.pop('load_average_1min')} after"
    machine["busy_before_timing"] = {k: round(v, 2) for k, v in busy_by_case.items()}
    table = markdown_table(results, machine, baseline)
    print()
    print(table)
    write_results(Path(args.out), suite, results, machine, table)
    print(f"wrote {Path(args.out) / suite}.{{csv,json,md}}")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Validate, time and measure crossent against torch (see benchmarks/harness).",
    )
    parser.add_argument("suite", help=f"suite to run: {', '.join(sorted(SUITES))} or a module")
    parser.add_argument("--quick", action="store_true", help="small shapes, a few repeats")
    parser.add_argument("--out", default="results", help="output directory (default: results/)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per provider")
    parser.add_argument("--providers", nargs="+", help="only these providers (names)")
    parser.add_argument("--cases", nargs="+", help="only these cases (names)")
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the memory subprocesses"
    )
    parser.add_argument(
        "--cold",
        dest="warm",
        action="store_false",
        help="time each call right after the previous provider's (default: after an untimed "
        "call of the same provider, as in a training loop)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before timing each case, wait up to S seconds for the CPUs to be idle "
        "(shared machines); the busy fraction seen is reported either way",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_memory":
        _memory_child(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    run_suite(args.suite, args)
    return 0
