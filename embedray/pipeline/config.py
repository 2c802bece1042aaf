"""The job schemas: what a recipe may say, in one place.

- :class:`TrainJobConfig` — ``embedray train`` / ``jobs/train.py``: one bi-encoder run;
- :class:`RefreshConfig` — negative refreshing while it trains (the ANCE loop);
- :class:`PipelineConfig` — ``embedray pipeline`` / ``jobs/pipeline.py``: the end-to-end job.

Each section below is the typed config of one stage library (``ModelConfig`` in
:mod:`embedray.models.config`, ``LossConfig`` in :mod:`embedray.losses.config`, …); loading
and validation are :mod:`embedray.config`'s.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

from embedray.losses.config import LossConfig
from embedray.mining.config import CrossEncoderConfig, MiningConfig
from embedray.models.config import ModelConfig
from embedray.training.config import ClusterConfig, DataConfig, DistillConfig, TrainConfig, check_resources, refuse_uri


@dataclass
class RefreshConfig:
    """How hard negatives are produced and renewed while a bi-encoder trains."""

    mode: Literal["off", "static", "async", "sync"] = "off"
    """``off``: negatives as ``train.negatives`` says; ``static``: mined once before training;
    ``async``: re-mined every ``every`` steps while training goes on; ``sync``: training waits."""
    every: int = 50
    """Optimizer steps between weight snapshots sent to the refresher."""
    cross_encoder: str | None = None
    """A trained cross-encoder folder; None = train one first (on base-model negatives)."""
    denoise: bool = True
    """Rescore mined negatives with the cross-encoder and drop likely false negatives."""
    max_restarts: int = 2
    """Times Ray restarts a crashed refresher actor (training keeps the last good pool meanwhile)."""
    num_cpus: float = 0.25
    """CPUs reserved for the refresher actor (fractional: training workers hold the rest); with
    ``ray_data_encode`` the actor and its Ray Data encoder take half each."""
    niceness: int | Literal["idle"] = 10
    """``async`` mode: how much the refresher's process yields the CPU to the training workers
    beside it: added to every one of its threads' Unix ``nice`` value (Ray starts its workers at
    15, Unix caps at 19), so that on cores it shares with them the trainers go first; ``idle``:
    Linux's ``SCHED_IDLE``, the refresher runs only on cycles the trainers leave: training loses
    the least time, but where the trainers keep every core busy a refresh may not finish within
    the run. Its preparation (pool v1) runs before, at the workers' priority."""
    num_gpus: float | Literal["auto"] = "auto"
    """GPUs for the refresher actor and its Ray Data encoder; ``auto``: 1 when the Ray cluster has
    a GPU the training workers leave free, else 0 (a fraction shares a GPU with a trainer)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources the refresher needs, e.g. ``{head: 1}`` to keep it on the node
    started with ``ray start --head --resources '{"head": 1}'``."""
    ray_data_encode: bool = False
    """Encode the corpus with a Ray Data actor pool instead of inside the refresher."""
    keep_indexes: int = 2
    """Published FAISS index versions kept on disk."""
    sync_timeout_s: float = 3600.0
    """``sync`` mode: the longest training waits for one refresh. Past it, training goes on with
    the pool it has and takes the refreshed one when it arrives, as ``async`` does (a refresher
    that can't be scheduled, or is stuck waiting for resources, must not stall the run for good).
    Keep it below ``cluster.collective_timeout_s``: the other workers wait for rank 0 meanwhile."""
    reencode: float = 1.0
    """Share of the rest of the corpus each refresh re-encodes with the new weights besides the
    documents near the training queries (their candidates in the last refresh and their
    positives), a rotating slice at a time; the others keep their embeddings from the last
    refresh. 1: the whole corpus every refresh. The first refresh of an actor always encodes all."""

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError("refresh.every must be >= 1")
        if self.niceness != "idle" and not 0 <= self.niceness <= 19:
            raise ValueError(f"refresh.niceness must be in 0..19 or 'idle', got {self.niceness!r}")
        if not 0 < self.reencode <= 1:
            raise ValueError(f"refresh.reencode must be in (0, 1], got {self.reencode}")
        if self.sync_timeout_s <= 0:
            raise ValueError(f"refresh.sync_timeout_s must be > 0, got {self.sync_timeout_s}")
        if self.num_cpus < 0 or self.max_restarts < 0:
            raise ValueError("refresh.num_cpus and refresh.max_restarts must be >= 0")
        if self.num_gpus != "auto" and self.num_gpus < 0:
            raise ValueError(f"refresh.num_gpus must be >= 0 or 'auto', got {self.num_gpus}")
        check_resources("refresh.resources", self.resources)


#: A task name: it prefixes the task's ids in the merged data and names its exported prompts.
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass
class TaskConfig:
    """One task of a multi-task train job: its data, objective, share of the batches, instructions
    and negatives. Unset fields take the job's (``model.*_prompt``, ``train.*negatives``)."""

    name: str
    """Task id (letters, digits, ``_.-``): the exported prompts are ``<name>-query`` / ``<name>-document``."""
    data: DataConfig
    """The task's data: a BEIR folder (JSONL or Parquet), with ``train_pairs`` (a FlagEmbedding
    conversion, a pair builder's output, Parquet pairs) or ``train_labels`` (classification)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The task's objective (any of a train job's; distillation terms read the job's ``distill``
    teacher, which encodes the task's texts with the task's instructions)."""
    weight: float | None = None
    """Relative share of batches under ``train.task_sampling: weighted``; None = the task's
    number of training rows (proportional sampling)."""
    query_prompt: str | None = None
    """Instruction before the task's queries; None = ``model.query_prompt``."""
    doc_prompt: str | None = None
    """Instruction before the task's documents; None = ``model.doc_prompt``."""
    negatives: Literal["none", "random", "given", "pool"] | None = None
    """The task's ``train.negatives``; None = the job's, or ``pool`` when ``refresh.mode`` is on
    (the refresher then mines the task's queries in its own corpus)."""
    num_negatives: int | None = None
    """The task's ``train.num_negatives``; None = the job's."""
    given_negatives: Literal["fallback", "mix", "instead"] | None = None
    """The task's ``train.given_negatives``; None = the job's."""

    def __post_init__(self) -> None:
        where = f"tasks[{self.name}]"
        if not isinstance(self.name, str) or not TASK_NAME.fullmatch(self.name):
            raise ValueError(f"tasks: name {self.name!r} must be 1-64 letters, digits, '_', '.' or '-' "
                             "(starting with a letter or digit)")
        if self.weight is not None and not self.weight > 0:
            raise ValueError(f"{where}.weight must be > 0 (or null: proportional to its rows), got {self.weight}")
        if self.num_negatives is not None and self.num_negatives < 0:
            raise ValueError(f"{where}.num_negatives must be >= 0")
        if (self.loss.name == "classification") != bool(self.data.train_labels):
            raise ValueError(f"{where}: loss.name: classification trains on data.train_labels, and "
                             "data.train_labels needs loss.name: classification")
        if self.loss.name == "classification":
            self.negatives, self.num_negatives = "none", 0  # one labelled text per row

    def resolve(self, model: ModelConfig, train: TrainConfig, refreshing: bool = False) -> None:
        """Fill the unset fields from the job's sections (``refreshing``: the job refreshes negatives)."""
        self.query_prompt = model.query_prompt if self.query_prompt is None else self.query_prompt
        self.doc_prompt = model.doc_prompt if self.doc_prompt is None else self.doc_prompt
        self.negatives = self.negatives or ("pool" if refreshing else train.negatives)
        self.num_negatives = train.num_negatives if self.num_negatives is None else self.num_negatives
        self.given_negatives = self.given_negatives or train.given_negatives
        if self.negatives == "none":
            self.num_negatives = 0


@dataclass
class TrainJobConfig:
    """``embedray train`` / ``jobs/train.py``: data, model, loss, loop, negatives, and the Ray layout."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    cross_encoder: CrossEncoderConfig = field(default_factory=CrossEncoderConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    tasks: list[TaskConfig] | None = None
    """Several tasks in one model (each with its own ``data`` and ``loss``, replacing the job's);
    each batch holds one task's rows (``train.task_sampling``)."""

    def __post_init__(self) -> None:
        _mine_with_the_model_prompts(self.mining, self.model)
        if self.tasks is not None:
            self._check_tasks()
            return
        if (self.loss.name == "classification") != bool(self.data.train_labels):
            raise ValueError("loss.name: classification trains on data.train_labels (labelled texts), and "
                             "data.train_labels needs loss.name: classification")
        if self.loss.name == "classification":
            if self.refresh.mode != "off":
                raise ValueError("refresh.mode: classification rows have no query to mine negatives for")
            self.train.negatives, self.train.num_negatives = "none", 0  # one labelled text per row
        self._check_distill(self.loss, self.train.negatives)
        if self.refresh.mode != "off":
            if self.train.negatives == "given":
                raise ValueError("refresh.mode is on, so negatives come from the refreshed pool; keep the "
                                 "rows' own with train.negatives: pool and train.given_negatives: mix or instead")
            if self.train.negatives == "none":
                raise ValueError("refresh.mode is on but train.negatives is 'none': mined negatives "
                                 "need train.negatives: pool (and train.num_negatives >= 1)")
            self.train.negatives = "pool"  # refreshed pools feed the sampler

    def _check_distill(self, loss: LossConfig, negatives: str, where: str = "") -> None:
        """The distillation terms of ``loss`` against the job's ``distill`` section (``negatives``:
        where the rows' negatives come from; ``where``: the task, in the messages)."""
        if self.distill.needs_model(loss.loop_needs()) and not self.distill.teacher:
            raise ValueError(f"{where}loss.distill_score / loss.distill_embed need distill.teacher (a model folder)")
        if self.train.mini_batch_size and loss.distill_hidden:
            raise ValueError(f"train.mini_batch_size (GradCache) caches embeddings, not the token states "
                             f"{where}loss.distill_hidden needs; turn one of them off")
        if self.distill.score_source == "data" and loss.distill_score is not None:
            if negatives != "given":
                raise ValueError(f"distill.score_source: data scores each row's own negatives: {where}loss."
                                 f"distill_score needs train.negatives: given, got {negatives!r}")
            if loss.distill_in_batch:
                raise ValueError(f"{where}loss.distill_in_batch needs distill.score_source: teacher (the rows "
                                 "score only their own candidates)")
        source = self.distill.score_source
        if source in ("cross_encoder", "fused") and loss.distill_in_batch:
            raise ValueError(f"{where}loss.distill_in_batch needs distill.score_source: teacher (the pool holds "
                             "cross-encoder scores only for each query's own candidates)")
        if source in ("cross_encoder", "fused") and self.refresh.mode == "off":
            raise ValueError(f"distill.score_source: {source} needs cross-encoder-scored pools "
                             "(refresh.mode: static, async or sync)")
        if source in ("cross_encoder", "fused") and loss.distill_score is not None and self.tasks and negatives != "pool":
            raise ValueError(f"distill.score_source: {source} scores the refreshed pool's negatives: "
                             f"{where}loss.distill_score needs the task's negatives: pool, got {negatives!r}")

    def _check_tasks(self) -> None:
        if not self.tasks:
            raise ValueError("tasks: empty; list at least one task, or leave tasks out for a single-task job")
        if self.data != DataConfig() or self.loss != LossConfig():
            raise ValueError("tasks: each task holds its own data and loss; move the job's data / loss "
                             "sections into its tasks")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"tasks: names must be unique, got {names}")
        refreshing = self.refresh.mode != "off"
        for t in self.tasks:
            t.resolve(self.model, self.train, refreshing)
            if t.negatives == "pool" and not refreshing:
                raise ValueError(f"tasks[{t.name}].negatives: pool needs mined pools: set refresh.mode "
                                 "(static, async or sync), or use random, given or none")
            if t.negatives == "pool" and t.num_negatives < 1:
                raise ValueError(f"tasks[{t.name}].negatives: pool, but its num_negatives is 0")
            self._check_distill(t.loss, t.negatives, f"tasks[{t.name}].")
        if refreshing and not any(t.negatives == "pool" for t in self.tasks):
            raise ValueError("refresh.mode is on, but no task takes its negatives from the pool (a task's "
                             "negatives unset means pool; classification tasks have none)")
        dims = {tuple(t.loss.loop_needs().matryoshka_dims or ()) for t in self.tasks} - {()}
        if len(dims) > 1:
            raise ValueError(f"tasks: Matryoshka dims differ between tasks ({sorted(dims)}); the saved model "
                             "records one list")

    def task_prompts(self) -> dict[str, str]:
        """The tasks' instructions as named prompts for the export (``<task>-query``, ``<task>-document``)."""
        from embedray.training.tasks import task_prompts

        return task_prompts(self.tasks)


@dataclass
class PrepareConfig:
    """Where the data comes from; the prepare stage writes a BEIR folder into the run."""

    source: Literal["debian", "beir", "flag"] = "debian"
    """``debian``: build the built-in dataset; ``beir``: use ``data.path`` as is; ``flag``: convert
    FlagEmbedding JSONL (``flag_train``, optional ``flag_dev`` / ``flag_test``) into BEIR."""
    debian_max_docs: int | None = 1500
    """Corpus size of the Debian build (None = all ~58k)."""
    debian_max_queries: int | None = 1000
    """Queries of the Debian build, split 80/10/10 (None = all)."""
    debian_split_queries: dict[str, int] | None = None
    """Queries of the splits it names instead of their share, e.g. ``{test: 300}``: a larger
    test split measures the report's ratios more precisely."""
    flag_train: str | None = None
    """FlagEmbedding JSONL for training (``source: flag``)."""
    flag_dev: str | None = None
    """FlagEmbedding JSONL held out for dev evaluation (``source: flag``)."""
    flag_test: str | None = None
    """FlagEmbedding JSONL held out for the report (``source: flag``)."""
    leakage: Literal["drop", "keep", "error"] = "drop"
    """A dev/test query of the FlagEmbedding files that is also a training query: ``drop`` it
    from the held-out split (counted and reported), ``keep`` it (reported), or ``error``. A BEIR
    folder is never changed: its leaked query texts are reported."""

    def __post_init__(self) -> None:
        if self.source == "flag" and not (self.flag_train and self.flag_test):
            raise ValueError("prepare.source: flag needs prepare.flag_train and prepare.flag_test")


@dataclass
class TeacherConfig:
    """The bi-encoder fine-tuned on the task's pairs with refreshed negatives: the train job's
    ``model``, ``loss`` and ``train`` sections, as they are."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model and how it is built (its prompts are the pipeline's)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The training objective."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Loop settings of the teacher run."""
    tasks: list[TaskConfig] | None = None
    """More tasks the teacher trains on besides the pipeline's data (a multi-task teacher, one
    task per batch; a train job's ``tasks:`` entries). The pipeline's data is the task named
    ``task_name``, with ``loss`` above and the model's prompts; the student distils that task.
    The report evaluates each retrieval task on its own ``data.test_split``, before and after."""
    task_name: str = "main"
    """The pipeline's own data as a task of a multi-task teacher (its exported prompts' names)."""
    task_weight: float | None = None
    """Its share of the batches (None: proportional to its training rows)."""

    #: A model key given directly under ``teacher:`` (the earlier layout) belongs to ``teacher.model``.
    RENAMED: ClassVar[dict[str, str]] = {**{f.name: f"model.{f.name}" for f in fields(ModelConfig)},
                                         **{old: f"model.{new}" for old, new in ModelConfig.RENAMED.items()}}


@dataclass
class PretrainConfig:
    """A pre-training stage before the teacher's fine-tuning: unsupervised pairs built from the
    prepared corpus's texts (no query, no judgement, no split is read), trained with their own
    objective and loop; the teacher then fine-tunes from these weights."""

    builder: Literal["nsp", "span", "simcse"] = "span"
    """Pairs from each text (``embedray data build``): ``nsp`` (sentence, next sentence), ``span``
    (two views, each with another span of words removed), ``simcse`` (a text and itself: train
    with ``loss.name: simcse``, whose dropout makes the two views differ)."""
    max_texts: int | None = None
    """Corpus texts the pairs are built from (the first N; None = all)."""
    span_ratio: float = 0.15
    """``span``: share of a text's words removed from each view."""
    seed: int = 0
    """``span``: which spans are removed."""
    loss: LossConfig = field(default_factory=lambda: LossConfig(name="infonce", temperature=0.05))
    """The pre-training objective."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=100, batch_size=64, negatives="none",
                                                                   checkpoint_every=50))
    """Loop settings of the pre-training run (often a larger batch: ``mini_batch_size`` caches it)."""

    def __post_init__(self) -> None:
        if self.max_texts is not None and self.max_texts < 1:
            raise ValueError("pretrain.max_texts must be >= 1 or null (every corpus text)")
        if not 0 < self.span_ratio < 1:
            raise ValueError(f"pretrain.span_ratio must be in (0, 1), got {self.span_ratio}")
        if self.loss.loop_needs().teacher or self.loss.name == "classification":
            raise ValueError("pretrain.loss: a pre-training objective learns from the pairs alone (no teacher, "
                             "no labels)")


@dataclass
class StudentConfig:
    """The small model distilled from the trained teacher."""

    keep_layers: list[int] | int | None = 3
    """Layer-reduced copy of the trained teacher (e.g. 3 of 6 layers); None = use ``model``."""
    model: ModelConfig | None = None
    """Any bundled/local model as the student instead of a layer-reduced teacher."""
    max_seq_length: int | None = None
    """Tokens the layer-reduced student reads of a text (its sentence-transformers
    ``max_seq_length``: in the baseline, training's dev evaluation, the report and the exported
    model); None keeps the teacher's (with ``model``, set ``model.max_seq_length``). A
    shorter cap encodes long documents faster (attention cost grows with the square of the
    length) and drops what lies past it: the report's nDCG of the student includes that loss."""
    matryoshka_dims: list[int] | None = field(default_factory=lambda: [384, 192, 96, 48])
    """Dimensions trained and evaluated (the first must be the full size)."""
    matryoshka_weights: list[float] | None = None
    """Loss weight of each of ``matryoshka_dims`` (default all 1)."""
    pca_rotation: bool = True
    """After distillation, rotate the student's embedding space onto its principal axes (fit
    on the training queries and positives) so each Matryoshka prefix keeps the most variance.
    The rotation is orthogonal: full-dimension scores do not change. Only with several
    ``matryoshka_dims``."""
    pca_max_texts: int = 20000
    """At most this many training texts (queries + positives, a fixed sample) fit the rotation."""
    loss: LossConfig = field(default_factory=lambda: LossConfig(distill_score="kl", distill_embed=True))
    """Task + distillation loss of the student (``matryoshka_dims`` above is applied to it)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Loop settings of the student run."""
    score_source: Literal["teacher", "cross_encoder", "fused", "data"] = "teacher"
    """Teacher scores for score distillation: the trained teacher bi-encoder, the cross-encoder,
    the two fused (``fused``: the cross-encoder's score fused with the trained teacher's at the
    weight and temperature chosen on dev against the trained teacher, ``student/fusion_dev.json``),
    or the scores the training rows carry (FlagEmbedding ``pos_scores`` / ``neg_scores``; needs
    ``train.negatives: given``)."""
    cross_encoder_temperature: float | None = None
    """Under ``score_source: cross_encoder``: the cross-encoder's logits are divided by this before
    they become targets; None: the temperature the teacher's dev check chose (see
    ``distill.cross_encoder_temperature``)."""

    def __post_init__(self) -> None:
        if self.max_seq_length is not None:
            if self.max_seq_length < 1:
                raise ValueError(f"student.max_seq_length must be >= 1, got {self.max_seq_length}")
            if self.keep_layers is None:
                raise ValueError("student.max_seq_length caps a layer-reduced student (keep_layers); "
                                 "for student.model set student.model.max_seq_length")
        if self.pca_max_texts < 2:
            raise ValueError(f"student.pca_max_texts must be >= 2, got {self.pca_max_texts}")

    @property
    def rotates(self) -> bool:
        """Whether the pipeline rotates the student (``pca_rotation`` with several dims)."""
        return self.pca_rotation and len(self.matryoshka_dims or []) > 1


@dataclass
class EvalStageConfig:
    """The final evaluation."""

    rerank_depth: int = 20
    """Bi-encoder candidates per test query the cross-encoder reranks in the report."""
    batch_size: int = 64
    """Encoder batch size."""
    extra_models: list[str] = field(default_factory=list)
    """More bundled/local models for the baseline rows (e.g. ``mpnet-base``)."""
    precision: str = "auto"
    """Compute precision of the baseline and final evaluations (and their encode-speed timings):
    ``auto`` = bf16 where the hardware runs it fast, ``fp32`` or ``bf16``."""

    def __post_init__(self) -> None:
        from embedray.models.config import check_precision

        check_precision(self.precision, "eval.precision")


@dataclass
class ExportStageConfig:
    """What the export stage adds to the run's ``model`` folder besides the weights."""

    openvino_int8: bool = False
    """Also write the statically quantized int8 OpenVINO file (``embedray export --format openvino
    --quantize int8``), calibrated on the run's corpus and checked on its dev split (int8 nDCG@10
    at least 99% of fp32's), so that ``embedray serve`` on a CPU serves it; without a dev split
    the file is written unchecked and served only on request. Needs the ``[openvino]`` extra."""
    calibration_samples: int = 300
    """Corpus texts the int8 file's activation ranges are calibrated on."""
    publish: str | None = None
    """Also copy the finished model folder there: a URI (``s3://bucket/models/student``, ``gs://``,
    ``hdfs://``) or a path, for ``embedray serve`` elsewhere to load. What an earlier publish wrote
    there is replaced; a destination holding other files is refused."""

    def __post_init__(self) -> None:
        if self.calibration_samples < 1:
            raise ValueError(f"export.calibration_samples must be >= 1, got {self.calibration_samples}")


@dataclass
class PipelineConfig:
    """prepare → baseline → [pretrain] → teacher (cross-encoder, refreshed negatives) → student → eval →
    export → report."""

    name: str = "pipeline"
    """Run name: the run folder is ``output_dir/name``; re-submitting it resumes."""
    output_dir: str = "runs"
    """Root folder of pipeline runs (shared storage on a cluster)."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig | None = None
    """A pre-training stage on unsupervised pairs from the corpus before the teacher's fine-tuning
    (None: the teacher fine-tunes its base model)."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    cross_encoder: CrossEncoderConfig = field(default_factory=CrossEncoderConfig)
    refresh: RefreshConfig = field(default_factory=lambda: RefreshConfig(mode="async"))
    student: StudentConfig = field(default_factory=StudentConfig)
    eval: EvalStageConfig = field(default_factory=EvalStageConfig)
    export: ExportStageConfig = field(default_factory=ExportStageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    RENAMED: ClassVar[dict[str, str]] = {"teacher_loss": "teacher.loss", "teacher_train": "teacher.train"}

    def __post_init__(self) -> None:
        self.output_dir = refuse_uri("output_dir", self.output_dir)
        _mine_with_the_model_prompts(self.mining, self.teacher.model)
        source = self.student.score_source
        if source in ("cross_encoder", "fused") and (self.refresh.mode == "off" or not self.refresh.denoise):
            raise ValueError(f"student.score_source: {source} reads the teacher's cross-encoder, trained and "
                             f"checked in the teacher stage: it needs refresh.mode static/async/sync and "
                             f"refresh.denoise: true (got mode {self.refresh.mode!r}, denoise {self.refresh.denoise})")
        if self.teacher.tasks is not None:
            import copy

            # The teacher stage's job, checked now rather than after the stages before it ran.
            TrainJobConfig(tasks=self.teacher_tasks(self.data), model=copy.deepcopy(self.teacher.model),
                           train=copy.deepcopy(self.teacher.train), mining=copy.deepcopy(self.mining),
                           cross_encoder=copy.deepcopy(self.cross_encoder), refresh=copy.deepcopy(self.refresh))

    def teacher_tasks(self, data: DataConfig) -> list[TaskConfig]:
        """A multi-task teacher's tasks (copies): the pipeline's ``data`` first, then ``teacher.tasks``."""
        import copy

        t = self.teacher
        if not t.tasks:
            raise ValueError("teacher.tasks: empty; list at least one more task, or leave it out")
        main = TaskConfig(name=t.task_name, data=copy.deepcopy(data), loss=copy.deepcopy(t.loss), weight=t.task_weight)
        return [main, *copy.deepcopy(t.tasks)]


def _mine_with_the_model_prompts(mining: MiningConfig, model: ModelConfig) -> None:
    """Mining encodes with the prompts the model trains with unless the recipe says otherwise: one
    prompt per side, so embeddings and their cache keys agree across training, mining and dev."""
    mining.query_prompt = mining.query_prompt or model.query_prompt
    mining.doc_prompt = mining.doc_prompt or model.doc_prompt
