"""Files, vector stores, their files and chunks; full-text indexes of the chunks (FTS5 on
SQLite, a GIN tsvector index on PostgreSQL). sqlite-vec's vector table is made on first use,
when the embedding dimension is known (uip.gateway.vector_index).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "vector_stores",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("name", sa.String(256)),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("last_active_at", sa.Float, nullable=False),
    )
    op.create_table(
        "vector_store_files",
        sa.Column("vector_store_id", sa.String(64),
                  sa.ForeignKey("vector_stores.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("file_id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_error", sa.JSON),
        sa.Column("chunking", sa.JSON, nullable=False),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("usage_bytes", sa.Integer, nullable=False),
    )
    op.create_table(
        "vector_chunks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("vector_store_id", sa.String(64), nullable=False, index=True),
        sa.Column("file_id", sa.String(64), nullable=False, index=True),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("embedding", sa.LargeBinary),
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE VIRTUAL TABLE vector_chunks_fts USING fts5("
                   "content, vector_store_id UNINDEXED, tokenize='porter unicode61')")
    else:
        op.execute("CREATE INDEX ix_vector_chunks_tsv ON vector_chunks "
                   "USING gin (to_tsvector('english', content))")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS vector_chunks_fts")
    for table in ("vector_chunks", "vector_store_files", "vector_stores", "files"):
        op.drop_table(table)
