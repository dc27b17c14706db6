"""Sleep and wake of colocated engines (CUDA only in vLLM, so the engines' LLMs are stand-ins
that record calls): vLLM 0.32's sleep allocator is one per process and does not tell engines
apart, so the engines of a process must sleep and wake together, at level 1 when a teacher's
weights have to survive."""
import pytest

from geopd.errors import UserError
from geopd.engines import vllm_engine
from geopd.engines.vllm_engine import Engine


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


def stand_in(name, sleep_level, log):
    engine = Engine.__new__(Engine)  # no vLLM LLM behind it: only the sleep bookkeeping runs
    engine.llm, engine.role, engine.sleeps, engine.colocated = RecordingLLM(name, log), name, True, True
    engine.sleep_level, engine.asleep, engine.weights_discarded = sleep_level, set(), False
    vllm_engine._SLEEPERS.append(engine)
    return engine


@pytest.fixture
def log(monkeypatch):
    monkeypatch.setattr(vllm_engine, "_SLEEPERS", [])
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


def test_rollout_and_teacher_sleep_and_wake_together_keeping_weights(log):
    teacher, rollout = stand_in("teacher", 1, log), stand_in("rollout", 2, log)
    rollout.sleep()
    assert log == [("teacher", "sleep", 1), ("rollout", "sleep", 1)]  # level 2 would drop the teacher's
    assert not rollout.weights_discarded and teacher.asleep == rollout.asleep == {"weights", "kv_cache"}
    teacher.sleep()
    assert len(log) == 2  # already asleep
    log.clear()
    teacher.wake()
    assert log == [("teacher", "wake", ("weights",)), ("rollout", "wake", ("weights",)),
                   ("teacher", "wake", ("kv_cache",)), ("rollout", "wake", ("kv_cache",))]
    assert not teacher.asleep and not rollout.asleep
