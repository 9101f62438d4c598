"""A phase's figures from its request records: counts, usage totals, throughput, latency
percentiles, concurrency, goodput, windowed series and error examples.

`PhaseAccumulator` is the mergeable form: each shard adds its own records, ships `to_state()`
(JSON), and `merge` adds states exactly (integer counters, histogram buckets, window bins,
concurrency events), so `finish()` on the merged accumulator gives the same summary as one process
that saw every record. `summarize_phase` is the one-call form for a list of records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from loadgen.config import SloConfig
from loadgen.metrics.distinct import DistinctSent
from loadgen.metrics.histograms import METRICS, IntervalHistograms, LatencyHistograms
from loadgen.metrics.windows import ThroughputWindows
from loadgen.records import INVALID_OUTCOMES, Outcome, RequestRecord
from loadgen.results.schema import (
    Concurrency,
    ErrorExample,
    Goodput,
    LatencyStats,
    Pair,
    Phase,
    PhaseComparison,
    Requests,
    Span,
    TargetTotals,
    Throughput,
    Tokens,
    Window,
    Windows,
    Workload,
)

STATE_VERSION = 1
ERROR_EXAMPLES = 3  # error messages kept per outcome kind: those of the earliest-ending requests


def meets_slo(rec: RequestRecord, slo: SloConfig) -> bool:
    """Whether a request counts towards goodput: it succeeded and meets every threshold set.

    TTFT and E2E are taken from the intended send time (equal to the actual send in closed loop),
    so a backlog on the client side counts against the server's goodput as the user would see it.
    TPOT has no intended-time variant. A request with fewer than two output tokens has no TPOT and
    meets a TPOT threshold; one without usage cannot be checked and does not.
    """
    if not rec.outcome.is_success:
        return False
    if slo.ttft_ms:
        ttft = rec.ttft_intended
        if ttft is None or ttft * 1000.0 > slo.ttft_ms:
            return False
    if slo.tpot_ms:
        if rec.completion_tokens is None:
            return False
        tpot = rec.tpot
        if tpot is None:
            if rec.completion_tokens >= 2:  # tokens but no first-token time: unverifiable
                return False
        elif tpot * 1000.0 > slo.tpot_ms:
            return False
    return not (slo.e2e_ms and rec.e2e_intended * 1000.0 > slo.e2e_ms)


def _slo_json(slo: SloConfig) -> dict[str, float]:
    return {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms, "e2e_ms": slo.e2e_ms}


def _error_message(rec: RequestRecord) -> str:
    if rec.error:
        return rec.error
    if rec.status is not None:
        return f"HTTP {rec.status}"
    return str(rec.outcome)


def _rate(count: float, duration: float | None) -> float | None:
    return count / duration if duration else None


class PhaseAccumulator:
    """Everything a phase summary needs, accumulated one finished request at a time."""

    def __init__(
        self,
        phase: str,
        *,
        slo: SloConfig | None = None,
        window: float = 10.0,
        origin: float = 0.0,
        error_examples: int = ERROR_EXAMPLES,
        target_concurrency: int | None = None,
    ) -> None:
        self.phase = phase
        self.slo = slo if slo is not None else SloConfig()
        # What the phase asked for in flight (the whole phase's, in every shard): closed-loop
        # streams, or an open loop's max_concurrency cap; None for an uncapped open loop.
        self.target_concurrency = target_concurrency
        self.error_examples = error_examples
        self.histograms = IntervalHistograms(window, origin)
        self.windows = ThroughputWindows(window, origin)
        self.outcomes: dict[str, int] = {}
        self.finish_reasons: dict[str, int] = {}
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.cached_tokens = 0
        self.cached_reported = 0  # requests whose usage carried cached_tokens
        self.cached_reported_prompt_tokens = 0  # their prompt tokens
        self.good = 0
        self.first_intended: float | None = None
        self.last_sent: float | None = None  # the last send: when the load stopped being offered
        self.last_end: float | None = None
        # kind -> [(end, index, status, message)], the earliest-ending few
        self.errors: dict[str, list[tuple[float, int, int | None, str]]] = {}
        self.sent = DistinctSent()  # the distinct images and bodies the requests carried
        # target URL -> [requests, with usage, prompt tokens, generation tokens]: each server's
        # share, to set beside that server's own counters
        self.targets: dict[str, list[int]] = {}

    @property
    def window(self) -> float:
        return self.windows.window

    @property
    def origin(self) -> float:
        return self.windows.origin

    # ---- adding ----
    def add(self, rec: RequestRecord) -> None:
        if rec.invalid:
            self._add_invalid(rec)
            return
        kind = str(rec.outcome)
        self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
        if self.first_intended is None or rec.intended < self.first_intended:
            self.first_intended = rec.intended
        if self.last_end is None or rec.end > self.last_end:
            self.last_end = rec.end
        if self.last_sent is None or rec.sent > self.last_sent:
            self.last_sent = rec.sent
        self.histograms.record(rec)
        self.windows.add(rec)
        self.sent.add(rec)
        if rec.finish_reason is not None:
            fr = rec.finish_reason
            self.finish_reasons[fr] = self.finish_reasons.get(fr, 0) + 1
        per_target = self.targets.get(rec.target)
        if per_target is None:
            per_target = self.targets[rec.target] = [0, 0, 0, 0]
        per_target[0] += 1
        if rec.outcome is Outcome.OK:
            self.prompt_tokens += rec.prompt_tokens or 0
            self.generation_tokens += rec.completion_tokens or 0
            per_target[1] += 1
            per_target[2] += rec.prompt_tokens or 0
            per_target[3] += rec.completion_tokens or 0
            if rec.cached_tokens is not None:
                self.cached_tokens += rec.cached_tokens
                self.cached_reported += 1
                self.cached_reported_prompt_tokens += rec.prompt_tokens or 0
        if meets_slo(rec, self.slo):
            self.good += 1
        if not rec.outcome.is_success and self.error_examples > 0:
            self._keep_examples(kind, [(rec.end, rec.index, rec.status, _error_message(rec))])

    def _add_invalid(self, rec: RequestRecord) -> None:
        """A deliberately bad request: counted under its own outcome (and its error kept as an
        example of the server's answer), left out of every other figure."""
        outcome = rec.outcome.as_invalid()
        kind = str(outcome)
        self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
        if outcome is not Outcome.INVALID_ACCEPTED and self.error_examples > 0:
            self._keep_examples(kind, [(rec.end, rec.index, rec.status, _error_message(rec))])

    def _keep_examples(self, kind: str, new: list[tuple[float, int, int | None, str]]) -> None:
        kept = self.errors.get(kind, [])
        if len(kept) >= self.error_examples and new and min(new) > kept[-1]:
            return
        self.errors[kind] = sorted(kept + new)[: self.error_examples]

    def merge(self, other: PhaseAccumulator) -> None:
        """Add another shard's accumulator of the same phase, window, origin and SLO."""
        if (other.phase, other.slo, other.target_concurrency) != (
            self.phase,
            self.slo,
            self.target_concurrency,
        ):
            raise ValueError(
                f"cannot merge phase {other.phase!r} ({other.slo}, target concurrency "
                f"{other.target_concurrency}) into {self.phase!r} ({self.slo}, "
                f"{self.target_concurrency})"
            )
        self.histograms.merge(other.histograms)
        self.windows.merge(other.windows)
        for kind, n in other.outcomes.items():
            self.outcomes[kind] = self.outcomes.get(kind, 0) + n
        for fr, n in other.finish_reasons.items():
            self.finish_reasons[fr] = self.finish_reasons.get(fr, 0) + n
        self.prompt_tokens += other.prompt_tokens
        self.generation_tokens += other.generation_tokens
        self.cached_tokens += other.cached_tokens
        self.cached_reported += other.cached_reported
        self.cached_reported_prompt_tokens += other.cached_reported_prompt_tokens
        self.good += other.good
        if other.first_intended is not None and (
            self.first_intended is None or other.first_intended < self.first_intended
        ):
            self.first_intended = other.first_intended
        if other.last_end is not None and (self.last_end is None or other.last_end > self.last_end):
            self.last_end = other.last_end
        if other.last_sent is not None and (
            self.last_sent is None or other.last_sent > self.last_sent
        ):
            self.last_sent = other.last_sent
        for kind, examples in other.errors.items():
            self._keep_examples(kind, examples)
        self.sent.merge(other.sent)
        for target, counts in other.targets.items():
            mine = self.targets.setdefault(target, [0, 0, 0, 0])
            for i, n in enumerate(counts):
                mine[i] += n

    # ---- state (JSON) ----
    def to_state(self) -> dict[str, Any]:
        return {
            "state_version": STATE_VERSION,
            "phase": self.phase,
            "slo": _slo_json(self.slo),
            "error_examples": self.error_examples,
            "target_concurrency": self.target_concurrency,
            "outcomes": dict(self.outcomes),
            "finish_reasons": dict(self.finish_reasons),
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "cached_tokens": self.cached_tokens,
            "cached_reported": self.cached_reported,
            "cached_reported_prompt_tokens": self.cached_reported_prompt_tokens,
            "good": self.good,
            "first_intended": self.first_intended,
            "last_end": self.last_end,
            "last_sent": self.last_sent,
            "errors": {k: [list(e) for e in v] for k, v in self.errors.items()},
            "targets": {k: list(v) for k, v in self.targets.items()},
            "histograms": self.histograms.to_state(),
            "windows": self.windows.to_state(),
            "sent": self.sent.to_state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PhaseAccumulator:
        if state.get("state_version") != STATE_VERSION:
            raise ValueError(f"unsupported accumulator state version {state.get('state_version')}")
        win = state["windows"]
        acc = cls(
            state["phase"],
            slo=SloConfig(**state["slo"]),
            window=win["window"],
            origin=win["origin"],
            error_examples=state["error_examples"],
            target_concurrency=state.get("target_concurrency"),
        )
        acc.histograms = IntervalHistograms.from_state(state["histograms"])
        acc.windows = ThroughputWindows.from_state(win)
        acc.outcomes = {str(k): int(v) for k, v in state["outcomes"].items()}
        acc.finish_reasons = {str(k): int(v) for k, v in state["finish_reasons"].items()}
        acc.prompt_tokens = int(state["prompt_tokens"])
        acc.generation_tokens = int(state["generation_tokens"])
        acc.cached_tokens = int(state["cached_tokens"])
        acc.cached_reported = int(state["cached_reported"])
        acc.cached_reported_prompt_tokens = int(state["cached_reported_prompt_tokens"])
        acc.good = int(state["good"])
        acc.first_intended = state["first_intended"]
        acc.last_end = state["last_end"]
        acc.last_sent = state.get("last_sent")
        acc.errors = {
            str(k): [(float(e[0]), int(e[1]), e[2], str(e[3])) for e in v]
            for k, v in state["errors"].items()
        }
        acc.sent = DistinctSent.from_state(state["sent"])
        acc.targets = {str(k): [int(n) for n in v] for k, v in state.get("targets", {}).items()}
        return acc

    # ---- the summary ----
    def latency(self) -> LatencyHistograms:
        """The phase's histograms: the exact sum of its per-window histograms."""
        return self.histograms.total()

    def finish(self, *, started: float | None = None, ended: float | None = None) -> Phase:
        """The phase summary (documented field by field in docs/metrics.md).

        `started` / `ended` are the phase's own start and end on the run clock, reported as given;
        rates use the measured span (first intended send to last end).
        """
        invalid = sum(self.outcomes.get(str(o), 0) for o in INVALID_OUTCOMES)
        total = sum(self.outcomes.values()) - invalid
        ok = self.outcomes.get(str(Outcome.OK), 0)
        missing = self.outcomes.get(str(Outcome.MISSING_USAGE), 0)
        succeeded = ok + missing
        duration = (
            self.last_end - self.first_intended
            if self.last_end is not None and self.first_intended is not None
            else None
        )
        if duration is not None and duration <= 0:
            duration = None
        hist = self.latency()
        return Phase(
            phase=self.phase,
            started=started,
            ended=ended,
            span=Span(
                first_intended=self.first_intended, last_end=self.last_end, duration_s=duration
            ),
            requests=Requests(
                total=total,
                succeeded=succeeded,
                failed=total - succeeded,
                with_usage=ok,
                missing_usage=missing,
                invalid=invalid,
            ),
            # (the outcomes of deliberately bad requests only in a phase that sent some)
            outcomes={
                str(o): self.outcomes.get(str(o), 0) for o in Outcome if invalid or not o.is_invalid
            },
            finish_reasons=dict(sorted(self.finish_reasons.items())),
            tokens=self._tokens(missing),
            throughput=Throughput(
                requests_per_s=_rate(succeeded, duration),
                prompt_tokens_per_s=_rate(self.prompt_tokens, duration),
                generation_tokens_per_s=_rate(self.generation_tokens, duration),
                total_tokens_per_s=_rate(self.prompt_tokens + self.generation_tokens, duration),
            ),
            latency_ms={k: msgspec.convert(v, LatencyStats) for k, v in hist.summary().items()},
            histograms_clamped=dict(hist.clamped),
            concurrency=self._concurrency(),
            workload=msgspec.convert(self.sent.summary(), Workload),
            goodput=self._goodput(total, duration),
            windows=Windows(
                window_s=self.window,
                origin=self.origin,
                series=msgspec.convert(self.windows.series(), list[Window]),
            ),
            errors={
                kind: [
                    ErrorExample(end=e[0], index=e[1], status=e[2], error=e[3]) for e in examples
                ]
                for kind, examples in sorted(self.errors.items())
            },
            targets={
                target: TargetTotals(
                    requests=n[0], with_usage=n[1], prompt_tokens=n[2], generation_tokens=n[3]
                )
                for target, n in sorted(self.targets.items())
            },
        )

    def _tokens(self, missing: int) -> Tokens:
        return Tokens(
            prompt=self.prompt_tokens,
            generation=self.generation_tokens,
            total=self.prompt_tokens + self.generation_tokens,
            cached=self.cached_tokens,
            cached_reported_requests=self.cached_reported,
            cached_fraction=(
                self.cached_tokens / self.cached_reported_prompt_tokens
                if self.cached_reported_prompt_tokens
                else None
            ),
            usage_complete=missing == 0,
            missing_usage_requests=missing,
        )

    def _concurrency(self) -> Concurrency:
        conc = self.windows.concurrency
        mean = (
            conc.mean(self.first_intended, self.last_end)
            if self.first_intended is not None and self.last_end is not None
            else None
        )
        target = self.target_concurrency
        return Concurrency(
            peak=conc.peak(),
            mean=mean,
            target=target,
            mean_over_target=mean / target if mean is not None and target else None,
        )

    def _goodput(self, total: int, duration: float | None) -> Goodput | None:
        if not self.slo.any:
            return None
        return Goodput(
            slo={k: v for k, v in _slo_json(self.slo).items() if v},
            latency_basis="intended",
            count=self.good,
            fraction=self.good / total if total else None,
            requests_per_s=_rate(self.good, duration),
        )


def summarize_phase(
    records: Iterable[RequestRecord],
    *,
    slo: SloConfig,
    window: float,
    phase_name: str,
    started: float | None,
    ended: float | None,
    origin: float = 0.0,
    target_concurrency: int | None = None,
) -> Phase:
    """The summary of one phase's records (all of them belong to `phase_name`)."""
    acc = PhaseAccumulator(
        phase_name, slo=slo, window=window, origin=origin, target_concurrency=target_concurrency
    )
    for rec in records:
        acc.add(rec)
    return acc.finish(started=started, ended=ended)


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or not den:
        return None
    return float(num) / float(den)


def compare_phases(baseline: Phase, candidate: Phase) -> PhaseComparison:
    """How `candidate` (e.g. a warm pass) differs from `baseline` (the cold pass it repeats).

    Ratios are candidate / baseline: below 1 for a latency means the candidate was faster, above 1
    for a throughput means it did more per second. None where either side has no figure.
    """
    ratios: dict[str, float | None] = {}
    for metric in ("ttft", "tpot", "itl", "e2e"):
        for p in ("p50", "p99"):
            ratios[f"{metric}_{p}_ratio"] = _ratio(
                candidate.latency(metric, p), baseline.latency(metric, p)
            )
    for key in ("requests_per_s", "prompt_tokens_per_s", "generation_tokens_per_s"):
        ratios[f"{key}_ratio"] = _ratio(
            getattr(candidate.throughput, key), getattr(baseline.throughput, key)
        )
    return PhaseComparison(
        baseline=baseline.phase,
        candidate=candidate.phase,
        cached_fraction=Pair(
            baseline=baseline.tokens.cached_fraction, candidate=candidate.tokens.cached_fraction
        ),
        cached_tokens=Pair(baseline=baseline.tokens.cached, candidate=candidate.tokens.cached),
        ttft_p50_ms=Pair(
            baseline=baseline.latency("ttft", "p50"), candidate=candidate.latency("ttft", "p50")
        ),
        **ratios,
    )


__all__ = [
    "ERROR_EXAMPLES",
    "METRICS",
    "PhaseAccumulator",
    "compare_phases",
    "meets_slo",
    "summarize_phase",
]
