"""evaluation jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 01:57:02.127547
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluation_jobs",
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("artifacts", sa.JSON(), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("stage_timings", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("dispatched", sa.Boolean(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("api_key_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("evaluation_jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_evaluation_jobs_dispatched"), ["dispatched"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_evaluation_jobs_status"), ["status"], unique=False)

    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evaluation_id", sa.String(length=32), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_metrics_evaluation_id"), ["evaluation_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_metrics_evaluation_id"))
        batch_op.drop_column("evaluation_id")

    with op.batch_alter_table("evaluation_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluation_jobs_status"))
        batch_op.drop_index(batch_op.f("ix_evaluation_jobs_dispatched"))

    op.drop_table("evaluation_jobs")
