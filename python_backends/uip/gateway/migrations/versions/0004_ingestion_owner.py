"""The process that ingests a vector store file: `owner` (its pid, NULL once finished), so
that the supervisor of `uip gateway --workers N` can fail the ingestions of a worker that died.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("vector_store_files") as batch:
        batch.add_column(sa.Column("owner", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("vector_store_files") as batch:
        batch.drop_column("owner")
