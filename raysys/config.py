"""Typed configuration: one section per stage, loaded from YAML with strict dotted overrides.

    cfg = load_config("jobs/configs/ml100k.yaml", ["data.max_len=100", "distill.lambda_kd=0.5"])

Unknown keys and wrong types raise `RaysysError` naming the dotted key. Every section is a pydantic
model with explicit defaults, so a YAML file only states what differs from them, and
`cfg.to_dict()` round-trips through `Config.model_validate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raysys.errors import RaysysError


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(Section):
    """The embedded default data: interaction logs with planted sequential structure."""

    num_users: int = Field(2000, ge=1)
    num_items: int = Field(1000, ge=10)
    num_interactions: int = Field(50_000, ge=1000)
    num_topics: int = Field(20, ge=1)
    cold_item_fraction: float = Field(0.05, ge=0.0, lt=1.0)  # items that appear only in valid/test
    cold_target_prob: float = Field(0.15, ge=0.0, le=1.0)  # chance a valid/test target is a cold item
    follow_prob: float = Field(0.6, ge=0.0, le=1.0)  # chance the next item is a planted successor
    # Chance an interaction is noise: an item drawn by popularity from any topic, unrelated to the user's
    # interests and last item (an impulse click, a shared account); the user goes on from it
    noise_prob: float = Field(0.0, ge=0.0, le=1.0)
    popularity_exponent: float = Field(1.0, ge=0.0)  # Zipf exponent of item popularity within a topic
    min_sequence_length: int = Field(5, ge=3)  # shortest user sequence (the long tail starts here)
    seed: int = 0


class DataConfig(Section):
    """Where the interaction log is and how it is read, validated, filtered and split."""

    path: str | None = None  # file, directory or glob; None = generate the synthetic default
    format: Literal["auto", "parquet", "csv", "movielens", "recbole", "sequence", "event_log", "synthetic"] = "auto"
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    rating_col: str | None = "rating"  # optional column; missing in the file is fine
    event_col: str | None = None  # optional event type column (e.g. click / purchase / dislike)
    # Event types that are not positives (a skip, a dislike): with an event column (data.event_col, or a
    # served event log) their rows are left out of the prepared sequences, so training never learns them
    # as choices; the served live histories leave them out too. Logs without event types are all positives.
    negative_events: list[str] = ["skip", "dislike"]
    csv_delimiter: str = ","
    item_path: str | None = None  # optional item side file (item id + text fields)
    item_text_fields: list[str] | None = None  # None = every text field the item file has
    on_bad_rows: Literal["fail", "drop"] = "fail"
    cache_dir: str = "~/.cache/raysys/datasets"
    min_user_interactions: int = Field(0, ge=0)  # iterated k-core; 0 = no filter
    min_item_interactions: int = Field(0, ge=0)
    max_len: int = Field(50, ge=2)  # training window length (does not change the prepared data)
    # A share of the items, drawn with `seed`, kept out of every training part: their interactions remain
    # only where they are a user's valid or test target, so cold-start quality can be measured on any log
    # (the "test/cold_items" slice). A user whose training part would be left empty loses its evaluation
    # instead (its held-out items go too). 0 = off.
    cold_item_holdout: float = Field(0.0, ge=0.0, lt=1.0)
    # How each user's interactions are split: "leave_one_out" (the last is the test target, the one before
    # it the valid target) or "temporal" (needs time_cutoff: the user's first interaction after the cutoff is
    # the test target, the last one up to it the valid target, later ones are left out, and users with
    # nothing up to it are too).
    split: Literal["leave_one_out", "temporal"] = "leave_one_out"
    # Seconds since the epoch, as the log's timestamps. With split=leave_one_out, interactions after it are
    # left out: a model trained on the past, for `raysys update` to continue on what came after. None = none.
    time_cutoff: float | None = None
    # A prepared dataset whose vocabularies this one extends: its user and item ids keep their indices and
    # ids it lacks are appended (in the usual order), so a model trained on it can be warm-started here
    # (`raysys update`). Its ids are never filtered out (data.min_*_interactions apply to new ids only).
    vocab_from: str | None = None
    seed: int = 0
    synthetic: SyntheticConfig = SyntheticConfig()


class ModelConfig(Section):
    """Shared shape of teacher and student: a transformer over item sequences."""

    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    intermediate_size: int | None = None  # None = 4 * hidden_size
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    use_text: bool = False  # add projected item-text embeddings to the item-ID embeddings
    # With use_text: the probability that a training lookup of an item drops its ID vector and uses its
    # projected text alone, so the text path learns to stand for an item without an ID (a cold item, an
    # item added to the served catalog). No effect without use_text, at evaluation or when serving.
    id_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # With use_text: added to the score of every item without an ID vector (absent from training, or added
    # to the served catalog) when ranking, a prior for new items that text alone under-scores (training
    # never sees an ID-less item as a positive). "auto": chosen after training on validation NDCG@10 from
    # multiples of the spread of the users' scores, 0 when valid has no such target; the model directory
    # and summary.json ("resolved") carry the value. Evaluation and serving apply it; training losses never.
    new_item_boost: Annotated[float, Field(ge=0.0)] | Literal["auto"] = "auto"
    init_std: float = 0.02

    @property
    def fixed_new_item_boost(self) -> float:
        """The boost a model is built with: the number, or 0.0 while "auto" is unresolved (and without text)."""
        return float(self.new_item_boost) if self.use_text and self.new_item_boost != "auto" else 0.0


class TeacherConfig(ModelConfig):
    """The large teacher, built from Hugging Face `transformers` classes."""

    # llama measured best on ml-100k validation (jobs/bench/teacher_arch.py: NDCG@10 llama 0.118, gpt2 0.099,
    # bert 0.042)
    arch: Literal["bert", "gpt2", "llama"] = "llama"
    gradient_checkpointing: bool = False
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"


class StudentConfig(ModelConfig):
    """The small student served online: a plain causal transformer."""

    # "llama": a small HF Llama (RoPE, RMSNorm, SwiGLU); "causal": the hand-written nanoGPT-style block.
    # Measured on ml-100k valid (hidden 64, 2 layers, next-item only, 15 epochs, seed 0): llama 0.1157, causal 0.0915.
    arch: Literal["llama", "causal"] = "llama"


class TrainingConfig(Section):
    """Controls shared by every training loop (pretrain, fine-tune, distill)."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    grad_clip: float | None = 1.0
    grad_accum: int = Field(1, ge=1)
    seed: int = 0
    # Softmax over the whole catalog ("full") or over in-batch + `num_negatives` uniform negatives with logQ
    # ("sampled"). "auto": sampled when the catalog is large against a batch's targets (items > SAMPLED_ABOVE
    # x (targets per batch + num_negatives), raysys.objectives.softmax), else full; resolved from the
    # prepared data when training starts and written into the run's config.yaml and summary.json.
    loss: Literal["auto", "full", "sampled"] = "auto"
    num_negatives: int = Field(256, ge=1)  # uniform negatives for the sampled softmax
    mask_prob: float = Field(0.2, gt=0, lt=1)  # Cloze masking rate
    cl_temperature: float = Field(1.0, gt=0)  # InfoNCE temperature of the contrastive loss
    cl_crop_ratio: float = Field(0.6, gt=0, le=1)  # CL4SRec crop: share of the sequence kept
    cl_mask_ratio: float = Field(0.3, ge=0, lt=1)  # CL4SRec mask: share of items replaced by the mask token
    cl_reorder_ratio: float = Field(0.6, gt=0, le=1)  # CL4SRec reorder: share of the sequence shuffled
    patience: int = Field(5, ge=1)  # early stopping: epochs in a row without progress on validation NDCG@10
    min_delta: float = Field(0.0, ge=0)  # progress = a gain over the best of more than this (best kept anyway)
    # Length-aware batching: an epoch's shuffled rows are cut into chunks of this many batches, each chunk
    # sorted by row length and cut into batches holding equal shares of its items, so a batch is padded
    # only to its longest row; the batches are then shuffled. 0 or 1: batches of random rows (each still
    # padded to its longest). "auto" (the default): AUTO_LENGTH_BUCKETS when the training rows fill less
    # than half of a full window on average (short histories), else 0; resolved from the data when
    # training starts, like `loss`. Measured on the teacher (to early stopping): sparse preset (rows 12 %
    # full) 1.9 x the targets/s, valid NDCG@10 0.4476 vs 0.4488; ml-100k (rows ~80 % full) no gain in time
    # and valid 0.1249/0.1152 vs 0.1319/0.1307 (2 seeds). On the student (sparse preset, 5 epochs):
    # 2.1 x the targets/s, valid NDCG@10 0.3258 vs 0.3241.
    length_buckets: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    num_workers: int = Field(1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 0
    cpus_per_worker: float = Field(1.0, gt=0)  # Ray CPUs per train worker; fractional leaves room for Ray Data
    max_failures: int = Field(0, ge=0)  # worker-group restarts from the last checkpoint before the run fails
    num_to_keep: int = Field(2, ge=1)  # checkpoints kept in the run directory (the newest ones)
    placement_strategy: Literal["PACK", "SPREAD"] = "PACK"  # SPREAD puts the workers on different nodes
    use_gpu: bool = False  # one GPU per worker: NCCL, bf16 (DeepSpeed); CPU workers run gloo and fp32


class PretrainConfig(TrainingConfig):
    """Teacher pretraining: a weighted mix of self-supervised objectives, or a fine-tune task."""

    task: Literal["pretrain", "next_item", "ctr"] = "pretrain"
    # A model directory to fine-tune from. Its items must be the first of this dataset's: the same
    # dataset, or one prepared with data.vocab_from (new items start from their fresh initialisation).
    init_from: str | None = None
    weight_next_item: float = Field(1.0, ge=0)
    weight_masked_item: float = Field(0.0, ge=0)
    weight_contrastive: float = Field(0.0, ge=0)
    ctr_rating_threshold: float = 4.0  # CTR task: rating >= threshold is a click, below is an explicit non-click
    ctr_negatives: int = Field(1, ge=1)  # CTR task: sampled non-clicks per click when the log has no low ratings


class FinetuneConfig(PretrainConfig):
    """The teacher's fine-tune after self-supervised pretraining: next item (or click prediction) from
    `init_from`'s weights, with a training budget of its own. The pipeline's finetune stage sets
    `init_from` to its pretrain stage's model (or leaves it empty when `pipeline.pretrain` is off: the
    teacher then trains from scratch). The objective weights are not read: next_item is L_next alone."""

    task: Literal["next_item", "ctr"] = "next_item"


class DistillConfig(TrainingConfig):
    """Student training: L = L_rec + lambda_ssl * L_ssl + lambda_kd * L_kd from a frozen teacher."""

    teacher: str | None = None  # the teacher's model directory
    # More teachers' model directories (same dataset): KD then learns from the ensemble of `teacher` and
    # these, the normalised geometric mean of their next-item distributions; the hidden alignment and
    # init_items=teacher read `teacher` alone.
    extra_teachers: list[str] = Field(default_factory=list)
    # A student model directory to continue from (`raysys update`); its items must be the first of this
    # dataset's (data.vocab_from), the new ones start fresh.
    init_from: str | None = None
    # The student's optimiser defaults, chosen on validation of ml-100k and the synthetic default
    # (jobs/configs/ml100k.yaml, quickstart.yaml: both chose lr 2e-3 or more and no contrastive term; the
    # ablation: + SSL lowered the student on both; the noisy sparse preset's search pointed the same way),
    # checked on the sparse preset by jobs/bench/sparse_defaults.py. Before: lr 1e-3, λ_ssl 0.1, no decay.
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    lambda_ssl: float = Field(0.0, ge=0)
    lambda_kd: float = Field(1.0, ge=0)
    temperature: float = Field(2.0, gt=0)
    kd_topk: int | None = None  # None = KL over the whole catalog, else over the teacher's top-K
    lambda_hidden: float = Field(0.0, ge=0)  # hidden-state alignment (projection + MSE)
    # "teacher": the student's item-ID embeddings start from the teacher's item vectors, reduced to the
    # student's width by PCA and scaled to its init_std (`raysys.objectives.distillation.teacher_item_init`).
    init_items: Literal["random", "teacher"] = "random"


class EvalConfig(Section):
    """Full-ranking evaluation: the protocol, cut-offs and slices."""

    ks: list[int] = [5, 10, 20]
    batch_size: int = Field(512, ge=1)
    exclude_seen: bool = True
    sampled_negatives: int = Field(0, ge=0)  # > 0 adds sampled_* metrics, labelled as sampled
    short_history_max: int = Field(5, ge=1)  # slice: users with at most this many interactions
    seed: int = Field(0, ge=0)  # sampled negatives: user u's negatives come from the generator seeded (seed, u)


class SearchDimension(Section):
    """One searched hyper-parameter of `tune.space`: a distribution over a dotted config key's value."""

    kind: Literal["loguniform", "uniform", "choice"] = "uniform"
    low: float | None = None  # loguniform / uniform bounds
    high: float | None = None
    values: list[float | int | str | bool] | None = None  # choice: the candidates
    grid: list[float | int | str | bool] | None = None  # searcher "grid": these values (others are sampled)


def default_search_space() -> dict[str, SearchDimension]:
    """The distill stage's search space: optimiser, loss weights, KD temperature, student dropout."""
    return {
        "distill.lr": SearchDimension(kind="loguniform", low=2e-4, high=1e-2, grid=[5e-4, 2e-3]),
        "distill.weight_decay": SearchDimension(kind="uniform", low=0.0, high=0.1),
        "distill.lambda_ssl": SearchDimension(kind="uniform", low=0.0, high=0.5),
        "distill.lambda_kd": SearchDimension(kind="uniform", low=0.0, high=2.0, grid=[0.5, 1.5]),
        "distill.temperature": SearchDimension(kind="uniform", low=1.0, high=4.0),
        "student.dropout": SearchDimension(kind="uniform", low=0.0, high=0.5),
    }


class TuneConfig(Section):
    """Hyper-parameter search over the distill stage (or pretraining): Ray Tune searchers and schedulers."""

    num_samples: int = Field(8, ge=1)
    searcher: Literal["random", "grid", "optuna", "hyperopt"] = "random"
    scheduler: Literal["none", "asha", "pbt"] = "asha"
    max_concurrent: int = Field(1, ge=1)
    cpus_per_trial: float = Field(1.0, ge=0)  # trial_mode "direct"; a "ray_train" trial holds none (its workers do)
    seed: int = 0
    # The first trial runs the config's own values (Tune's points_to_evaluate), so the best found is
    # never worse on validation than the untuned config (measured: 8 random trials all trailed it).
    start_from_config: bool = True
    stage: Literal["distill", "pretrain"] = "distill"
    trial_mode: Literal["direct", "ray_train"] = "direct"  # train in the trial, or launch Ray Train from it
    space: dict[str, SearchDimension] = Field(default_factory=default_search_space)  # dotted key -> distribution
    max_failures: int = Field(1, ge=0)  # retries of a failing trial (from its last checkpoint)
    time_budget_s: float | None = Field(None, gt=0)  # stop starting/continuing trials after this wall time
    grace_period: int = Field(2, ge=1)  # ASHA: epochs every trial runs before it can be stopped
    reduction_factor: float = Field(3.0, gt=1)  # ASHA: keep 1/reduction_factor of the trials at each rung
    perturbation_interval: int = Field(2, ge=1)  # PBT: epochs between exploit/explore decisions
    quantile_fraction: float = Field(0.25, ge=0, le=0.5)  # PBT: bottom share copies the top share
    resample_probability: float = Field(0.25, ge=0, le=1)  # PBT: explore by resampling instead of x1.2/x0.8
    synch: bool = False  # PBT: the population waits for its slowest trial at every interval (exploits certain, slower)


class VariantConfig(Section):
    """One arm of an A/B test in Serve (`serve.variants`): its name, the model it serves, its traffic weight."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    model_dir: str | None = None  # None: the served model (serve.model_dir, `raysys serve --model`)
    weight: float = Field(1.0, ge=0)  # relative: a variant's share of users is weight / the sum of the weights


class ReplicaOptions(Section):
    """The serving settings each replica takes from its live `user_config`: a redeploy that changes only
    these reconfigures the running replicas instead of replacing them."""

    batching: bool = True
    max_batch_size: int = Field(32, ge=1)
    # Wait up to 4 ms for a batch to fill. Behind the HAProxy ingress the replica is the bottleneck and a
    # forward pass costs about the same for 1 query as for 8: measured back to back (jobs/bench/serving.py,
    # 2 cores), paced 400 req/s p99 68 ms against 191 ms with no wait, closed-loop max 1,077 against
    # 1,031 req/s; the price is +4 ms p50 at 100 req/s.
    batch_wait_timeout_s: float = Field(0.004, ge=0)
    max_history: int = Field(200, ge=1)  # most recent known ids the model reads (exclude_seen covers all)
    max_body_bytes: int = Field(262_144, ge=1024)  # larger request bodies: 413
    torch_threads: int = Field(1, ge=1)  # intra-op threads per replica
    int8: bool = False  # dynamic int8 quantisation of the student's Linear layers (CPU serving)
    # The durable event log (raysys/data/event_log.py): /events and /items answer only once their records
    # are fsynced here, and the live store is rebuilt from it. `raysys serve` and the pipeline's smoke stage
    # use RUN/event_log; None (a bare `serve deploy`): ~/.cache/raysys/event_log on the replicas' node.
    # An s3:// or gs:// URI (raysys/data/remote_log.py): records are fsynced in a local stage before the
    # answer, and each sealed segment is uploaded there (so the URI trails by at most a segment's age).
    event_log: str | None = None
    # Where a URI event_log is staged on each node (None: ~/.cache/raysys/event_log_stage); keep it on a
    # persistent volume: until sealed and uploaded, acknowledged records live only there.
    event_log_stage: str | None = None
    # The live state (events posted since training, items added), held by the live store and copied in every
    # replica: per user the most recent live_max_events_per_user ids within live_max_user_bytes; over
    # live_store_max_bytes in all, the users updated longest ago are evicted from memory and reloaded from
    # the event log (a per-segment user index) when they are asked for or post again.
    live_max_events_per_user: int = Field(1000, ge=1)
    live_max_user_bytes: int = Field(256 << 10, ge=1024)
    live_store_max_bytes: int = Field(256 << 20, ge=1 << 20)
    # An A/B test (raysys/serve/variants.py): a user's variant is bucket = sha256(ab_salt + user_id) mod 10,000
    # mapped onto the weights in this order, so it is sticky across requests, replicas and restarts, and a
    # weight change moves only the buckets that change hands. Requests without a user_id go to the first
    # variant. Empty: one variant, "default", serving model_dir. Weights change live (a reconfigure).
    variants: list[VariantConfig] = Field(default_factory=list)
    ab_salt: str = Field("raysys-ab", min_length=1, max_length=128)  # a new salt is a new split of the users
    # Log every /recommend with a user_id as an impression (request_id, user, variant, items shown) in the A/B log
    # beside the event log (EVENT_LOG/ab), which `raysys abtest` analyses with POST /feedback's records.
    log_impressions: bool = True

    @model_validator(mode="after")
    def _variants_are_a_split(self) -> ReplicaOptions:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique (got {names})")
        if self.variants and sum(v.weight for v in self.variants) <= 0:
            raise ValueError("the variants' weights must not all be 0")
        return self


class ServeConfig(ReplicaOptions):
    """The online endpoint: the Serve application, its deployment options and replica settings."""

    model_dir: str | None = None
    # haproxy: Serve's high-throughput HAProxy ingress (raysys/serve/ingress.py); proxy: its Python proxy.
    # Fixed when Ray starts: raysys sets it for the clusters it starts; `ray start` needs it exported.
    ingress: Literal["haproxy", "proxy"] = "haproxy"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    app_name: str = "raysys"
    # Two replicas of half a Ray CPU each: a replica is one Python process, so one replica uses one core;
    # two use both cores of a small machine (jobs/bench/serving.py, 2 cores: closed-loop max about 1.4 x
    # one replica's) and a replica that dies costs no request (the other takes its retries).
    num_replicas: int = Field(2, ge=1)
    max_replicas: int | None = Field(None, ge=1)  # above num_replicas: autoscale between the two
    target_ongoing_requests: float = Field(8.0, gt=0)  # autoscaling target per replica
    num_cpus: float = Field(0.5, gt=0)  # Ray CPUs reserved per replica
    # In flight per replica: high, because the replica queues cheaply (its batcher) while requests
    # queued in the proxy's router cost CPU each; beyond both: 503 + Retry-After at once.
    max_ongoing_requests: int = Field(128, ge=1)
    max_queued_requests: int = Field(32, ge=1)  # waiting in each proxy
    request_timeout_s: float = Field(10.0, gt=0)  # end to end, at the proxy; beyond it: 408
    access_log: bool = True  # one log line per request in the proxy and replica logs
    # Saved with the run config; prefer api_key_env. None keeps the key a running app has; "off" removes it.
    api_key: str | None = None
    api_key_env: str | None = None  # name of an environment variable holding the API key


class PipelineConfig(Section):
    """The one-command pipeline."""

    # The teacher is `pretrain` (the self-supervised mix of the pretrain section) then `finetune` (next item
    # from pretrain's weights); false skips pretraining and the finetune stage trains the teacher from scratch.
    pretrain: bool = False
    run_tune: bool = False
    # Also train the student without distillation (lambda_kd = lambda_hidden = 0, no teacher) at the same
    # budget: summary.json's models.student_no_kd and the report then show what the teacher bought.
    kd_control: bool = False
    force: bool = False


class UpdateConfig(Section):
    """`raysys update`: continue a run's teacher and student on the events logged since its dataset, and
    promote the new student only when it is not worse on the newest events (raysys/recipes/update.py)."""

    base_run: str | None = None  # the run to update: a pipeline run, or an earlier update's run
    event_log: str | None = None  # the event log to learn from (None: serve.event_log)
    epochs: int = Field(3, ge=1)  # the warm start's budget, for the teacher and for the student
    lr: float = Field(1e-3, gt=0)  # the training default: new items start from scratch and must be learnt
    # The student's contrastive term during the warm start (distill.lambda_ssl, whose default is 0, is not
    # used here): with fresh vectors and a few steps, it is what brings new items into the top-K. Measured
    # (tests/serve/test_update.py, tiny run): without it no new item reached any of 40 new users' top 10.
    lambda_ssl: float = Field(0.1, ge=0)
    # Promote unless the candidate's NDCG@10 on the held-out events is below the serving model's by more than this
    promote_margin: float = Field(0.0, ge=0)
    holdout_fraction: float = Field(0.1, gt=0, lt=1)  # the newest new events, by time: evaluated on, never trained
    serve_app: str | None = None  # a running Serve application whose model a promotion swaps (a hot reload)
    variant: str | None = None  # the A/B variant of serve_app whose model a promotion swaps (serve.variants)


class AbtestConfig(Section):
    """`raysys abtest`: the analysis of the A/B test logged beside the event log (raysys/eval/abtest.py)."""

    event_log: str | None = None  # the event log whose A/B log (EVENT_LOG/ab) is read (None: serve.event_log)
    control: str | None = None  # the variant the others are compared with (None: serve.variants' first)
    since: float | None = None  # only records at or after this time (seconds since the epoch)
    until: float | None = None  # ... and before this one
    alpha: float = Field(0.05, gt=0, lt=1)  # significance level of `significant`


class Config(Section):
    """The whole resolved configuration of a run."""

    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    distill: DistillConfig = DistillConfig()
    eval: EvalConfig = EvalConfig()
    tune: TuneConfig = TuneConfig()
    serve: ServeConfig = ServeConfig()
    pipeline: PipelineConfig = PipelineConfig()
    update: UpdateConfig = UpdateConfig()
    abtest: AbtestConfig = AbtestConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-safe): what crosses the Ray boundary and is saved."""
        return self.model_dump(mode="json")

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML (the same file `--config` accepts)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


PATH_KEYS = (
    "data.path",
    "data.item_path",
    "distill.teacher",
    "distill.extra_teachers",
    "pretrain.init_from",
    "finetune.init_from",
    "distill.init_from",
    "update.base_run",
    "update.event_log",
    "abtest.event_log",
    "serve.model_dir",
)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config, apply `dotted.key=value` overrides, validate strictly.

    Relative paths written in the YAML file are resolved against the project root of that file
    (its nearest ancestor holding `pyproject.toml`, else the file's folder); relative paths given
    as overrides are resolved against the current directory.
    """
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        raw = _read_yaml(path)
        _resolve_paths(raw, _project_root(path))
    cli_raw: dict[str, Any] = {}
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
        _set_dotted(cli_raw, key, value)
    _resolve_paths(cli_raw, Path.cwd())
    for key in PATH_KEYS:
        value = get_dotted(cli_raw, key)
        if value is not None:
            _set_dotted(raw, key, value)
    return config_from_dict(raw, where=where)


def config_from_dict(raw: dict[str, Any], where: str = "config") -> Config:
    """Validate a nested dict into a `Config`, turning pydantic errors into one clear line."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise RaysysError(_format_validation_error(exc), where=where) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RaysysError("config file not found", where=str(path), hint="pass --config FILE (see jobs/configs/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RaysysError(f"not valid YAML ({str(exc).splitlines()[0]})", where=str(path)) from None
    if not isinstance(raw, dict):
        raise RaysysError("a config file must be a mapping of sections (data:, teacher:, ...)", where=str(path))
    return raw


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key or " " in key:
        raise RaysysError(f"override {item!r} is not of the form section.key=value", where="command line")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key, value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RaysysError(f"cannot set {key!r}: {part!r} is not a section", where="command line")
        node = child
    node[parts[-1]] = value


def get_dotted(raw: dict[str, Any], key: str, default: Any = None) -> Any:
    """The value at a dotted key ("distill.lr") of a nested dict, or `default` where a part is missing."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for key in PATH_KEYS:
        value = get_dotted(raw, key)
        if isinstance(value, str) and value and not _is_absolute(value):
            _set_dotted(raw, key, str((base / value).resolve()))
        elif isinstance(value, list):  # a list of paths (distill.extra_teachers)
            resolved = [
                str((base / v).resolve()) if isinstance(v, str) and v and not _is_absolute(v) else v for v in value
            ]
            _set_dotted(raw, key, resolved)


def _is_absolute(value: str) -> bool:
    return "://" in value or value.startswith("~") or Path(value).is_absolute()


def _project_root(config_path: Path) -> Path:
    for parent in config_path.resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return config_path.resolve().parent


def _format_validation_error(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r}")
        else:
            problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(problems)


def config_hash(section: BaseModel, exclude: set[str] | None = None) -> str:
    """A short stable hash of a config section (used to key caches)."""
    import hashlib

    payload = json.dumps(section.model_dump(mode="json", exclude=exclude), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
