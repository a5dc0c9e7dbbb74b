"""The gateway's tables (SQLAlchemy 2); the schema itself is made by the Alembic migrations."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)  # None while the key is valid


class Usage(Base):
    __tablename__ = "usage"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    key_id: Mapped[str | None] = mapped_column(String(40), index=True)
    model: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    images: Mapped[int] = mapped_column(Integer, default=0)


class StoredResponse(Base):
    __tablename__ = "responses"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)  # the response object as returned
    input_items: Mapped[list[Any]] = mapped_column(JSON)  # this turn's input, for chaining
    previous_response_id: Mapped[str | None] = mapped_column(String(64))


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)


class ConversationItem(Base):
    __tablename__ = "conversation_items"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    conversation_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    item: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class File(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)


class VectorStore(Base):
    __tablename__ = "vector_stores"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    name: Mapped[str | None] = mapped_column(String(256))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    last_active_at: Mapped[float] = mapped_column(Float)


class VectorStoreFile(Base):
    __tablename__ = "vector_store_files"
    vector_store_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("vector_stores.id", ondelete="CASCADE"), primary_key=True)
    file_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))  # in_progress | completed | failed
    last_error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    chunking: Mapped[dict[str, Any]] = mapped_column(JSON)  # OpenAI's chunking_strategy
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    usage_bytes: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[int | None] = mapped_column(Integer)  # pid of the ingesting process; None after


class Chunk(Base):
    """One chunk of a file in a vector store. Its vector: in the `embedding` column on
    PostgreSQL; in sqlite-vec's `vec_chunks_<dim>` table (same rowid) on SQLite."""

    __tablename__ = "vector_chunks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vector_store_id: Mapped[str] = mapped_column(String(64), index=True)
    file_id: Mapped[str] = mapped_column(String(64), index=True)
    idx: Mapped[int] = mapped_column(Integer)  # the chunk's place in its file
    content: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
