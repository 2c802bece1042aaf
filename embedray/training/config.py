"""Configuration of the per-worker training loop and of the Ray Train run around it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: Resources set by their own fields (``cpus_per_worker``, ``use_gpu``, ``num_gpus``), not in a
#: custom ``resources`` mapping.
BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def check_resources(name: str, resources: dict[str, float]) -> None:
    """A custom-resources mapping names no built-in resource and asks for no negative amount."""
    for key, amount in resources.items():
        if key in BUILTIN_RESOURCES:
            raise ValueError(f"{name}: {key} has its own setting (cpus / use_gpu / num_gpus); "
                             "this mapping is for custom resources such as {trainer: 1}")
        if amount < 0:
            raise ValueError(f"{name}.{key}: must be >= 0, got {amount:g}")


@dataclass
class TrainConfig:
    """The optimisation schedule and the loop's behaviour (per worker unless stated)."""

    max_steps: int = 300
    """Optimizer steps in the whole run (a resume continues up to this number)."""
    batch_size: int = 32
    """Queries per micro-batch on each worker (the global batch is this × workers × grad_accum)."""
    num_negatives: int = 1
    """Hard negatives per query, drawn from the negative pool or at random from the corpus."""
    negatives: Literal["none", "random", "given", "pool"] = "random"
    """``none``: in-batch only; ``random``: random corpus documents; ``given``: each row's own
    negatives (``neg_ids``, FlagEmbedding ``neg``); ``pool``: a mined pool. Too few candidates
    are topped up with random documents."""
    given_negatives: Literal["fallback", "mix", "instead"] = "fallback"
    """With ``negatives: pool``, how a row's own negatives meet the mined ones: ``fallback``
    (only for queries the pool lacks), ``mix`` (sample from both) or ``instead`` (the row's own
    when it has any)."""
    lr: float = 2e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""
    warmup_ratio: float = 0.1
    """Fraction of ``max_steps`` with a linear warm-up from 0 to ``lr``."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warm-up."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step. Accumulation adds no in-batch negatives:
    each micro-batch's queries see only its own documents (``mini_batch_size`` does)."""
    mini_batch_size: int | None = None
    """GradCache: embed each batch in mini-batches of this many texts without a graph, compute the
    loss on the whole batch, then back-propagate mini-batch by mini-batch: a ``batch_size``
    larger than memory, with every document of it an in-batch negative. None: one pass."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (0 disables)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """The backbone's compute precision (student and frozen teacher, training and dev evaluation):
    ``auto`` = bf16 autocast where the hardware runs it fast (a CUDA GPU with bf16, a CPU with
    AMX-BF16 or AVX512-BF16), fp32 elsewhere. Pooling, losses and scores stay fp32. Exact-resume
    comparisons are made in fp32."""
    weight_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """The dtype of the backbone's working weights when ``precision`` resolves to bf16: ``bf16``
    keeps bf16 copies that the forward and backward passes read (embeddings, biases and
    activations in bf16 too; layer norm and softmax stay fp32 under autocast) while the optimizer
    steps fp32 master weights, which checkpoints, snapshots, dev evaluations and the saved model
    hold; ``fp32`` runs autocast over fp32 weights. ``auto`` = bf16 on a CPU under full
    fine-tuning, fp32 elsewhere (see :mod:`embedray.training.master_weights`)."""
    attention: Literal["auto", "eager", "sdpa"] = "auto"
    """The backbone's attention kernel in the forward passes that train (training mode):
    ``auto`` = ``eager`` (matmul + softmax) on a CPU, where torch's fused SDPA takes longer to
    back-propagate through, the backbone's own elsewhere; ``eager`` / ``sdpa`` force it.
    Inference passes (dev evaluation, encoding, a frozen teacher) and the saved model keep the
    backbone's own."""
    seed: int = 0
    """Seeds the model head, batch order, negatives and dropout; same seed → same run."""
    max_query_length: int = 64
    """Tokens per query (truncated beyond)."""
    max_doc_length: int = 128
    """Tokens per document (truncated beyond)."""
    length_bucketing: bool = True
    """Group examples of similar document length into a batch to cut padding."""
    bucket_batches: int = 16
    """How many batches' worth of examples are length-sorted together (bigger: less padding, less randomness)."""
    log_every: int = 10
    """Steps between progress-bar/TensorBoard updates (every step goes to the JSON log)."""
    eval_every: int = 0
    """Steps between dev evaluations (nDCG@10); 0 = only before and after training."""
    eval_on_refresh: bool = False
    """Also evaluate dev each time training switches to a refreshed negative pool (at that step,
    before it trains on the pool): the training plot then has an nDCG@10 point at every refresh."""
    eval_max_queries: int | None = 500
    """Dev queries used for evaluation during training (None = all)."""
    early_stop_patience: int = 0
    """Stop after this many dev evaluations without improvement (0 = never)."""
    checkpoint_every: int = 100
    """Steps between checkpoints (0 = only the final one)."""
    task_sampling: Literal["weighted", "round_robin"] = "weighted"
    """With several ``tasks``: which task each batch comes from (every batch holds one task's rows).
    ``weighted``: drawn by the tasks' weights, seeded; ``round_robin``: the tasks in turn."""
    num_threads: int | None = None
    """torch intra-op threads per worker (None = the CPUs given to the worker). Dev evaluation,
    which rank 0 runs while the other workers wait, uses every core of its node."""

    def __post_init__(self) -> None:
        checks = [
            (self.max_steps > 0, "train.max_steps must be > 0"),
            (self.batch_size > 0, "train.batch_size must be > 0"),
            (self.num_negatives >= 0, "train.num_negatives must be >= 0"),
            (self.lr > 0, "train.lr must be > 0"),
            (0 <= self.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)"),
            (self.grad_accum >= 1, "train.grad_accum must be >= 1"),
            (self.max_grad_norm >= 0, "train.max_grad_norm must be >= 0 (0 disables clipping)"),
            (self.max_query_length > 0 and self.max_doc_length > 0, "train.max_*_length must be > 0"),
            (self.bucket_batches >= 1, "train.bucket_batches must be >= 1"),
            (self.mini_batch_size is None or self.mini_batch_size >= 1, "train.mini_batch_size must be >= 1 or null"),
            (self.log_every >= 1, "train.log_every must be >= 1"),
            (self.eval_every >= 0 and self.checkpoint_every >= 0, "train.eval_every/checkpoint_every must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        if self.negatives == "none":
            self.num_negatives = 0


@dataclass
class DataConfig:
    """Where the training and evaluation data live (see ``embedray data``)."""

    path: str = "data/debian"
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/); ``train_pairs`` and eval splits refer to it.
    This and the other data paths may be ``s3://`` (``gs://``, ``hdfs://``) URIs: the job's driver
    mirrors them under ``cluster.storage_path/.data`` first (:mod:`embedray.data.remote`)."""
    train_pairs: str | None = None
    """JSONL of ``{"query_id", "pos_id", "neg_ids"?}``; None = built from ``qrels/<train_split>.tsv``."""
    train_labels: str | None = None
    """Classification rows instead of pairs: JSONL of ``{"_id": corpus document id, "label",
    "split"?}`` (``embedray data debian`` writes ``labels.jsonl``: each package's Section); only
    rows without a split or of ``train_split`` train. Needs ``loss.name: classification``."""
    train_split: str = "train"
    """Split whose judgements make the training pairs when ``train_pairs`` is not given."""
    dev_split: str | None = "dev"
    """Split evaluated during training (None = none). Never the test split."""
    test_split: str = "test"
    """Split reported after training."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad input rows: stop with file:line: field, or skip and count them (the counts by reason and
    the first file:lines go to the log and to ``data_skipped`` in training_summary_report.json)."""
    max_train_pairs: int | None = None
    """Train on only the first N valid training pairs (None = all); later lines are not read."""

    def __post_init__(self) -> None:
        if self.dev_split is not None and self.dev_split == self.test_split:
            raise ValueError("data.dev_split must not be the test split: the test split is only reported")
        if self.train_split == self.test_split:
            raise ValueError("data.train_split must not be the test split: the test split is only reported")
        if self.max_train_pairs is not None and self.max_train_pairs < 1:
            raise ValueError(f"data.max_train_pairs must be >= 1 or null (all pairs), got {self.max_train_pairs}")


@dataclass
class ClusterConfig:
    """How the run is laid out on Ray (ignored by ``--local`` runs)."""

    num_workers: int = 2
    """Training workers (DDP processes)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker."""
    use_gpu: bool | Literal["auto"] = "auto"
    """One GPU per worker; ``auto``: when the Ray cluster has a GPU for every worker."""
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker needs besides its CPUs and GPU, e.g. ``{trainer: 1}`` to
    place the workers on the nodes started with ``ray start --resources '{"trainer": 4}'``."""
    stage_cpus: float = 1.0
    """CPUs of the Ray task each pipeline stage that encodes runs in (baselines, evaluation, the
    student's rotation); it encodes with every core of its node, as no training runs meanwhile."""
    stage_gpus: float | Literal["auto"] = "auto"
    """GPUs of that task; ``auto``: 1 when the Ray cluster has a GPU, else 0."""
    stage_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources of that task, e.g. ``{head: 1}``."""
    storage_path: str = "runs"
    """Root folder of runs; a run lives in ``storage_path/run_name``. Shared storage on a cluster."""
    run_name: str = "embedray"
    """Re-using a name resumes that run from its last complete checkpoint."""
    max_failures: int = 2
    """Worker-group restarts Ray Train may do after a worker dies."""
    num_to_keep: int = 2
    """Checkpoints kept (the newest ones)."""
    collective_timeout_s: int = 7200
    """Longest a training worker waits in a collective (gloo or NCCL) before the run fails, e.g.
    while rank 0 evaluates dev alone on a large corpus (Ray's own default is 1800 s)."""

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError("cluster.num_workers must be >= 1")
        if self.cpus_per_worker <= 0:
            raise ValueError("cluster.cpus_per_worker must be > 0")
        if self.num_to_keep < 1:
            raise ValueError("cluster.num_to_keep must be >= 1")
        if self.collective_timeout_s < 60:
            raise ValueError(f"cluster.collective_timeout_s must be >= 60 seconds, got {self.collective_timeout_s}")
        check_resources("cluster.resources_per_worker", self.resources_per_worker)
        check_resources("cluster.stage_resources", self.stage_resources)
        if self.stage_cpus < 0 or (self.stage_gpus != "auto" and not self.stage_gpus >= 0):
            raise ValueError("cluster.stage_cpus and cluster.stage_gpus must be >= 0")
        self.storage_path = refuse_uri("cluster.storage_path", self.storage_path)


def refuse_uri(setting: str, value: str) -> str:
    """``value`` as a path (``file:///x`` → ``/x``); a URI of another filesystem is refused: a
    run's own folder must be a mounted path, as it is memory-mapped and written by renames."""
    from embedray.data.remote import is_uri, plain_path, redact

    if is_uri(value):
        raise ValueError(f"{setting}: {redact(value)} is a URI; a run's folder must be a path (local, or a "
                         "filesystem mounted at the same path on every node: NFS, a shared disk, a FUSE mount of "
                         "the bucket). Data settings may be URIs: they are mirrored under it")
    return plain_path(value)


@dataclass
class DistillConfig:
    """Teacher signals for a student run (the loss terms are chosen in ``loss.distill_*``)."""

    teacher: str | None = None
    """The teacher bi-encoder (bundled name or folder); required when ``loss.distill_*`` is on."""
    score_source: Literal["teacher", "cross_encoder", "fused", "data"] = "teacher"
    """Teacher scores over each query's candidates: the teacher bi-encoder's (cosine / temperature),
    the cross-encoder scores carried by the negative pool (needs ``train.negatives: pool``), the
    two fused as the cross-encoder gate fuses them (``fused``: ``α · z(cross-encoder logit) +
    (1 − α) · z(teacher cosine)`` over each row's candidates; the pool's scores and the teacher),
    or the scores the training rows carry (FlagEmbedding ``pos_scores`` / ``neg_scores``; needs
    ``train.negatives: given``)."""
    cross_encoder_temperature: float | None = None
    """Under ``score_source: cross_encoder``: the cross-encoder's logits (recovered from the pool's
    sigmoid probabilities) are divided by this before they become targets (then by
    ``loss.teacher_temperature``). None: the temperature chosen on dev when the cross-encoder was
    checked (the gate file of the run: the one under which its softmax over each dev query's
    candidates best predicts the relevant documents), 1.0 when no dev check ran."""
    fusion_alpha: float | None = None
    """Under ``score_source: fused``: the cross-encoder's weight ``α`` in [0, 1]. None: the weight
    the run's cross-encoder gate chose on dev (an error when the gate chose none)."""
    fusion_temperature: float | None = None
    """Under ``score_source: fused``: the fused scores are divided by this before they become
    targets (then by ``loss.teacher_temperature``). None: the one the gate chose on dev with its
    weight (the fused scores' softmax over each dev query's candidates best predicting the
    relevant documents), 1.0 when it chose none."""
    hidden_layers: list[int] | None = None
    """Under ``loss.distill_hidden``: the teacher layer (0-based) whose token states each student
    layer copies, one per student layer. None: the layers a layer-reduced student was cut from
    (``kept_layers`` in its ``embedray.json``)."""

    def __post_init__(self) -> None:
        for name in ("cross_encoder_temperature", "fusion_temperature"):
            t = getattr(self, name)
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0):
                raise ValueError(f"distill.{name}: must be a number > 0 (or null: chosen on dev), got {t!r}")
        a = self.fusion_alpha
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 1):
            raise ValueError(f"distill.fusion_alpha: must be a number in [0, 1] (or null: chosen on dev), got {a!r}")

    def needs_model(self, needs) -> bool:
        """Whether an objective with these :class:`~embedray.losses.config.LoopNeeds` needs the
        teacher bi-encoder itself (not only scores from the pool or the rows)."""
        return (needs.teacher_embeddings or needs.teacher_hidden
                or (needs.teacher_scores and self.score_source in ("teacher", "fused")))
