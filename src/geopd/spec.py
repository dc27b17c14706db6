"""The typed settings of the grid: what a run trains with and what a benchmark evaluates with.

A run's settings in the config (method_defaults merged with the run's own keys; checked first by
workflow/schemas/config.schema.yaml) and the JSON a command gets on its command line
(`geopd train --spec`, `geopd evaluate --benchmark`) become these frozen dataclasses once. Every
default is a field's default and every check sits in `check()`, run by `__post_init__` (as
verl's verl/workers/config dataclasses check themselves): no caller restates a default with
`.get(key, default)`.

JSON stays the transport. A spec remembers which keys it was given and writes back exactly
those (`from_dict(d).to_dict() == d`, `from_json(s).to_json() == s` for the key-sorted compact
form the grid writes): an unchanged config gives Snakemake the same params, and a run's training
states keep the settings fingerprint they were saved under (geopd.train.resume). A spec made in
code counts as given the fields that differ from their defaults.

Torch-free: the planner (`geopd plan`) and the rules read them too. The quantities derived from
them that the trainer and the cost model share live in geopd.train.batching (updates per rollout
step, micro-batches) and here (`max_model_len`).
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, Mapping

from geopd.errors import UserError

METHODS = ("sft", "opd", "rlvr", "mix")
RL_METHODS = ("opd", "rlvr", "mix")        # objectives with rollouts (geopd.train.objectives)
TEACHER_METHODS = ("opd", "mix")           # scored by a teacher
REWARD_METHODS = ("rlvr", "mix")           # a verifiable task reward
SPARSIFY_MODES = ("topkl", "random")     # geopd.train.objectives.sparsify
AGGREGATIONS = ("token-mean", "seq-mean-token-mean")
UPDATE_SPLITS = ("contiguous", "interleaved")  # geopd.train.batching.update_of_samples
REWARDS = ("math-verify", "deepscaler")     # a math record's grader (geopd.train.rewards)
TRAINER_DTYPES = ("float32", "bfloat16")


# An evaluation engine's share of its GPUs where a benchmark sets none: the engine has them to
# itself (geopd.evaluate.engine starts it so, and the planner models it so).
EVAL_GPU_MEMORY_UTILIZATION = 0.9


class SpecError(UserError, ValueError):
    """A spec that does not hold together: a UserError for the command line, and a ValueError
    for the tensor functions that take a block directly (geopd.train.objectives.advantages)."""


def spec_json(spec: Spec | Mapping) -> str:
    """The compact, key-sorted JSON a command gets on its command line (the rules' params)."""
    value = spec.to_dict() if isinstance(spec, Spec) else spec
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


@dataclass(frozen=True, kw_only=True)
class Spec:
    """Base of every settings block: built from a mapping (unknown or missing keys are a
    SpecError naming the block), written back as the keys it was given."""

    WHERE: ClassVar[str] = "spec"                  # the block's key path, for messages
    NESTED: ClassVar[dict[str, type]] = {}         # key -> Spec class of a nested block
    TOP: ClassVar[bool] = False                    # nested blocks are named by their key alone

    _given: tuple[str, ...] | None = field(default=None, repr=False, compare=False)  # in the given order
    _given_set: frozenset[str] = field(default=frozenset(), init=False, repr=False)  # what == compares

    def __post_init__(self) -> None:
        if self._given is None:
            given = tuple(f.name for f in self._fields() if getattr(self, f.name) != _default(f))
            object.__setattr__(self, "_given", given)
        object.__setattr__(self, "_given_set", frozenset(self._given))
        self.check()

    def check(self) -> None:
        """What must hold beyond the field types (a subclass raises SpecError)."""

    @classmethod
    def _fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name not in ("_given", "_given_set")]

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in cls._fields())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str | None = None):
        """The spec of `data` (None: every default). `where` names the block in messages."""
        where = where or cls.WHERE
        if isinstance(data, cls):
            return data
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise SpecError(f"{where} must be a mapping, got {data!r}")
        known = cls.keys()
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SpecError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        missing = [f.name for f in cls._fields() if f.name not in data and _default(f) is MISSING]
        if missing:
            raise SpecError(f"{where}: missing keys {missing}")
        values = {}
        for key, value in data.items():
            block = cls.NESTED.get(key)
            if block is not None:
                if value is None and _default(cls.__dataclass_fields__[key]) is not None:
                    raise SpecError(f"{where}.{key} must be a mapping (leave it out for the defaults)")
                if value is not None:
                    value = block.from_dict(value, key if cls.TOP else f"{where}.{key}")
            values[key] = value
        return cls(**values, _given=tuple(data))

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        """The keys this spec was given, nested blocks as mappings again."""
        out = {}
        for key in self._given:
            value = getattr(self, key)
            out[key] = value.to_dict() if isinstance(value, Spec) else copy.deepcopy(value)
        return out

    def to_json(self) -> str:
        return spec_json(self)

    def given(self, key: str) -> bool:
        """Whether `key` was set (rather than left to its default)."""
        return key in self._given

    def updated(self, **changes) -> "Spec":
        """A copy with `changes` set (and given)."""
        given = self._given + tuple(k for k in changes if k not in self._given)
        return dataclasses.replace(self, **changes, _given=given)


def max_model_len(configured: int | None, max_new_tokens: int, prompt_tokens: int) -> int:
    """The longest sequence an engine must hold: its configured max_model_len, else a prompt of
    `prompt_tokens` (the planner's prompt budget) and a whole response."""
    return configured or prompt_tokens + max_new_tokens


# ---- vLLM engines -----------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class VLLM(Spec):
    """A vLLM engine's settings (a rollout engine's or a teacher's, colocated with the trainer).
    The engine itself reads them in geopd.engines.vllm_engine (llm_kwargs): absent keys keep
    vLLM's defaults there, the dtype is bfloat16 on GPU and float32 on CPU."""
    WHERE = "vllm"

    tensor_parallel: int = 1
    gpu_memory_utilization: float | None = None
    dtype: str | None = None
    max_model_len: int | None = None
    max_num_batched_tokens: int | None = None
    enforce_eager: bool | None = None
    sleep: bool = False
    kv_cache_gib: float | None = None

    GPU_DTYPE: ClassVar[str] = "bfloat16"

    @property
    def gpu_dtype(self) -> str:
        """The weights' dtype on a GPU node (where the planner models the engine)."""
        return self.dtype or self.GPU_DTYPE


# ---- where a run's vLLM engines can live ---------------------------------------------------------
#
# A run's vLLM engines live in its trainer processes, one process per GPU
# (geopd.engines.vllm_engine): an engine of tensor_parallel T is T consecutive trainer ranks of one
# node, so T must fit a node and divide the job's GPUs; the engines of one process must share one
# tensor_parallel (vLLM 0.32 keeps its parallel groups process-global) and at most one of them
# may be in sleep mode on a GPU (its CuMem allocator is one per process). Checked before anything
# runs by the grid (the Snakefile, `geopd plan`) and again by the trainer.

ONE_SLEEP_MODE_ENGINE = ("vLLM 0.32 allows one sleep-mode engine per process (sleep mode turns on its CuMem "
                         "allocator, one per process; a second engine's weights fail to load: \"CuMem allocator "
                         "can only be used for one instance per process.\")")


def colocation_problems(settings: "Settings", *, teacher: bool, device: str) -> list[str]:
    """What vLLM 0.32 refuses of a run's two colocated engines (rollout and teacher), each naming
    its keys; [] where the run has at most one vLLM engine (off-policy runs sample from the teacher's)."""
    r, te = settings.rollout, settings.teacher_engine
    if r is None or r.backend != "vllm" or te.backend != "vllm" or not teacher or r.off_policy:
        return []
    out = []
    if r.vllm.tensor_parallel != te.vllm.tensor_parallel:
        out.append(f"rollout.vllm.tensor_parallel={r.vllm.tensor_parallel} but teacher_engine.vllm.tensor_parallel="
                   f"{te.vllm.tensor_parallel}; the two vLLM engines share each trainer process, and vLLM 0.32 "
                   "allows one tensor-parallel size per process: make them equal")
    if device != "cpu" and r.vllm.sleep and te.vllm.sleep:
        out.append(f"rollout.vllm.sleep and teacher_engine.vllm.sleep are both true; {ONE_SLEEP_MODE_ENGINE}: "
                   "let the teacher sleep and keep the rollout engine resident (rollout.vllm.sleep: false)")
    return out


def engine_placement_problems(name: str, tp: int, gpus: int, world: int) -> list[str]:
    """Where an engine of tensor_parallel `tp` cannot be placed on a job of `gpus` GPUs per node and
    `world` GPU processes in all (its group is `tp` consecutive ranks on one node)."""
    if gpus < 1:
        return [f"{name} needs GPUs, but the job requests none (gpus: {gpus})"]
    if tp > gpus:
        return [f"{name} tensor_parallel {tp} spans more than the {gpus} GPU(s) of a node"]
    if world % tp:
        return [f"{name} tensor_parallel {tp} does not divide the job's {world} GPUs"]
    return []


def engine_tensor_parallels(settings: "Settings", *, teacher: bool) -> dict[str, int]:
    """The colocated vLLM engines a run builds in each trainer process, by key, with their
    tensor_parallel (geopd.train.loop.Trainer: the teacher's, then the rollout engine unless an
    off-policy run samples from the teacher's own)."""
    r, te = settings.rollout, settings.teacher_engine
    out = {}
    if r is None:
        return out
    if teacher and te.backend == "vllm":
        out["teacher_engine.vllm"] = te.vllm.tensor_parallel
    if r.backend == "vllm" and not (r.off_policy and "teacher_engine.vllm" in out):
        out["rollout.vllm"] = r.vllm.tensor_parallel
    return out


# ---- a run's training settings ------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Optim(Spec):
    """AdamW and its learning-rate schedule (geopd.train.loop.make_optimizer)."""
    WHERE = "optim"

    lr: float
    schedule: str = "constant"          # constant | linear | cosine, after the warmup
    warmup: float = 0.0                 # fraction of the run's steps
    min_lr_ratio: float = 0.0           # where linear and cosine decay end
    weight_decay: float = 0.0           # matrices only
    betas: tuple[float, float] | list[float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = None      # None: no clipping (the norm is still logged)


@dataclass(frozen=True, kw_only=True)
class DynamicSampling(Spec):
    """DAPO's dynamic sampling as slime runs it (--dynamic-sampling-filter-path
    check_reward_nonzero_std, --over-sampling-batch-size): a group whose rewards all agree is
    dropped and more prompts are sampled, `over_sampling_prompts` at a time, until the step holds
    `prompts_per_step` informative groups; at most `max_rounds` sampling rounds per step (slime
    has no cap; a capped step trains on the groups it has). rlvr only (geopd.train.loop)."""
    WHERE = "dynamic_sampling"

    max_rounds: int = 8
    over_sampling_prompts: int | None = None   # None: rollout.prompts_per_step (slime's default)

    def check(self) -> None:
        for key in ("max_rounds", "over_sampling_prompts"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SpecError(f"rollout.dynamic_sampling.{key} must be a positive integer, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Rollout(Spec):
    """How an on-policy step samples: prompts x samples, split into optimizer updates of
    `global_batch_size` samples (geopd.train.batching), contiguous blocks of the step's samples
    as slime trains them, or interleaved."""
    WHERE = "rollout"
    NESTED = {"vllm": VLLM, "dynamic_sampling": DynamicSampling}

    prompts_per_step: int
    samples: int
    temperature: float
    max_new_tokens: int
    top_p: float = 1.0
    global_batch_size: int | None = None   # None: the whole rollout batch in one update
    source: str = "student"                # student | teacher (off-policy: the teacher samples)
    backend: str = "hf"                    # hf | vllm
    vllm: VLLM = field(default_factory=VLLM)
    update_split: str = "contiguous"       # contiguous (slime) | interleaved: sample g in update g mod U
    dynamic_sampling: DynamicSampling | None = None  # None: one sampling round, groups kept as drawn

    def check(self) -> None:
        if self.update_split not in UPDATE_SPLITS:
            raise SpecError(f"rollout.update_split must be one of {list(UPDATE_SPLITS)}, got {self.update_split!r}")

    def check_method(self, method: str) -> None:
        """What the rollout of `method` can use (SpecError otherwise)."""
        if self.dynamic_sampling is not None and method != "rlvr":
            raise SpecError(f"rollout.dynamic_sampling refills groups whose task rewards all agree: only 'rlvr' "
                            f"uses it, not {method!r}")

    @property
    def samples_per_step(self) -> int:
        return self.prompts_per_step * self.samples

    @property
    def prompts_per_round(self) -> int:
        """Prompts one sampling round draws: over_sampling_prompts under dynamic sampling, else
        prompts_per_step."""
        ds = self.dynamic_sampling
        return self.prompts_per_step if ds is None or ds.over_sampling_prompts is None else ds.over_sampling_prompts

    @property
    def off_policy(self) -> bool:
        return self.source == "teacher"


@dataclass(frozen=True, kw_only=True)
class TeacherEngine(Spec):
    """How the teacher scores: transformers in the trainer's process, or a colocated vLLM engine."""
    WHERE = "teacher_engine"
    NESTED = {"vllm": VLLM}

    backend: str = "hf"                    # hf | vllm
    vllm: VLLM = field(default_factory=VLLM)


@dataclass(frozen=True, kw_only=True)
class Objective(Spec):
    """Advantages and the clipped policy loss (geopd.train.objectives, chosen by the method)."""
    WHERE = "objective"

    coef: float = 1.0                      # OPD: A = -coef * r_t
    alpha: float | None = None             # mix: alpha * A_OPD + (1 - alpha) * A_RLVR
    sparsify: Mapping | None = None        # {mode: topkl | random, rho}: OPD tokens kept
    scale_std: bool = True                 # GRPO: divide by the group's std
    clip_low: float = 0.2
    clip_high: float = 0.28
    aggregation: str = "token-mean"        # token-mean | seq-mean-token-mean
    filter_zero_variance: bool = True      # rlvr: drop groups whose rewards are all equal
    reward: str = "math-verify"            # rlvr/mix: a math record's grader (code records run their tests)
    # rlvr/mix: a run whose task rewards are all zero for this many first steps stops (the answer
    # format or the grader does not fit the data: training would learn nothing). 0: never.
    zero_reward_patience: int = 10

    def check(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise SpecError(f"objective.aggregation must be token-mean or seq-mean-token-mean, "
                            f"got {self.aggregation!r}")
        if self.reward not in REWARDS:
            raise SpecError(f"objective.reward must be one of {list(REWARDS)}, got {self.reward!r}")

    def check_method(self, method: str) -> None:
        """What the objective of `method` can use: SpecError for an unknown objective, or a key
        it cannot use."""
        if method not in RL_METHODS:
            raise SpecError(f"unknown objective {method!r}; known: {', '.join(RL_METHODS)}")
        if self.given("alpha") and method != "mix":
            raise SpecError(f"objective.alpha is only used by 'mix', not {method!r}")
        if method == "mix" and not self.given("alpha"):
            raise SpecError("objective 'mix' needs alpha")
        if self.given("reward") and method not in REWARD_METHODS:
            raise SpecError(f"objective.reward grades a task reward: {method!r} has none")
        sp = self.sparsify
        if sp is not None:
            if method == "rlvr":
                raise SpecError("objective.sparsify masks the OPD signal r_t; 'rlvr' has none")
            if not isinstance(sp, Mapping) or set(sp) != {"mode", "rho"}:
                raise SpecError(f"objective.sparsify must be {{mode, rho}}, got {sp!r}")


@dataclass(frozen=True, kw_only=True)
class Engine(Spec):
    """How the trainer computes. Absent keys keep the miniature's behaviour: fp32 without FSDP
    on one process, no activation checkpointing, SFT steps in length buckets and one
    micro-batch per RL update (geopd.train.batching), lm_head chunks of ~2**24 logits."""
    WHERE = "engine"

    param_dtype: str = "float32"           # compute dtype of the unsharded weights (FSDP2)
    reduce_dtype: str = "float32"          # gradient reduce-scatter dtype
    activation_checkpointing: bool = False  # per decoder layer
    micro_batch_tokens: int | None = None   # padded tokens per forward/backward on one rank
    logprob_chunk_tokens: int | None = None  # hidden-state rows per lm_head chunk

    def check(self) -> None:
        for key in ("param_dtype", "reduce_dtype"):
            if getattr(self, key) not in TRAINER_DTYPES:
                raise SpecError(f"engine.{key} must be one of {sorted(TRAINER_DTYPES)}, got {getattr(self, key)!r}")
        for key in ("micro_batch_tokens", "logprob_chunk_tokens"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SpecError(f"engine.{key} must be a positive integer, got {value!r}")

    @property
    def mixed_precision(self) -> bool:
        return self.param_dtype != "float32" or self.reduce_dtype != "float32"

    def sharded(self, world: int) -> bool:
        """FSDP2 (geopd.train.distributed.shard_model): more than one process, or mixed precision."""
        return world > 1 or self.mixed_precision


@dataclass(frozen=True, kw_only=True)
class Extrapolation(Spec):
    """EffOPD's search (geopd.train.effopd)."""
    WHERE = "extrapolation"

    schedule: str = "powers-of-two"
    candidates: int = 5
    factor_step: float = 2.0
    validation_prompts: int = 50


@dataclass(frozen=True, kw_only=True)
class Projection(Spec):
    """A rank-K run in the config: its gradients confined to the top-`rank` right singular
    directions of run@step's update (the trainer gets them as a ProjectionBasis)."""
    WHERE = "projection"

    run: str
    step: int
    rank: int


@dataclass(frozen=True, kw_only=True)
class Settings(Spec):
    """A run's training settings in the grid (the keys method_defaults and a run share)."""
    WHERE = "settings"
    TOP = True
    NESTED = {"optim": Optim, "rollout": Rollout, "objective": Objective, "engine": Engine,
              "teacher_engine": TeacherEngine}

    batch_size: int | None = None          # SFT: sequences per step
    max_length: int | None = None          # SFT: tokens per sequence
    optim: Optim | None = None
    rollout: Rollout | None = None         # on-policy methods
    objective: Objective = field(default_factory=Objective)
    engine: Engine = field(default_factory=Engine)
    teacher_engine: TeacherEngine = field(default_factory=TeacherEngine)

    @property
    def rollout_source(self) -> str:
        """Who samples the training sequences ("student" without rollouts: SFT's own data)."""
        if self.rollout is None:
            return Rollout.__dataclass_fields__["source"].default
        return self.rollout.source


# ---- what `geopd train` gets ----------------------------------------------------------------------

# Minutes of wall clock between training-state saves (beside checkpoint steps and a requested stop),
# so that a node failure loses at most this much: `geopd train --state-every-min`, from the train
# resources' state_every_min (0: never by the clock).
STATE_EVERY_MIN = 30.0
# A job's longest runtime in minutes where its resources name no max_runtime (geopd.workflow caps
# retries at it, geopd.plan's suggestions too). 48 h: a common time limit of GPU partitions
# (`sinfo -o "%P %l"` shows yours); jobs that ask for more must state their partition's limit as
# max_runtime.
DEFAULT_MAX_RUNTIME = 2880

@dataclass(frozen=True, kw_only=True)
class DataSource(Spec):
    WHERE = "data"

    name: str
    dir: str
    kind: str | None = None


@dataclass(frozen=True, kw_only=True)
class ProjectionBasis(Spec):
    """rank16 runs: gradients projected onto the top-`rank` right singular vectors of
    checkpoint - origin (geopd.train.objectives.projection_basis)."""
    WHERE = "projection"

    checkpoint: str
    origin: str
    rank: int


@dataclass(frozen=True, kw_only=True)
class Continuation(Spec):
    """A run started from run@step continues that run's training state (geopd.train.resume)."""
    WHERE = "continues"

    run: str
    step: int
    state: str


@dataclass(frozen=True, kw_only=True)
class RunSpec(Settings):
    """One training job: a grid run (geopd.grid.specs.run_spec) or a miniature model's build
    (geopd.world.build), handed to `geopd train` as JSON."""
    WHERE = "run spec"
    NESTED = {**Settings.NESTED, "data": DataSource, "projection": ProjectionBasis,
              "extrapolation": Extrapolation, "continues": Continuation}

    run: str
    method: str
    seed: int
    init: str | None                       # None: the caller passes the model (a fresh miniature)
    data: DataSource
    steps: int
    checkpoints: list[int]
    state_dir: str
    optim: Optim = field()  # required here (field(): the settings' default None is not inherited)
    family: str | None = None
    device: str = "cpu"                    # cpu | cuda | auto
    start_step: int = 0                    # a run from run@step counts on from that step
    teacher: str | None = None
    loss_on: str = "response"              # SFT: response | all (pretraining)
    checkpoint_dtype: str = "bfloat16"     # exported weights
    projection: ProjectionBasis | None = None
    extrapolation: Extrapolation | None = None
    keep_state: list[int] = field(default_factory=list)  # steps whose training state is kept
    continues: Continuation | None = None

    def check(self) -> None:
        if self.method not in METHODS:
            raise SpecError(f"run {self.run}: unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.method in RL_METHODS:
            if self.rollout is None:
                raise SpecError(f"run {self.run}: method {self.method!r} needs a rollout block")
            self.objective.check_method(self.method)
            self.rollout.check_method(self.method)

    @property
    def rl(self) -> bool:
        return self.method in RL_METHODS

    @property
    def rewarded(self) -> bool:
        return self.method in REWARD_METHODS


# ---- how a training run reports while it trains (`geopd train --tracking`) --------------------

WANDB_MODES = ("online", "offline", "disabled")


@dataclass(frozen=True, kw_only=True)
class WandB(Spec):
    """Weights & Biases logging of a run (geopd.train.tracking): the same scalars as
    TensorBoard, the run's spec as the W&B config, one W&B run per grid run (resumed by id after
    a retry). `offline` writes under the run's folder for `wandb sync` (compute nodes without
    network); `disabled` logs nothing."""
    WHERE = "tracking.wandb"

    project: str
    entity: str | None = None              # None: the W&B default entity of the key
    mode: str = "online"                   # online | offline | disabled
    group: str | None = None               # the grid groups its runs (the grid's name)
    tags: list[str] = field(default_factory=list)

    def check(self) -> None:
        if self.mode not in WANDB_MODES:
            raise SpecError(f"tracking.wandb.mode must be one of {', '.join(WANDB_MODES)}, got {self.mode!r}")


@dataclass(frozen=True, kw_only=True)
class Tracking(Spec):
    """What a training run writes beside its metrics while it trains (geopd.train.tracking):
    TensorBoard event files and a progress file under `run_dir` (geopd.paths.RunFiles), W&B
    when `wandb` is set, and a progress line every `progress_interval` seconds. Not a training
    setting: no weight depends on it (the train rule passes it outside its params)."""
    WHERE = "tracking"
    NESTED = {"wandb": WandB}

    run_dir: str | None = None             # None: no TensorBoard or progress file (model builds, tests)
    wandb: WandB | None = None
    progress_interval: float = 60.0        # seconds between the training log's progress lines

    def check(self) -> None:
        if not self.progress_interval >= 0:
            raise SpecError(f"tracking.progress_interval must be >= 0 seconds, got {self.progress_interval!r}")


# ---- what `geopd evaluate` gets -------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Benchmark(Spec):
    """A benchmark of the config; the grid adds its name and data folder, the planner the
    evaluation's tensor x data parallelism (geopd.plan.evaluation_spec)."""
    WHERE = "benchmark"

    kind: str                              # math | code | lcb | mcq
    data: str
    samples: int
    temperature: float
    max_new_tokens: int
    split: str = "test"
    top_p: float | None = None
    integer_range: list[int] | None = None
    limit: int | None = None
    task: str | None = None
    backend: str = "auto"                  # auto (vLLM on a GPU node) | hf | vllm
    dtype: str | None = None
    batch_size: int | None = None
    tensor_parallel: int | None = None     # None: the planner picks
    data_parallel: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enforce_eager: bool | None = None
    kv_cache_gib: float | None = None
    name: str | None = None
    data_dir: str | None = None

    def vllm(self, tensor_parallel: int) -> VLLM:
        """The evaluation engine's vLLM settings (as the planner models it; geopd.evaluate.engine
        starts it with EVAL_GPU_MEMORY_UTILIZATION where the benchmark sets no share)."""
        util = EVAL_GPU_MEMORY_UTILIZATION if self.gpu_memory_utilization is None else self.gpu_memory_utilization
        return VLLM(tensor_parallel=tensor_parallel, gpu_memory_utilization=util, dtype=self.dtype)

    def model_len(self, prompt_tokens: int) -> int:
        """The longest sequence the evaluation engine must hold (see `max_model_len`)."""
        return max_model_len(self.max_model_len, self.max_new_tokens, prompt_tokens)
