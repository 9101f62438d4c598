"""The engine model: vLLM V1's continuous-batching scheduler over a block KV cache, with no I/O.

Time is passed in: `schedule(start)` plans one step, `step_time(plan)` prices it with the profile's
formula, `complete(plan, end)` applies it (one new token for every request whose scheduled tokens
are all computed). An async driver (loadgen.sim.driver) paces these calls in real time; tests call
them with a virtual clock.

Scheduling, as vLLM V1 does it: running requests first, in order, each taking the tokens it still
needs (a prefill is cut to the step's token budget: chunked prefill); a running request that
needs a new block when none is free preempts the most recently admitted one (which frees its
blocks and returns to the front of the queue, to be recomputed). Then waiting requests are
admitted in order while there are sequence slots, budget and blocks; a request's first admission
looks up its prompt's full blocks in the prefix cache and skips computing the blocks found (at
least one token is always computed).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from loadgen.sim.kvcache import BlockPool, block_hashes
from loadgen.sim.profiles import Profile
from loadgen.sim.stats import FinishedStats, IterationStats, SchedulerStats

# Output text: caption-like words. Each entry is one generated token.
_WORDS = """a the an of in on with and near under over beside small large red blue green white
black bright dark old young wooden stone glass metal cat dog bird person child woman man car
bicycle tree house street field sky water mountain table chair window door road beach flower
garden city light shadow standing sitting walking holding looking next to front behind
background scene photo image picture view close"""
VOCABULARY: tuple[str, ...] = (*(" " + w for w in _WORDS.split()), ",", ".")

TokenCallback = Callable[["EngineRequest", str, "str | None"], None]


@dataclass(slots=True, eq=False)
class EngineRequest:
    request_id: str
    prompt_len: int
    block_hashes: list[int]
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    max_tokens_param: int | None
    rng: random.Random
    arrival: float  # when the frontend received it (TTFT and e2e start here)
    on_token: TokenCallback | None = None
    queued_ts: float = 0.0
    scheduled_ts: float = -1.0
    first_token_ts: float = -1.0
    last_token_ts: float = -1.0
    num_output: int = 0
    num_computed: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    num_hashed_blocks: int = 0  # prompt blocks registered in the prefix cache
    blocks: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    was_preempted: bool = False

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + self.num_output


@dataclass(slots=True)
class StepPlan:
    start: float
    scheduled: list[tuple[EngineRequest, int]]
    decode_seqs: int
    prefill_tokens: int
    scheduler_stats: SchedulerStats


class EngineCore:
    def __init__(self, profile: Profile, enable_prefix_caching: bool, seed: int = 0) -> None:
        self.profile = profile
        self.block_size = profile.block_size
        self.pool = BlockPool(profile.kv_blocks, enable_prefix_caching)
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []
        self.seed = seed
        self._eos_p = 1.0 / profile.eos_mean_tokens if profile.eos_mean_tokens > 0 else 0.0
        self._pending_preemptions = 0

    # -- requests ---------------------------------------------------------------------------

    def make_request(
        self,
        request_id: str,
        prompt_keys: Sequence[int],
        max_tokens: int,
        *,
        arrival: float,
        min_tokens: int = 0,
        ignore_eos: bool = False,
        max_tokens_param: int | None = None,
        request_seed: int | None = None,
    ) -> EngineRequest:
        hashes = block_hashes(prompt_keys, self.block_size) if self.pool.enable_caching else []
        # Same seed and same prompt -> same output text, whatever the arrival order.
        rng = random.Random(hash((self.seed, request_seed or 0, tuple(prompt_keys))))
        return EngineRequest(
            request_id=request_id,
            prompt_len=len(prompt_keys),
            block_hashes=hashes,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            ignore_eos=ignore_eos,
            max_tokens_param=max_tokens_param,
            rng=rng,
            arrival=arrival,
        )

    def add(self, request: EngineRequest, now: float) -> None:
        needed = self._blocks_for(request.prompt_len + 1)
        if needed > self.pool.num_blocks:
            raise ValueError(
                f"prompt of {request.prompt_len} tokens needs {needed} KV blocks; the cache has "
                f"{self.pool.num_blocks}"
            )
        request.queued_ts = now
        self.waiting.append(request)

    def abort(self, request: EngineRequest) -> None:
        """Drop a request (client gone, or a fault); no success is counted for it."""
        if request.finish_reason is not None:
            return
        request.finish_reason = "abort"
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.pool.free(request.blocks)
        request.blocks = []

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # -- stepping ---------------------------------------------------------------------------

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _preempt(self, request: EngineRequest) -> None:
        self.running.remove(request)
        self.pool.free(request.blocks)
        request.blocks = []
        request.num_computed = 0
        request.num_hashed_blocks = 0
        request.was_preempted = True
        self.waiting.appendleft(request)
        self._pending_preemptions += 1

    def schedule(self, start: float) -> StepPlan:
        p = self.profile
        budget = p.max_num_batched_tokens
        scheduled: list[tuple[EngineRequest, int]] = []
        decode_seqs = prefill_tokens = 0
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed, budget)
            need = self._blocks_for(req.num_computed + n) - len(req.blocks)
            while need > self.pool.num_free and self.running[-1] is not req:
                self._preempt(self.running[-1])
                preempted = True
            if need > self.pool.num_free:
                self._preempt(req)
                preempted = True
                break
            if need > 0:
                req.blocks += self.pool.allocate(need)
            scheduled.append((req, n))
            budget -= n
            if req.num_output > 0 and n == 1 and req.num_computed == req.num_tokens - 1:
                decode_seqs += 1
            else:
                prefill_tokens += n
            i += 1

        stats = SchedulerStats()
        while not preempted and self.waiting and len(self.running) < p.max_num_seqs and budget > 0:
            req = self.waiting[0]
            if req.queued_ts > start:
                # It arrived after this step began (the driver runs steps on its own timeline,
                # which may trail the clock a little): it waits for the next step. Admitting it
                # gave it a scheduled time before its queued time, and a TTFT ending before it
                # arrived. The queue is in arrival order (a preempted request, back at the front,
                # arrived earlier).
                break
            max_hit_blocks = (req.num_tokens - 1) // self.block_size
            hits = self.pool.lookup(req.block_hashes, max_hit_blocks)
            computed = len(hits) * self.block_size
            n = min(req.num_tokens - computed, budget)
            need = self._blocks_for(computed + n) - len(hits)
            if need + self.pool.num_evictable(hits) > self.pool.num_free:
                break  # the head of the queue waits for blocks; vLLM does not skip it
            self.waiting.popleft()
            self.pool.touch(hits)
            req.blocks = hits + self.pool.allocate(need)
            req.num_computed = computed
            req.num_hashed_blocks = len(hits)
            if not req.was_preempted:
                req.num_cached_tokens = computed
                req.scheduled_ts = start
                stats.prefix_cache.record(req.num_tokens, computed)
            self.running.append(req)
            scheduled.append((req, n))
            budget -= n
            prefill_tokens += n

        stats.num_running = len(self.running)
        stats.num_waiting = len(self.waiting)
        stats.kv_cache_usage = self.pool.usage()
        return StepPlan(start, scheduled, decode_seqs, prefill_tokens, stats)

    def step_time(self, plan: StepPlan) -> float:
        if not plan.scheduled:
            return 0.0
        p = self.profile
        return (
            p.step_base
            + p.step_per_seq * plan.decode_seqs
            + p.step_per_prefill_token * plan.prefill_tokens
        )

    def complete(self, plan: StepPlan, end: float) -> IterationStats:
        it = IterationStats(num_preempted=self._pending_preemptions)
        self._pending_preemptions = 0
        finished: list[EngineRequest] = []
        bs = self.block_size
        for req, n in plan.scheduled:
            if req.finish_reason is not None:  # aborted during the step
                continue
            req.num_computed += n
            full = min(req.num_computed, req.prompt_len) // bs
            for b in range(req.num_hashed_blocks, min(full, len(req.block_hashes))):
                self.pool.cache_block(req.blocks[b], req.block_hashes[b])
            if full > req.num_hashed_blocks:
                req.num_hashed_blocks = full
            if req.num_computed < req.num_tokens:
                continue  # a prefill chunk that did not reach the end of the prompt
            text, finish = self._sample(req)
            req.num_output += 1
            it.num_generation_tokens += 1
            if req.first_token_ts < 0:
                req.first_token_ts = end
                it.num_prompt_tokens += req.prompt_len
                it.ttfts.append(end - req.arrival)
            else:
                it.itls.append(end - req.last_token_ts)
            req.last_token_ts = end
            if finish is not None:
                req.finish_reason = finish
                finished.append(req)
            if req.on_token is not None:
                req.on_token(req, text, finish)
        for req in finished:
            self.running.remove(req)
            self.pool.free(req.blocks)
            req.blocks = []
            it.finished.append(self._finished_stats(req, end))
        plan.scheduler_stats.num_running = len(self.running)
        plan.scheduler_stats.kv_cache_usage = self.pool.usage()
        return it

    def _sample(self, req: EngineRequest) -> tuple[str, str | None]:
        rng = req.rng
        k = req.num_output + 1  # this token's position in the output
        if not req.ignore_eos and k > req.min_tokens and rng.random() < self._eos_p:
            return "", "stop"  # the EOS token: counted, never shown
        text = VOCABULARY[int(rng.random() * len(VOCABULARY))]
        if k == 1:
            text = text.lstrip().capitalize()
        return text, ("length" if k >= req.max_tokens else None)

    @staticmethod
    def _finished_stats(req: EngineRequest, end: float) -> FinishedStats:
        decode = req.last_token_ts - req.first_token_ts
        return FinishedStats(
            finish_reason=req.finish_reason or "stop",
            e2e_latency=end - req.arrival,
            queued_time=req.scheduled_ts - req.queued_ts,
            prefill_time=req.first_token_ts - req.scheduled_ts,
            inference_time=req.last_token_ts - req.scheduled_ts,
            decode_time=decode,
            mean_time_per_output_token=decode / (req.num_output - 1) if req.num_output > 1 else 0.0,
            num_prompt_tokens=req.prompt_len,
            num_generation_tokens=req.num_output,
            max_tokens_param=req.max_tokens_param,
        )
