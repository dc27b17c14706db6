"""Sleep and wake of colocated engines (CUDA only in vLLM, so the engines' LLMs are stand-ins that
record calls): vLLM 0.32 allows one sleep-mode engine per process (its CuMem allocator is one per
process), so an engine sleeps at its own level and a resident engine beside it is never put to
sleep; a second sleep-mode engine, or one built after a resident engine, is refused.
tests/test_engine_layout.py builds every paper run's engines against a stand-in of vLLM itself."""
import pytest

from geopd.errors import UserError
from geopd.engines import vllm_engine
from geopd.engines.vllm_engine import Engine, check_one_sleeper


class RecordingLLM:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def sleep(self, level):
        self.log.append((self.name, "sleep", level))

    def wake_up(self, tags):
        self.log.append((self.name, "wake", tuple(tags)))

    def collective_rpc(self, method, **kwargs):
        self.log.append((self.name, "rpc", method if isinstance(method, str) else method.__name__))

    def reset_prefix_cache(self):
        pass


def stand_in(name, sleep_level, log, *, sleeps=True):
    engine = Engine.__new__(Engine)  # no vLLM LLM behind it: only the sleep bookkeeping runs
    engine.llm, engine.role, engine.sleeps, engine.colocated = RecordingLLM(name, log), name, sleeps, True
    engine.sleep_level, engine.asleep, engine.weights_discarded = sleep_level, set(), False
    vllm_engine._GPU_ENGINES.append(engine)
    return engine


@pytest.fixture
def log(monkeypatch):
    monkeypatch.setattr(vllm_engine, "_GPU_ENGINES", [])
    return []


def test_a_rollout_engine_alone_drops_its_weights_and_needs_a_push(log):
    rollout = stand_in("rollout", 2, log)
    rollout.sleep()
    assert log == [("rollout", "sleep", 2)] and rollout.weights_discarded
    with pytest.raises(UserError, match="push weights"):
        rollout.run([], None)
    rollout.push_weights(iter([]))
    assert log[1:3] == [("rollout", "wake", ("weights",)), ("rollout", "rpc", "reload_weights")]
    assert not rollout.weights_discarded and rollout.asleep == {"kv_cache"}


def test_the_teacher_sleeps_alone_and_the_resident_rollout_engine_is_never_slept(log):
    teacher, rollout = stand_in("teacher", 1, log), stand_in("rollout", 2, log, sleeps=False)
    rollout.sleep()  # resident: nothing to do
    assert log == []
    teacher.sleep()
    assert log == [("teacher", "sleep", 1)] and not teacher.weights_discarded
    teacher.sleep()
    assert len(log) == 1  # already asleep
    log.clear()
    rollout.push_weights(iter([]))  # a push into the resident engine wakes nothing
    assert log == [("rollout", "rpc", "reload_weights"), ("rollout", "rpc", "_refresh_tied_lm_head")]
    log.clear()
    teacher.wake()
    assert log == [("teacher", "wake", ("weights",)), ("teacher", "wake", ("kv_cache",))]
    assert not teacher.asleep and not rollout.asleep


def test_a_second_sleep_mode_engine_or_one_after_a_resident_engine_is_refused():
    check_one_sleeper("teacher_engine.vllm", [], [])
    with pytest.raises(UserError, match="one sleep-mode engine per process"):
        check_one_sleeper("rollout.vllm", ["teacher"], [])
    with pytest.raises(UserError, match="must be built before the resident one"):
        check_one_sleeper("teacher_engine.vllm", [], ["rollout"])
