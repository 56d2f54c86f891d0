"""Counters for `GET /metrics`, in the Prometheus text exposition format (version 0.0.4).

Everything here is plain in-process arithmetic on the trio thread: request handlers and the
log writer bump counters, the metrics route renders them. Gauges that already live elsewhere
(the log queue's depth) are read when rendered.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

# Upper bounds, in seconds, of the latency histograms' buckets.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        lines = []
        cumulative = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            cumulative += n
            lines.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {cumulative}')
        lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        wrap = f"{{{labels}}}" if labels else ""
        lines.append(f"{name}_sum{wrap} {self.total:.6f}")
        lines.append(f"{name}_count{wrap} {self.count}")
        return lines


@dataclass
class Metrics:
    rows_written: int = 0
    batches_written: int = 0
    write_latency: Histogram = field(default_factory=lambda: Histogram(WRITE_BUCKETS))
    records_spooled: int = 0
    records_replayed: int = 0
    records_quarantined: int = 0
    metadata_dropped: int = 0
    body_uploads_failed: Callable[[], int] = lambda: 0
    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    request_latency: dict[str, Histogram] = field(default_factory=dict)
    queue_depth: Callable[[], int] = lambda: 0
    # limits.py: refusals by limit kind, leases taken and given back, a lease's round trip.
    limit_refusals: dict[str, int] = field(default_factory=dict)
    limit_leases_taken: int = 0
    limit_leases_returned: int = 0
    limit_lease_latency: Histogram = field(default_factory=lambda: Histogram(WRITE_BUCKETS))
    limit_admitted_open: int = 0

    def observe_request(self, provider: str, status: int, seconds: float) -> None:
        key = (provider, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.request_latency.get(provider)
        if histogram is None:
            histogram = self.request_latency[provider] = Histogram(REQUEST_BUCKETS)
        histogram.observe(seconds)

    def render(self) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, lines: list[str]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)

        def counter(name: str, help_text: str, value: float) -> None:
            metric(name, "counter", help_text, [f"{name} {value}"])

        metric(
            "majordomo_log_queue_depth",
            "gauge",
            "Usage records waiting in memory for the log writer.",
            [f"majordomo_log_queue_depth {self.queue_depth()}"],
        )
        counter("majordomo_log_rows_written_total", "Usage rows inserted.", self.rows_written)
        counter("majordomo_log_batches_total", "Batches written.", self.batches_written)
        metric(
            "majordomo_log_write_seconds",
            "histogram",
            "Time to write one batch.",
            self.write_latency.render("majordomo_log_write_seconds"),
        )
        counter(
            "majordomo_log_spooled_total",
            "Usage records written to the local spool.",
            self.records_spooled,
        )
        counter(
            "majordomo_log_replayed_total",
            "Spooled usage records replayed into the database.",
            self.records_replayed,
        )
        counter(
            "majordomo_log_quarantined_total",
            "Spooled lines or records that could not be stored, set aside.",
            self.records_quarantined,
        )
        metric(
            "majordomo_limit_refusals_total",
            "counter",
            "Requests refused (429) by a key's limit, by kind (requests, tokens, usd).",
            [
                f'majordomo_limit_refusals_total{{kind="{kind}"}} {count}'
                for kind, count in sorted(self.limit_refusals.items())
            ],
        )
        counter(
            "majordomo_limit_leases_taken_total",
            "Leases taken from the shared limit windows.",
            self.limit_leases_taken,
        )
        counter(
            "majordomo_limit_leases_returned_total",
            "Unused leases given back (window rolled over, gateway stopping).",
            self.limit_leases_returned,
        )
        metric(
            "majordomo_limit_lease_seconds",
            "histogram",
            "Round trip of one lease.",
            self.limit_lease_latency.render("majordomo_limit_lease_seconds"),
        )
        counter(
            "majordomo_limit_admitted_open_total",
            "Requests admitted over an unknown limit with the database away (limits.fail_open).",
            self.limit_admitted_open,
        )
        counter(
            "majordomo_metadata_dropped_total",
            "X-Majordomo-* metadata entries dropped or cut for exceeding the limits.",
            self.metadata_dropped,
        )
        counter(
            "majordomo_body_uploads_failed_total",
            "Request/response bodies that could not be stored after retries.",
            self.body_uploads_failed(),
        )
        metric(
            "majordomo_requests_total",
            "counter",
            "Proxied requests by provider and status.",
            [
                f'majordomo_requests_total{{provider="{p}",status="{s}"}} {n}'
                for (p, s), n in sorted(self.requests.items())
            ],
        )
        histogram_lines: list[str] = []
        for provider, histogram in sorted(self.request_latency.items()):
            histogram_lines += histogram.render(
                "majordomo_request_duration_seconds", f'provider="{provider}"'
            )
        metric(
            "majordomo_request_duration_seconds",
            "histogram",
            "Time from request to the end of the response, by provider.",
            histogram_lines,
        )
        return "\n".join(out) + "\n"
