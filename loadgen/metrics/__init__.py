"""Per-request records in, figures out.

- `histograms`: HdrHistogram latency histograms (TTFT, ITL, TPOT, E2E, schedule lag, and the
  intended-time TTFT/E2E), per throughput window, with interval logs.
- `windows`: windowed throughput counted like vLLM's stats log line; concurrency.
- `summary`: a phase's summary and its mergeable accumulator; cold/warm phase comparison.
- `scrape`: the server's `/metrics` (the only module here that does I/O).
- `selfcheck`: whether the client itself was saturated.

The exact definition of every figure is in docs/metrics.md.
"""
