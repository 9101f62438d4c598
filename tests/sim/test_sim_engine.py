"""The engine model on a virtual clock: batching, chunked prefill, KV capacity, prefix caching."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.sim.engine import EngineCore, EngineRequest
from loadgen.sim.profiles import Profile, get_profile
from loadgen.sim.stats import IterationStats, SchedulerStats


@dataclass
class Run:
    """Everything the engine reported while running to completion."""

    steps: list[tuple[SchedulerStats, IterationStats]] = field(default_factory=list)
    texts: dict[str, list[str]] = field(default_factory=dict)
    finish: dict[str, str] = field(default_factory=dict)
    end: float = 0.0

    def on_token(self, req: EngineRequest, text: str, finish: str | None) -> None:
        self.texts.setdefault(req.request_id, []).append(text)
        if finish is not None:
            self.finish[req.request_id] = finish

    @property
    def ttfts(self) -> list[float]:
        return [t for _, it in self.steps for t in it.ttfts]


def profile(**overrides: float | int) -> Profile:
    base: dict[str, float | int] = {
        "step_base": 0.001,
        "step_per_seq": 0.0001,
        "step_per_prefill_token": 0.0001,
        "mm_process_per_token": 0.0,
        "block_size": 16,
    }
    base.update(overrides)
    return get_profile("fast", **base)


def keys(n: int, salt: int = 0) -> list[int]:
    return [salt * 1_000_003 + i for i in range(n)]


def run(core: EngineCore, requests: list[EngineRequest], t0: float = 0.0) -> Run:
    out = Run()
    for r in requests:
        r.on_token = out.on_token
        core.add(r, t0)
    t = t0
    for _ in range(100_000):
        if not core.has_work():
            break
        plan = core.schedule(t)
        t += core.step_time(plan)
        out.steps.append((plan.scheduler_stats, core.complete(plan, t)))
    assert not core.has_work(), "engine did not finish"
    out.end = t
    return out


def make(
    core: EngineCore, n: int, prompt: int, max_tokens: int, ignore_eos: bool = True
) -> list[EngineRequest]:
    return [
        core.make_request(f"r{i}", keys(prompt, i), max_tokens, arrival=0.0, ignore_eos=ignore_eos)
        for i in range(n)
    ]


def test_running_never_exceeds_max_num_seqs_and_all_finish() -> None:
    core = EngineCore(profile(max_num_seqs=3), enable_prefix_caching=False)
    result = run(core, make(core, 10, 50, 20))
    assert max(s.num_running for s, _ in result.steps) == 3
    assert len(result.finish) == 10
    assert all(len(t) == 20 for t in result.texts.values())
    assert set(result.finish.values()) == {"length"}


def test_chunked_prefill_spreads_a_long_prompt_over_steps() -> None:
    core = EngineCore(profile(max_num_batched_tokens=256), enable_prefix_caching=False)
    result = run(core, make(core, 1, 1000, 2))
    first_token_step = next(i for i, (_, it) in enumerate(result.steps) if it.num_generation_tokens)
    assert first_token_step == 3  # 256 + 256 + 256 + 232 tokens
    assert result.steps[first_token_step][1].num_prompt_tokens == 1000


def test_prompt_tokens_are_counted_once_at_the_first_token() -> None:
    core = EngineCore(profile(max_num_batched_tokens=64), enable_prefix_caching=False)
    result = run(core, make(core, 4, 100, 5))
    assert sum(it.num_prompt_tokens for _, it in result.steps) == 400
    assert sum(it.num_generation_tokens for _, it in result.steps) == 20
    for _, it in result.steps:
        assert it.num_prompt_tokens == 100 * len(it.ttfts)


def test_full_kv_cache_makes_requests_wait() -> None:
    # 20 blocks of 16 tokens; each request needs ceil((100 + 20) / 16) = 8 blocks at the end.
    core = EngineCore(profile(kv_blocks=20), enable_prefix_caching=False)
    result = run(core, make(core, 6, 100, 20))
    assert max(s.num_waiting for s, _ in result.steps) > 0
    assert max(s.kv_cache_usage for s, _ in result.steps) <= 1.0
    assert len(result.finish) == 6


def test_decode_growth_without_free_blocks_preempts() -> None:
    # Two prompts of 7 blocks fit in 15 blocks; their growth does not, so one is preempted,
    # recomputed later, and both still produce every token.
    core = EngineCore(profile(kv_blocks=15), enable_prefix_caching=False)
    result = run(core, make(core, 2, 112, 40))
    assert sum(it.num_preempted for _, it in result.steps) >= 1
    assert all(len(t) == 40 for t in result.texts.values())


def test_prefix_cache_hit_skips_computed_blocks_and_lowers_ttft() -> None:
    core = EngineCore(profile(), enable_prefix_caching=True)
    first = core.make_request("a", keys(220, 7), 4, arrival=0.0, ignore_eos=True)
    cold = run(core, [first])
    second = core.make_request("b", keys(220, 7), 4, arrival=cold.end, ignore_eos=True)
    warm = run(core, [second], t0=cold.end)
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 208  # 13 full blocks; the last token is always computed
    hit = warm.steps[0][0].prefix_cache
    assert (hit.queries, hit.hits) == (220, 208)
    assert warm.ttfts[0] < cold.ttfts[0] / 3


def test_a_fully_cached_prompt_still_computes_its_last_block() -> None:
    core = EngineCore(profile(), enable_prefix_caching=True)
    run(core, [core.make_request("a", keys(64, 3), 2, arrival=0.0)])
    again = core.make_request("b", keys(64, 3), 2, arrival=0.0)
    run(core, [again])
    assert again.num_cached_tokens == 48


def test_no_prefix_hits_when_caching_is_off() -> None:
    core = EngineCore(profile(), enable_prefix_caching=False)
    run(core, [core.make_request("a", keys(220, 7), 2, arrival=0.0)])
    again = core.make_request("b", keys(220, 7), 2, arrival=0.0)
    run(core, [again])
    assert again.num_cached_tokens == 0


def test_ttft_grows_with_concurrency() -> None:
    means = []
    for n in (1, 4, 16, 64):
        core = EngineCore(profile(max_num_batched_tokens=512), enable_prefix_caching=False)
        ttfts = run(core, make(core, n, 220, 32)).ttfts
        means.append(sum(ttfts) / len(ttfts))
    assert means == sorted(means) and means[-1] > 4 * means[0]


def test_same_seed_same_text_different_seed_different_text() -> None:
    def texts(seed: int) -> list[str]:
        core = EngineCore(profile(), enable_prefix_caching=False, seed=seed)
        result = run(core, make(core, 1, 30, 40))
        return result.texts["r0"]

    assert texts(1) == texts(1)
    assert texts(1) != texts(2)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 30), st.integers(1, 60), st.integers(0, 2**32))
def test_eos_never_before_min_tokens(min_tokens: int, extra: int, seed: int) -> None:
    core = EngineCore(profile(eos_mean_tokens=3.0), enable_prefix_caching=False, seed=seed)
    max_tokens = min_tokens + extra
    req = core.make_request("r", keys(20), max_tokens, arrival=0.0, min_tokens=min_tokens)
    result = run(core, [req])
    n = len(result.texts["r"])
    assert min_tokens <= n <= max_tokens
    if result.finish["r"] == "stop":
        assert n > min_tokens and result.texts["r"][-1] == ""
    else:
        assert n == max_tokens


def test_abort_frees_blocks() -> None:
    core = EngineCore(profile(kv_blocks=64), enable_prefix_caching=False)
    req = core.make_request("r", keys(300), 50, arrival=0.0)
    core.add(req, 0.0)
    plan = core.schedule(0.0)
    core.complete(plan, 0.01)
    assert core.pool.num_free < 64
    core.abort(req)
    assert core.pool.num_free == 64 and not core.has_work()
