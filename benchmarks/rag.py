"""Vector store benchmark (CPU): ingestion throughput and search latency of the gateway's
store (`uip.gateway.rag_store` on SQLite: sqlite-vec + FTS5) at N chunks, beside brute-force
numpy search over the same vectors, with recall@10 against numpy's exact top 10.

    .venv/bin/python benchmarks/rag.py --sizes 10000,100000 [--postgres URL] [--embed]

Vectors are synthetic, 384-d like all-MiniLM-L6-v2 (clustered, L2-normalized) and texts are
random words, so the index is measured, not the embedding model; `--embed` adds the
in-process MiniLM throughput on 200-token chunks (what bounds a real ingestion on CPU).
Queries (`--queries`, 200) are stored vectors with noise added. Latency of one query: the
store's `search` (index query + fetching the chunk rows) and numpy's `matrix @ q` +
argpartition.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from uip.gateway.rag_store import rag_of
from uip.gateway.store import Store
from uip.gateway.vector_index import normalized

DIM, BATCH, K = 384, 256, 10
RESULTS = Path(__file__).parent / "results"


def corpus(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    centers = rng.standard_normal((max(n // 100, 10), DIM)).astype(np.float32)
    vecs = centers[rng.integers(0, len(centers), n)] + \
        0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    vocab = [f"w{i}" for i in range(5000)]
    words = rng.integers(0, len(vocab), (n, 40))
    return normalized(vecs), [" ".join(vocab[j] for j in row) for row in words]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def run(url: str, label: str, n: int, queries_n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vecs, texts = corpus(n, rng)
    store = Store.open(url)
    rags = rag_of(store)
    vs = rags.create_vector_store(f"bench-{n}", {})
    f = rags.create_file("bench.txt", "assistants", b"-")
    rags.attach(vs.id, f.id, {}, {})
    t0 = time.perf_counter()
    for i in range(0, n, BATCH):
        rags.add_chunks(vs.id, f.id, i, texts[i:i + BATCH], vecs[i:i + BATCH])
    ingest_s = time.perf_counter() - t0
    rags.finish(vs.id, f.id, None)

    picks = rng.integers(0, n, queries_n)
    queries = normalized(vecs[picks] + 0.3 * rng.standard_normal((queries_n, DIM)))
    words = [" ".join(texts[i].split()[:3]) for i in picks]
    store_ms, hybrid_ms, numpy_ms, recall = [], [], [], []
    for q, w in zip(queries, words, strict=True):
        t = time.perf_counter()
        hits = rags.search([vs.id], q, "", K, "vector")
        store_ms.append(time.perf_counter() - t)
        t = time.perf_counter()
        rags.search([vs.id], q, w, K, "hybrid")
        hybrid_ms.append(time.perf_counter() - t)
        t = time.perf_counter()
        scores = vecs @ q
        top = np.argpartition(-scores, K)[:K]
        top = top[np.argsort(-scores[top])]
        numpy_ms.append(time.perf_counter() - t)
        exact = {texts[i] for i in top}
        recall.append(len(exact & {h.text for h in hits}) / K)
    rags.delete_vector_store(vs.id)
    store.close()
    return {"backend": label, "chunks": n, "ingest": n / ingest_s,
            "p50": pct(store_ms, 50), "p99": pct(store_ms, 99),
            "h50": pct(hybrid_ms, 50), "h99": pct(hybrid_ms, 99),
            "n50": pct(numpy_ms, 50), "n99": pct(numpy_ms, 99), "recall": np.mean(recall)}


def embed_rate() -> float:
    from uip.core.paths import artifacts_root
    from uip.embedding.encoder import SentenceEncoder

    enc = SentenceEncoder(artifacts_root() / "embedding")
    rng = np.random.default_rng(1)
    words = ["river", "stone", "light", "market", "engine", "garden", "music", "paper"]
    chunks = [" ".join(rng.choice(words, 200)) for _ in range(128)]
    enc.encode(chunks[:8])
    t = time.perf_counter()
    enc.encode(chunks)
    return len(chunks) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=200, help="queries per size")
    ap.add_argument("--postgres", help="also run on this SQLAlchemy PostgreSQL URL")
    ap.add_argument("--embed", action="store_true", help="also time MiniLM in-process")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            rows.append(run(f"sqlite:///{tmp}/bench-{n}.db", "sqlite (sqlite-vec + FTS5)", n,
                            args.queries))
            if args.postgres:
                rows.append(run(args.postgres, "postgresql (numpy + tsvector)", n, args.queries))
    head = ("| backend | chunks | ingest chunks/s | vector p50 ms | vector p99 ms | "
            "hybrid p50 ms | hybrid p99 ms | numpy p50 ms | numpy p99 ms | recall@10 |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['chunks']} | {r['ingest']:.0f} | {r['p50']:.2f} | "
                     f"{r['p99']:.2f} | {r['h50']:.2f} | {r['h99']:.2f} | {r['n50']:.2f} | "
                     f"{r['n99']:.2f} | {r['recall']:.3f} |")
    if args.embed:
        lines.append(f"\nMiniLM in-process (CPU, 200-token chunks): {embed_rate():.1f} chunks/s")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rag-cpu.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
