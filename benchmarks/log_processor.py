"""Measure what the trace-context log processor adds to one structlog line.

A structlog chain like the one in ``benchmarks/app.py`` renders one JSON line
per call to an in-memory sink, inside an active span. Four chains are timed:

- ``baseline``: no trace processor;
- ``static_ids``: a processor that adds two fixed ID strings, which shows
  what rendering the two extra fields costs;
- ``add_trace_ids``: with :func:`dtc_otel.add_trace_ids`;
- ``naive``: with a processor that calls ``trace.get_current_span()`` and
  formats both IDs on every line.

Two span patterns are timed. In ``same-span`` every line is logged from one
span, as when a request logs several lines. In ``new-span`` each line is
logged from another span than the line before, as in the HTTP benchmark,
where 32 concurrent requests log one line each, so no cached IDs can be
reused. Both patterns attach and detach a span context around each line in
every chain, so that cost cancels out of the differences.

The chains take turns in short batches, and the added cost is the median of
the paired differences to the baseline batch of the same turn, so that a slow
moment of the machine hits all chains alike. The processors are also timed
alone, called directly, against a processor that does nothing.

Usage: python benchmarks/log_processor.py [--lines 2000] [--repeats 200]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, MutableMapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import structlog
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider

from dtc_otel import add_trace_ids

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
# Spans cycled through by the new-span pattern. There are more of them than
# the 32 concurrent requests of the HTTP benchmark.
SPAN_COUNT = 64
GOAL_MAX_ADDED_NS = 1000

STATIC_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
STATIC_SPAN_ID = "b7ad6b7169203331"

Processor = Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]


def naive_trace_ids(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Add both IDs of the current span, formatted anew on every line."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = format(span_context.trace_id, "032x")
        event_dict["span_id"] = format(span_context.span_id, "016x")

    return event_dict


def static_ids(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Add two fixed IDs without looking at the span."""
    event_dict["trace_id"] = STATIC_TRACE_ID
    event_dict["span_id"] = STATIC_SPAN_ID

    return event_dict


def no_op(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Return the event unchanged: the reference for timing processors alone."""
    return event_dict


CHAINS: dict[str, Processor | None] = {
    "baseline": None,
    "static_ids": static_ids,
    "add_trace_ids": add_trace_ids,
    "naive": naive_trace_ids,
}


def build_logger(trace_processor: Processor | None, sink: io.StringIO) -> Any:
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if trace_processor is not None:
        processors.append(trace_processor)
    processors.append(structlog.processors.JSONRenderer())

    # bind() turns the lazy proxy into the bound logger, as
    # cache_logger_on_first_use does in an app.
    return structlog.wrap_logger(
        structlog.WriteLogger(sink),
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    ).bind()


def time_lines(logger: Any, sink: io.StringIO, contexts: list[context.Context], lines: int) -> float:
    """Log *lines* lines, attaching the next of *contexts* around each, and return ns per line."""
    sink.seek(0)
    sink.truncate()
    count = len(contexts)
    attach = context.attach
    detach = context.detach
    info = logger.info

    start = time.perf_counter_ns()
    for index in range(lines):
        token = attach(contexts[index % count])
        info("item read", item_id=index)
        detach(token)
    elapsed = time.perf_counter_ns() - start

    return elapsed / lines


def time_processor_alone(processor: Processor, contexts: list[context.Context], lines: int) -> float:
    """Call only *processor* with the same context pattern, and return ns per call, context switch included."""
    count = len(contexts)
    attach = context.attach
    detach = context.detach

    start = time.perf_counter_ns()
    for index in range(lines):
        token = attach(contexts[index % count])
        processor(None, "info", {"event": "item read", "item_id": index})
        detach(token)
    elapsed = time.perf_counter_ns() - start

    return elapsed / lines


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Collect garbage, then keep the collector off while loops are timed, as timeit does."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def check_chains(loggers: dict[str, Any], sink: io.StringIO, span_context: context.Context) -> None:
    """Raise RuntimeError unless exactly the chains with a trace processor render a ``trace_id``."""
    token = context.attach(span_context)
    try:
        for name, logger in loggers.items():
            sink.seek(0)
            sink.truncate()
            logger.info("check")
            line = json.loads(sink.getvalue())
            expected = CHAINS[name] is not None
            if ("trace_id" in line) != expected:
                raise RuntimeError(f"chain {name!r} rendered {line!r}, but trace_id expected is {expected}")
    finally:
        context.detach(token)


def paired_median(samples: list[float], reference: list[float]) -> float:
    return statistics.median(value - base for value, base in zip(samples, reference))


def measure_pattern(
    loggers: dict[str, Any], sink: io.StringIO, contexts: list[context.Context], lines: int, repeats: int
) -> dict[str, Any]:
    alone_processors: dict[str, Processor] = {
        "no_op": no_op,
        **{name: processor for name, processor in CHAINS.items() if processor is not None},
    }
    samples: dict[str, list[float]] = {name: [] for name in loggers}
    alone_samples: dict[str, list[float]] = {name: [] for name in alone_processors}
    for _ in range(repeats):
        with gc_paused():
            for name, logger in loggers.items():
                samples[name].append(time_lines(logger, sink, contexts, lines))
            for name, processor in alone_processors.items():
                alone_samples[name].append(time_processor_alone(processor, contexts, lines))

    return {
        "ns_per_line": {name: statistics.median(values) for name, values in samples.items()},
        "added_ns_per_line": {
            name: paired_median(samples[name], samples["baseline"]) for name in samples if name != "baseline"
        },
        "processor_ns_per_call": {
            name: paired_median(alone_samples[name], alone_samples["no_op"]) for name in alone_samples if name != "no_op"
        },
        "ns_per_line_samples": samples,
        "processor_with_context_switch_ns_samples": alone_samples,
    }


def measure(lines: int, repeats: int) -> dict[str, Any]:
    tracer = TracerProvider().get_tracer("benchmarks.log_processor")
    spans = [tracer.start_span(f"request {index}") for index in range(SPAN_COUNT)]
    patterns = {
        "same-span": [trace.set_span_in_context(spans[0])],
        "new-span": [trace.set_span_in_context(span) for span in spans],
    }
    sink = io.StringIO()
    loggers = {name: build_logger(processor, sink) for name, processor in CHAINS.items()}
    check_chains(loggers, sink, patterns["same-span"][0])

    results = {
        pattern: measure_pattern(loggers, sink, contexts, lines, repeats) for pattern, contexts in patterns.items()
    }
    for span in spans:
        span.end()

    return results


def print_table(results: dict[str, Any]) -> None:
    print("| Pattern | Chain | ns per line (median) | added ns per line vs baseline | processor alone, ns per call |")
    print("| --- | --- | ---: | ---: | ---: |")
    for pattern, entry in results.items():
        for name, value in entry["ns_per_line"].items():
            added = entry["added_ns_per_line"].get(name)
            alone = entry["processor_ns_per_call"].get(name)
            added_text = "-" if added is None else f"{added:+.0f}"
            alone_text = "-" if alone is None else f"{alone:.0f}"
            print(f"| {pattern} | {name} | {value:.0f} | {added_text} | {alone_text} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time structlog lines with and without the trace-ID processor.")
    parser.add_argument("--lines", type=int, default=2_000, help="lines per timed batch (default: 2000)")
    parser.add_argument(
        "--repeats", type=int, default=200, help="batches per chain and pattern, of which medians are reported (default: 200)"
    )
    parser.add_argument("--output", type=Path, help="JSON result file (default: benchmarks/results/log_processor-<UTC time>.json)")
    options = parser.parse_args(argv)
    if not 100 <= options.lines <= 1_000_000:
        parser.error(f"--lines must be between 100 and 1000000, got {options.lines}")
    if not 3 <= options.repeats <= 10_000:
        parser.error(f"--repeats must be between 3 and 10000, got {options.repeats}")

    results = measure(options.lines, options.repeats)
    print_table(results)
    print()
    for pattern, entry in results.items():
        added = entry["added_ns_per_line"]["add_trace_ids"]
        verdict = "met" if added <= GOAL_MAX_ADDED_NS else "NOT met"
        print(f"{pattern}: add_trace_ids adds {added:.0f} ns per line (goal: <= {GOAL_MAX_ADDED_NS} ns): {verdict}")

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    output = options.output or RESULTS_DIR / f"log_processor-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "started_utc": stamp,
        "options": {"lines": options.lines, "repeats": options.repeats},
        "python": platform.python_version(),
        "structlog": metadata.version("structlog"),
        "opentelemetry-api": metadata.version("opentelemetry-api"),
        "results": results,
    }
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"raw results: {output}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
