"""job submission through the API: idempotency keys, sweeps, per-user running limits

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("idempotency_key", sa.String(200)))
        b.add_column(sa.Column("request_sha256", sa.String(64), nullable=False, server_default=""))
        b.add_column(sa.Column("sweep_id", sa.String(200)))
        b.create_index("ux_jobs_user_idempotency", ["user_id", "idempotency_key"], unique=True)
        b.create_index("ix_jobs_sweep", ["sweep_id"])
    with op.batch_alter_table("users") as b:
        b.add_column(sa.Column("max_running", sa.Integer))
    op.create_table(
        "sweeps",
        sa.Column("sweep_id", sa.String(200), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("result", sa.JSON),
    )
    op.create_index("ix_sweeps_user", "sweeps", ["user_id", "submitted_at"])


def downgrade() -> None:
    op.drop_index("ix_sweeps_user", "sweeps")
    op.drop_table("sweeps")
    with op.batch_alter_table("users") as b:
        b.drop_column("max_running")
    with op.batch_alter_table("jobs") as b:
        b.drop_index("ix_jobs_sweep")
        b.drop_index("ux_jobs_user_idempotency")
        b.drop_column("sweep_id")
        b.drop_column("request_sha256")
        b.drop_column("idempotency_key")
