"""The tables: users and their tokens, datasets and their examples, runs and their metric series, workers."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sqlalchemy import CheckConstraint, Index, case, func, text
from sqlalchemy import true as sa_true
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from flask_login import UserMixin

from app.extensions import db
from app.run_states import CANCELLABLE_STATUSES, DRY_RUN, MODES, PENDING, STATUSES, TERMINAL_STATUSES


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _in(column: str, values) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


ADMIN, MEMBER = "admin", "member"


class User(UserMixin, db.Model):
    """Someone who signs in: an admin may act on anyone's runs, a member on their own."""

    __tablename__ = "users"

    id = db.Column(db.Integer, primary_key=True)
    username = db.Column(db.String(64), nullable=False, unique=True)
    password_hash = db.Column(db.String(255), nullable=False)
    role = db.Column(db.String(16), nullable=False, default=MEMBER)
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)
    # Every page session carries the generation it began in; bumping it ends them all (sign-out,
    # a new password, deactivation, "sign out everywhere").
    session_generation = db.Column(db.Integer, nullable=False, default=0, server_default="0")
    active = db.Column(db.Boolean, nullable=False, default=True, server_default=sa_true())

    __table_args__ = (CheckConstraint(f"role IN ('{ADMIN}', '{MEMBER}')", name="ck_users_role"),)

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def get_id(self) -> str:
        """What a session stores (Flask-Login): the user and the generation it signed in under."""
        return f"{self.id}:{self.session_generation}"


class ApiToken(db.Model):
    """A bearer token for the API; only the SHA-256 of the secret is stored."""

    __tablename__ = "api_tokens"

    id = db.Column(db.Integer, primary_key=True)
    user_id = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    label = db.Column(db.String(80), nullable=False)
    token_hash = db.Column(db.String(64), nullable=False, unique=True)
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)
    last_used_at = db.Column(db.DateTime(timezone=True))

    user = db.relationship(User, lazy="joined")

    __table_args__ = (Index("ix_api_tokens_user", "user_id"),)


class SignInFailure(db.Model):
    """A failed sign-in, counted per username and per client address to slow down guessing."""

    __tablename__ = "sign_in_failures"

    id = db.Column(db.BigInteger, primary_key=True)
    username = db.Column(db.String(64), nullable=False)
    address = db.Column(db.String(64), nullable=False)
    failed_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)

    __table_args__ = (Index("ix_sign_in_failures_username", "username", "failed_at"),
                      Index("ix_sign_in_failures_address", "address", "failed_at"))


class Dataset(db.Model):
    """A named, versioned set of SFT examples; its key is `name-vN`."""

    __tablename__ = "datasets"

    key = db.Column(db.String(80), primary_key=True)
    name = db.Column(db.String(64), nullable=False)
    version = db.Column(db.Integer, nullable=False)
    description = db.Column(db.Text, nullable=False, default="")
    num_examples = db.Column(db.Integer, nullable=False)
    size_bytes = db.Column(db.BigInteger, nullable=False)
    stats = db.Column(JSONB, nullable=False, default=dict)
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)
    created_by = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="SET NULL"))

    creator = db.relationship(User, lazy="joined")

    __table_args__ = (db.UniqueConstraint("name", "version", name="uq_datasets_name_version"),)


class DatasetExample(db.Model):
    """One prompt/response pair of a dataset, in upload order."""

    __tablename__ = "dataset_examples"

    dataset_key = db.Column(db.String(80), db.ForeignKey("datasets.key", ondelete="CASCADE"), primary_key=True)
    position = db.Column(db.Integer, primary_key=True)
    prompt = db.Column(db.Text, nullable=False)
    response = db.Column(db.Text, nullable=False)


class TunixRun(db.Model):
    """One fine-tuning run: its config, where it is in its life, and what it produced."""

    __tablename__ = "tunix_runs"

    id = db.Column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    status = db.Column(db.String(16), nullable=False, default=PENDING)
    mode = db.Column(db.String(16), nullable=False)
    dataset_key = db.Column(db.String(80), db.ForeignKey("datasets.key"), nullable=False)
    model_id = db.Column(db.String(512), nullable=False)
    config = db.Column(JSONB, nullable=False)
    idempotency_key = db.Column(db.String(255), unique=True)
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)
    queued_at = db.Column(db.DateTime(timezone=True))
    started_at = db.Column(db.DateTime(timezone=True))
    completed_at = db.Column(db.DateTime(timezone=True))
    duration_seconds = db.Column(db.Float)
    exit_code = db.Column(db.Integer)
    stdout_tail = db.Column(db.Text)
    stderr_tail = db.Column(db.Text)
    error_message = db.Column(db.Text)
    worker_id = db.Column(db.String(255))
    result = db.Column(JSONB)
    progress = db.Column(JSONB)
    # Leases: the holder (worker_id) refreshes heartbeat_at; attempt counts claims.
    attempt = db.Column(db.Integer, nullable=False, default=0, server_default="0")
    max_attempts = db.Column(db.Integer, nullable=False, default=1, server_default="1")
    heartbeat_at = db.Column(db.DateTime(timezone=True))
    recoveries = db.Column(db.Integer, nullable=False, default=0, server_default="0")
    cancel_requested_at = db.Column(db.DateTime(timezone=True))
    retry_of = db.Column(UUID(as_uuid=True), db.ForeignKey("tunix_runs.id", ondelete="SET NULL"))
    log_bytes = db.Column(db.BigInteger, nullable=False, default=0, server_default="0")
    name = db.Column(db.String(120))
    tags = db.Column(ARRAY(db.String(32)), nullable=False, default=list, server_default="{}")
    created_by = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="SET NULL"))
    # Copied from the result when the run ends, so lists, comparisons and leaderboards sort by index.
    evaluated_on = db.Column(db.String(80))  # the dataset the scores are on (eval dataset or own split)
    final_loss = db.Column(db.Float)
    final_eval_loss = db.Column(db.Float)
    answer_match = db.Column(db.Float)  # after training
    exact_match = db.Column(db.Float)
    # A sweep's trial: which sweep asked for it, and its number there (1-based).
    sweep_id = db.Column(UUID(as_uuid=True), db.ForeignKey("sweeps.id", ondelete="SET NULL"))
    trial_number = db.Column(db.Integer)
    # The devices the run asks for (its config's "devices", a column for the claim's filter), and the ids
    # of the worker's devices it was placed on when claimed.
    devices = db.Column(db.Integer, nullable=False, default=1, server_default="1")
    device_ids = db.Column(ARRAY(db.Integer))
    # The artifact store (a bucket URL or a local folder) its files go to, fixed when it is submitted.
    artifacts_url = db.Column(db.Text)
    # A base model named by the registry (models:/name/N or models:/name@alias): the version it resolved to
    # at submission and that version's digest, which the worker checks before training.
    model_version_id = db.Column(db.Integer, db.ForeignKey("model_versions.id", use_alter=True,
                                                           name="fk_tunix_runs_model_version"))
    model_digest = db.Column(db.String(64))
    # Bumped by every write that changes what the run's page shows: the status fragment's validator.
    version = db.Column(db.BigInteger, nullable=False, default=0, server_default="0")

    creator = db.relationship(User, lazy="joined")
    sweep = db.relationship("Sweep", lazy="select")
    model_version = db.relationship("ModelVersion", lazy="select", foreign_keys=[model_version_id])

    __table_args__ = (
        CheckConstraint(_in("status", STATUSES), name="ck_tunix_runs_status"),
        CheckConstraint(_in("mode", MODES), name="ck_tunix_runs_mode"),
        CheckConstraint("devices >= 1", name="ck_tunix_runs_devices"),
        # The claim query walks this partial index: pending runs, oldest first.
        Index("ix_tunix_runs_pending_queue", "queued_at", "id", postgresql_where=text("status = 'pending'")),
        # The list page: newest first, optionally narrowed by status, mode or dataset.
        Index("ix_tunix_runs_created", "created_at", "id"),
        Index("ix_tunix_runs_status_created", "status", "created_at", "id"),
        Index("ix_tunix_runs_mode_created", "mode", "created_at", "id"),
        Index("ix_tunix_runs_dataset_created", "dataset_key", "created_at", "id"),
        # The lease sweeper looks for live runs whose heartbeat went quiet.
        Index("ix_tunix_runs_leased_heartbeat", "heartbeat_at",
              postgresql_where=text("status IN ('running', 'cancelling')")),
        Index("ix_tunix_runs_retry_of", "retry_of", postgresql_where=text("retry_of IS NOT NULL")),
        Index("ix_tunix_runs_tags", "tags", postgresql_using="gin"),
        Index("ix_tunix_runs_created_by_created", "created_by", "created_at", "id"),
        # A dataset's leaderboard reads this index in its order and stops at the page size.
        Index("ix_tunix_runs_model_version", "model_version_id", postgresql_where=text("model_version_id IS NOT NULL")),
        Index("ix_tunix_runs_sweep", "sweep_id", "trial_number", postgresql_where=text("sweep_id IS NOT NULL")),
        Index("ix_tunix_runs_leaderboard", "evaluated_on", text("answer_match DESC NULLS LAST"),
              text("exact_match DESC NULLS LAST"), text("final_eval_loss ASC NULLS LAST"), "id",
              postgresql_where=text("status = 'completed' AND answer_match IS NOT NULL")),
    )

    @property
    def is_terminal(self) -> bool:
        """True once the run can no longer change."""
        return self.status in TERMINAL_STATUSES

    @property
    def title(self) -> str:
        """What the pages call the run: its name, else the start of its id."""
        return self.name or f"Run {str(self.id)[:8]}"

    @property
    def is_plan(self) -> bool:
        """A dry run: it ends as a plan, not as a trained model."""
        return self.mode == DRY_RUN

    @property
    def is_cancellable(self) -> bool:
        """True while a user may still cancel the run."""
        return self.status in CANCELLABLE_STATUSES


SWEEP_RUNNING, SWEEP_COMPLETED, SWEEP_CANCELLED, SWEEP_FAILED = "running", "completed", "cancelled", "failed"
SWEEP_STATUSES = (SWEEP_RUNNING, SWEEP_COMPLETED, SWEEP_CANCELLED, SWEEP_FAILED)
# A trial's state as the study knows it; "running" until its run ends and is told.
TRIAL_RUNNING, TRIAL_COMPLETE, TRIAL_PRUNED, TRIAL_FAILED = "running", "complete", "pruned", "failed"
TRIAL_STATES = (TRIAL_RUNNING, TRIAL_COMPLETE, TRIAL_PRUNED, TRIAL_FAILED)


class Sweep(db.Model):
    """A hyperparameter search: Optuna asks for configs, the queue runs them as ordinary runs."""

    __tablename__ = "sweeps"

    id = db.Column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name = db.Column(db.String(120), nullable=False)
    status = db.Column(db.String(16), nullable=False, default=SWEEP_RUNNING)
    base = db.Column(JSONB, nullable=False)  # the validated run config every trial starts from
    space = db.Column(JSONB, nullable=False)
    objective_metric = db.Column(db.String(32), nullable=False)
    direction = db.Column(db.String(8), nullable=False)
    max_trials = db.Column(db.Integer, nullable=False)
    parallelism = db.Column(db.Integer, nullable=False)
    sampler = db.Column(db.String(16), nullable=False)
    pruner = db.Column(db.String(16), nullable=False)
    trials_asked = db.Column(db.Integer, nullable=False, default=0, server_default="0")
    best_trial_number = db.Column(db.Integer)
    best_value = db.Column(db.Float)
    error_message = db.Column(db.Text)
    created_by = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="SET NULL"))
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)
    completed_at = db.Column(db.DateTime(timezone=True))

    creator = db.relationship(User, lazy="joined")

    __table_args__ = (
        CheckConstraint(_in("status", SWEEP_STATUSES), name="ck_sweeps_status"),
        Index("ix_sweeps_created", "created_at", "id"),
        # The workers' housekeeping looks only at the sweeps still running.
        Index("ix_sweeps_running", "id", postgresql_where=text("status = 'running'")),
    )

    @property
    def is_finished(self) -> bool:
        return self.status != SWEEP_RUNNING


class SweepTrial(db.Model):
    """One trial of a sweep: the parameters the study chose, the run that tries them, what it scored."""

    __tablename__ = "sweep_trials"

    sweep_id = db.Column(UUID(as_uuid=True), db.ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    number = db.Column(db.Integer, primary_key=True)  # 1-based, in the order asked
    study_trial_id = db.Column(db.Integer, nullable=False)  # Optuna's trial id, to tell and report
    run_id = db.Column(UUID(as_uuid=True), db.ForeignKey("tunix_runs.id", ondelete="SET NULL"))
    params = db.Column(JSONB, nullable=False)
    state = db.Column(db.String(16), nullable=False, default=TRIAL_RUNNING)
    value = db.Column(db.Float)
    pruned_at_step = db.Column(db.Integer)
    note = db.Column(db.Text)  # why a trial failed or was pruned, in words
    asked_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)
    told_at = db.Column(db.DateTime(timezone=True))

    run = db.relationship("TunixRun", lazy="joined")

    __table_args__ = (CheckConstraint(_in("state", TRIAL_STATES), name="ck_sweep_trials_state"),
                      Index("ix_sweep_trials_run", "run_id", unique=True))


class RunCounter(db.Model):
    """Counts kept by the tunix_runs_counted_* triggers (runs by status and mode, recoveries), sharded so
    that concurrent writers rarely meet on one row; a counter is the sum of its shards."""

    __tablename__ = "run_counters"

    name = db.Column(db.String(64), primary_key=True)  # "runs:<status>:<mode>" or "recoveries"
    shard = db.Column(db.SmallInteger, primary_key=True)
    n = db.Column(db.BigInteger, nullable=False)


class RunChart(db.Model):
    """A run's loss series for the chart, downsampled as points arrive: bounded, whatever the run's length."""

    __tablename__ = "run_charts"

    run_id = db.Column(UUID(as_uuid=True), db.ForeignKey("tunix_runs.id", ondelete="CASCADE"), primary_key=True)
    series = db.Column(JSONB, nullable=False)  # {"train": {...}, "eval": {...}}: see app/runs/chart_series.py
    version = db.Column(db.BigInteger, nullable=False, default=0, server_default="0")


class RunMetric(db.Model):
    """One point of a run's metric series: a train step or an eval pass."""

    __tablename__ = "run_metrics"

    run_id = db.Column(UUID(as_uuid=True), db.ForeignKey("tunix_runs.id", ondelete="CASCADE"), primary_key=True)
    split = db.Column(db.String(8), primary_key=True)  # "train" or "eval"
    step = db.Column(db.Integer, primary_key=True)
    loss = db.Column(db.Float, nullable=False)
    learning_rate = db.Column(db.Float)
    tokens_per_second = db.Column(db.Float)
    recorded_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)

    __table_args__ = (CheckConstraint("split IN ('train', 'eval')", name="ck_run_metrics_split"),)


class RunPrediction(db.Model):
    """One generated answer of a run's evaluation, before or after training, with its verdicts."""

    __tablename__ = "run_predictions"

    run_id = db.Column(UUID(as_uuid=True), db.ForeignKey("tunix_runs.id", ondelete="CASCADE"), primary_key=True)
    phase = db.Column(db.String(8), primary_key=True)  # "before" or "after"
    position = db.Column(db.Integer, primary_key=True)
    prompt = db.Column(db.Text, nullable=False)
    reference = db.Column(db.Text, nullable=False)
    prediction = db.Column(db.Text, nullable=False)
    exact_match = db.Column(db.Boolean, nullable=False)
    answer_match = db.Column(db.Boolean, nullable=False)
    generated_tokens = db.Column(db.Integer, nullable=False)

    __table_args__ = (CheckConstraint("phase IN ('before', 'after')", name="ck_run_predictions_phase"),)


class RunLogChunk(db.Model):
    """A piece of a run's trainer output, stored while it runs so any web host can show it."""

    __tablename__ = "run_log_chunks"

    run_id = db.Column(UUID(as_uuid=True), db.ForeignKey("tunix_runs.id", ondelete="CASCADE"), primary_key=True)
    seq = db.Column(db.Integer, primary_key=True)
    stream = db.Column(db.String(8), nullable=False)  # "stdout" or "stderr"
    text = db.Column(db.Text, nullable=False)
    recorded_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)


class Worker(db.Model):
    """A worker process that registered itself; last_seen_at is its heartbeat."""

    __tablename__ = "workers"

    id = db.Column(db.String(255), primary_key=True)
    host = db.Column(db.String(255), nullable=False)
    pid = db.Column(db.Integer, nullable=False)
    started_at = db.Column(db.DateTime(timezone=True), nullable=False)
    last_seen_at = db.Column(db.DateTime(timezone=True), nullable=False)
    state = db.Column(db.String(16), nullable=False)  # idle, running, stopping, stopped
    current_run_id = db.Column(UUID(as_uuid=True))
    runs_done = db.Column(db.Integer, nullable=False, default=0, server_default="0")
    # [{"id", "kind": "gpu" | "tpu" | "cpu", "name", "memory_bytes"}]: the devices it places runs on, as
    # it found them when it started
    devices = db.Column(JSONB)
    versions = db.Column(JSONB)  # {"python", "jax", "jaxlib", "tunix", "flax"}: what its trainer runs
    # Whether it answers the playground's generation requests (worker.py --playground).
    playground = db.Column(db.String(8), nullable=False, default="share", server_default="share")

    __table_args__ = (Index("ix_workers_last_seen", "last_seen_at"),)


# How many devices a worker reported (0 for none, or for a row written before workers reported them).
WORKER_DEVICE_COUNT = case((func.jsonb_typeof(Worker.devices) == "array", func.jsonb_array_length(Worker.devices)),
                           else_=0)


# The model registry: a registered model's versions are immutable; aliases point at one version each and
# every move is kept; gates judge the runs that compete for the model.
GATE_HIGHER, GATE_LOWER = "higher", "lower"
DROP_ABSOLUTE, DROP_RELATIVE = "absolute", "relative"


class RegisteredModel(db.Model):
    """A name a team ships under: its versions, aliases and gates."""

    __tablename__ = "registered_models"

    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(64), nullable=False, unique=True)
    description = db.Column(db.Text, nullable=False, default="", server_default="")
    owner_id = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="SET NULL"))
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)
    versions_made = db.Column(db.Integer, nullable=False, default=0, server_default="0")  # the last number given

    owner = db.relationship(User, lazy="joined")


class ModelVersion(db.Model):
    """One immutable version: its files (by SHA-256, in the store), their digest, and where it came from."""

    __tablename__ = "model_versions"

    id = db.Column(db.Integer, primary_key=True)
    model_id = db.Column(db.Integer, db.ForeignKey("registered_models.id", ondelete="CASCADE"), nullable=False)
    number = db.Column(db.Integer, nullable=False)
    digest = db.Column(db.String(64), nullable=False)  # SHA-256 over the sorted (path, size, sha256) of its files
    size_bytes = db.Column(db.BigInteger, nullable=False)
    files = db.Column(JSONB, nullable=False)  # [{"path", "size", "sha256"}], sorted by path
    store_url = db.Column(db.Text, nullable=False)  # the store its blobs are in
    source_run_id = db.Column(UUID(as_uuid=True), db.ForeignKey("tunix_runs.id", ondelete="SET NULL"))
    lineage = db.Column(JSONB, nullable=False)  # the source run's dataset, base model, config, at registration
    scores = db.Column(JSONB, nullable=False)  # the source run's evaluation scores, at registration
    facts = db.Column(JSONB, nullable=False)  # what a submission checks without the files: heads, chat template
    created_by = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="SET NULL"))
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)
    archived_at = db.Column(db.DateTime(timezone=True))

    model = db.relationship(RegisteredModel, lazy="joined")
    creator = db.relationship(User, lazy="joined")

    __table_args__ = (db.UniqueConstraint("model_id", "number", name="uq_model_versions_number"),
                      db.UniqueConstraint("model_id", "digest", name="uq_model_versions_digest"),
                      Index("ix_model_versions_source_run", "source_run_id"))

    @property
    def ref(self) -> str:
        return f"models:/{self.model.name}/{self.number}"


class ModelAlias(db.Model):
    """A name (champion, staging, ...) that points at one version of a model."""

    __tablename__ = "model_aliases"

    model_id = db.Column(db.Integer, db.ForeignKey("registered_models.id", ondelete="CASCADE"), primary_key=True)
    alias = db.Column(db.String(64), primary_key=True)
    version_id = db.Column(db.Integer, db.ForeignKey("model_versions.id"), nullable=False)
    protected = db.Column(db.Boolean, nullable=False, default=False)
    updated_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)

    version = db.relationship(ModelVersion, lazy="joined")


class AliasMove(db.Model):
    """One move of an alias, kept for good: who, when, from which version to which, and why."""

    __tablename__ = "alias_moves"

    id = db.Column(db.BigInteger, primary_key=True)
    model_id = db.Column(db.Integer, db.ForeignKey("registered_models.id", ondelete="CASCADE"), nullable=False)
    alias = db.Column(db.String(64), nullable=False)
    from_number = db.Column(db.Integer)  # None for the alias's first move
    to_number = db.Column(db.Integer, nullable=False)
    moved_by = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="SET NULL"))
    moved_by_name = db.Column(db.String(64), nullable=False)  # kept should the account go
    reason = db.Column(db.Text, nullable=False, default="", server_default="")
    override = db.Column(db.Boolean, nullable=False, default=False, server_default="false")  # past failing gates
    moved_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)

    __table_args__ = (Index("ix_alias_moves_alias_time", "model_id", "alias", "moved_at", "id"),)


class ModelGate(db.Model):
    """A rule a candidate run must pass on a metric: a floor, and/or the largest drop against an alias's version."""

    __tablename__ = "model_gates"

    id = db.Column(db.Integer, primary_key=True)
    model_id = db.Column(db.Integer, db.ForeignKey("registered_models.id", ondelete="CASCADE"), nullable=False)
    metric = db.Column(db.String(64), nullable=False)
    direction = db.Column(db.String(8), nullable=False)
    eval_dataset_key = db.Column(db.String(80), nullable=False)
    floor = db.Column(db.Float)  # the worst value allowed (a ceiling when lower is better)
    max_drop = db.Column(db.Float)
    drop_kind = db.Column(db.String(8), nullable=False, default=DROP_ABSOLUTE)
    baseline_alias = db.Column(db.String(64), nullable=False, default="champion")
    confidence_z = db.Column(db.Float, nullable=False, default=1.96)  # the noise allowance's z
    created_by = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="SET NULL"))
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)

    __table_args__ = (
        CheckConstraint(_in("direction", (GATE_HIGHER, GATE_LOWER)), name="ck_model_gates_direction"),
        CheckConstraint(_in("drop_kind", (DROP_ABSOLUTE, DROP_RELATIVE)), name="ck_model_gates_drop_kind"),
        CheckConstraint("floor IS NOT NULL OR max_drop IS NOT NULL", name="ck_model_gates_rule"),
        Index("ix_model_gates_model", "model_id"),
    )


class GateVerdict(db.Model):
    """What one gate said of one candidate run, with the numbers it was decided on."""

    __tablename__ = "gate_verdicts"

    run_id = db.Column(UUID(as_uuid=True), db.ForeignKey("tunix_runs.id", ondelete="CASCADE"), primary_key=True)
    gate_id = db.Column(db.Integer, db.ForeignKey("model_gates.id", ondelete="CASCADE"), primary_key=True)
    metric = db.Column(db.String(64), nullable=False)
    candidate_value = db.Column(db.Float)
    baseline_number = db.Column(db.Integer)
    baseline_value = db.Column(db.Float)
    delta = db.Column(db.Float)
    allowance = db.Column(db.Float)
    passed = db.Column(db.Boolean, nullable=False)
    reason = db.Column(db.Text, nullable=False)
    judged_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)


class GenerationRequest(db.Model):
    """A playground request: prompts for one model, answered by a worker, kept as that model's history."""

    __tablename__ = "generation_requests"

    id = db.Column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    # Requests asked together on the playground page, side by side (None for one asked through the API alone).
    group_id = db.Column(UUID(as_uuid=True))
    position = db.Column(db.Integer, nullable=False, default=0, server_default="0")  # its column in the group
    created_by = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="SET NULL"))
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, default=utcnow)
    model = db.Column(db.String(512), nullable=False)  # as asked: tiny, runs:/<id>, models:/x@champion, a path
    # What the model is, whatever it was called: preset:<name>, path:<dir>, run:<id>, version:<id>.
    model_key = db.Column(db.String(600), nullable=False)
    run_id = db.Column(UUID(as_uuid=True), db.ForeignKey("tunix_runs.id", ondelete="SET NULL"))
    model_version_id = db.Column(db.Integer, db.ForeignKey("model_versions.id", ondelete="SET NULL"))
    # How the server builds it and asks it: prompt format, prompt token limit, preset seed.
    spec = db.Column(JSONB, nullable=False)
    prompts = db.Column(JSONB, nullable=False)
    settings = db.Column(JSONB, nullable=False)
    answers = db.Column(JSONB, nullable=False, default=list, server_default="[]")
    status = db.Column(db.String(16), nullable=False, default="pending")
    phase = db.Column(db.String(16))  # while running: loading, generating
    cold = db.Column(db.Boolean)  # the worker loaded the model for it (else it held it already)
    load_seconds = db.Column(db.Float)
    worker_id = db.Column(db.String(255))
    attempt = db.Column(db.Integer, nullable=False, default=0, server_default="0")
    max_attempts = db.Column(db.Integer, nullable=False, default=2, server_default="2")
    heartbeat_at = db.Column(db.DateTime(timezone=True))
    started_at = db.Column(db.DateTime(timezone=True))
    finished_at = db.Column(db.DateTime(timezone=True))
    cancel_requested_at = db.Column(db.DateTime(timezone=True))
    error_message = db.Column(db.Text)

    creator = db.relationship(User, lazy="joined")

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'running', 'completed', 'failed', 'cancelled')",
                        name="ck_generation_requests_status"),
        Index("ix_generation_requests_pending", "created_at", "id", postgresql_where=text("status = 'pending'")),
        Index("ix_generation_requests_leased", "heartbeat_at", postgresql_where=text("status = 'running'")),
        Index("ix_generation_requests_model", "model_key", "created_at"),
        Index("ix_generation_requests_group", "group_id", "position", postgresql_where=text("group_id IS NOT NULL")),
        Index("ix_generation_requests_waiting_user", "created_by", postgresql_where=text("status = 'pending'")),
    )
