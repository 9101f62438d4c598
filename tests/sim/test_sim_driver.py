"""The real-time driver: a failing engine step ends the requests in flight instead of hanging."""

from __future__ import annotations

import asyncio

import pytest

from loadgen.sim.driver import EngineDriver
from loadgen.sim.engine import EngineCore, EngineRequest, StepPlan
from loadgen.sim.faults import StallSchedule
from loadgen.sim.profiles import get_profile


def test_a_failing_step_ends_open_requests_with_error(caplog: pytest.LogCaptureFixture) -> None:
    core = EngineCore(get_profile("zero"), enable_prefix_caching=False)
    finishes: list[str | None] = []

    def broken(_start: float) -> StepPlan:
        raise RuntimeError("boom")

    core.schedule = broken  # type: ignore[method-assign]

    async def scenario() -> None:
        driver = EngineDriver(core, [], StallSchedule(origin=0.0))
        driver.start()
        request = core.make_request("r", list(range(20)), 4, arrival=0.0)

        def on_token(_r: EngineRequest, _text: str, finish: str | None) -> None:
            finishes.append(finish)

        request.on_token = on_token
        driver.submit(request)
        for _ in range(100):
            await asyncio.sleep(0)
            if finishes:
                break
        await driver.stop()

    asyncio.run(scenario())
    assert finishes == ["error"]
    assert not core.has_work()
    assert "engine step failed" in caplog.text
