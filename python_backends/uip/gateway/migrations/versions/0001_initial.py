"""Keys, usage, stored responses, conversations and their items.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "usage",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.Float, nullable=False, index=True),
        sa.Column("key_id", sa.String(40), index=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("images", sa.Integer, nullable=False),
    )
    op.create_table(
        "responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("input_items", sa.JSON, nullable=False),
        sa.Column("previous_response_id", sa.String(64)),
    )
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
    )
    op.create_table(
        "conversation_items",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("conversation_id", sa.String(64),
                  sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("item", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("conversation_items", "conversations", "responses", "usage", "api_keys"):
        op.drop_table(table)
