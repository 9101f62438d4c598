"""summary.json of a run, built from what the run holds: its phases' accumulators, the server
marks taken at the phases' boundaries, the self-check, and the facts of the run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from time import perf_counter

import msgspec

from loadgen.client import endpoint_url, server_root
from loadgen.config import WARMUP, Scenario
from loadgen.endpoints import endpoint_named
from loadgen.metrics.scrape import ClientTotals, ServerScrapes, ServerSnapshot
from loadgen.metrics.summary import PhaseAccumulator, compare_phases
from loadgen.results.files import environment
from loadgen.results.schema import (
    ClientCheck,
    Distributed,
    Environment,
    Loss,
    Phase,
    PhaseComparison,
    PhaseServer,
    RunInfo,
    RunSummary,
    Server,
)
from loadgen.runner import PhaseTiming
from loadgen.scenario import scenario_to_json

Marks = Mapping[str, Mapping[str, ServerSnapshot | None]]  # "<phase>:start|end" -> root -> snap


@dataclass(frozen=True, slots=True)
class SummaryInputs:
    """Everything summary.json is made of, as the run holds it when a phase ends."""

    scenario: Scenario
    transport: str
    run_dir: Path
    started_at: datetime
    origin: float  # the run clock's zero on perf_counter
    origin_epoch: float
    urls: tuple[str, ...]
    model: str
    simulated: bool
    workers: int
    timings: Sequence[PhaseTiming]
    accumulators: Mapping[str, PhaseAccumulator]
    server_marks: Marks
    scraper: ServerScrapes | None
    client: ClientCheck
    status: str
    reason: str
    losses: Sequence[Loss]
    warnings: Sequence[str]
    final: bool  # False while phases remain: the status says "running"
    distributed: Distributed | None = None  # shards on a cluster: where, and their clocks


def build_summary(inputs: SummaryInputs) -> RunSummary:
    phases = _phases(inputs)
    scraper = inputs.scraper
    return RunSummary(
        status=inputs.status if inputs.final else "running",
        reason=inputs.reason,
        losses=list(inputs.losses),
        run=_run_info(inputs),
        scenario=scenario_to_json(inputs.scenario),
        phases=phases,
        phase_comparisons=_comparisons(inputs.scenario, phases),
        server=Server(
            phases=_server_phases(inputs, phases),
            run=scraper.summary() if scraper else None,
            timeseries=scraper.series() if scraper else [],
        ),
        client=inputs.client,
        distributed=inputs.distributed,
        warnings=list(inputs.warnings),
        environment=msgspec.convert(environment(), Environment),
    )


def _run_info(inputs: SummaryInputs) -> RunInfo:
    return RunInfo(
        name=inputs.scenario.name,
        directory=str(inputs.run_dir),
        started_at=inputs.started_at.isoformat(),
        origin_epoch=inputs.origin_epoch,
        duration_s=perf_counter() - inputs.origin,
        seed=inputs.scenario.seed,
        transport=inputs.transport,
        urls=list(inputs.urls),
        model=inputs.model,
        simulator=inputs.simulated,
        workers=inputs.workers,
        api=inputs.scenario.target.api,
        streamed=endpoint_named(inputs.scenario.target.api).streamed,
    )


def _phases(inputs: SummaryInputs) -> dict[str, Phase]:
    """Each measured phase that has run (the warm-up is never summarised)."""
    phases: dict[str, Phase] = {}
    for timing in inputs.timings:
        acc = inputs.accumulators.get(timing.name)
        if timing.name == WARMUP or acc is None:
            continue
        phases[timing.name] = acc.finish(started=timing.started, ended=timing.ended)
    return phases


def _server_phases(inputs: SummaryInputs, phases: Mapping[str, Phase]) -> dict[str, PhaseServer]:
    """Each phase's server figures from its start and end marks, beside the client's totals."""
    out: dict[str, PhaseServer] = {}
    if inputs.scraper is None:
        return out
    for name, phase in phases.items():
        start = inputs.server_marks.get(f"{name}:start")
        end = inputs.server_marks.get(f"{name}:end")
        if start is None or end is None:
            continue
        per_target = client_totals(phase, inputs.urls, inputs.scenario.target.endpoint)
        reconciled = inputs.scraper.phase(start, end, per_target)
        if reconciled is not None:
            out[name] = reconciled
    return out


def _comparisons(scenario: Scenario, phases: Mapping[str, Phase]) -> dict[str, PhaseComparison]:
    out = {}
    for phase in scenario.phases:
        if phase.repeat_of and phase.name in phases and phase.repeat_of in phases:
            out[f"{phase.repeat_of}->{phase.name}"] = compare_phases(
                phases[phase.repeat_of], phases[phase.name]
            )
    return out


def client_totals(phase: Phase, urls: Sequence[str], endpoint: str) -> dict[str, ClientTotals]:
    """The phase's per-target client totals (keyed by the request URL records carry) grouped by
    server root, the key of the server's side."""
    root_of = {endpoint_url(u, endpoint): server_root(u) for u in urls}
    out: dict[str, ClientTotals] = {}
    for url, t in phase.targets.items():
        root = root_of.get(url, server_root(url))
        mine = ClientTotals(t.prompt_tokens, t.generation_tokens, t.with_usage)
        out[root] = out.get(root, ClientTotals()) + mine
    return out
