"""Small documents for the RAG tests: a one-page PDF written by hand (no PDF library writes
text), and three files whose topics do not overlap."""

from __future__ import annotations


def tiny_pdf(lines: list[str]) -> bytes:
    """A valid one-page PDF showing `lines` in Helvetica (what pypdf's extract_text reads)."""
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 11 Tf", "14 TL", "72 740 Td"]
    for line in lines:
        ops += [f"({esc(line)}) Tj", "T*"]
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


BREAD = """# Baking sourdough bread

Mix flour, water, salt and the sourdough starter into a shaggy dough. Knead it for ten
minutes until it is smooth and elastic. Let the dough rise at room temperature for four to
six hours, folding it every hour, until it has doubled in size. Shape the loaf, proof it
overnight in the fridge, then bake it in a very hot Dutch oven at 250 degrees Celsius for
twenty minutes with the lid on and twenty more without, until the crust is deep brown.
"""

VOLCANO = ["Volcanoes and eruptions",
           "Deep below the crust, rock melts into magma that collects in a chamber.",
           "When pressure builds, magma rises through vents and erupts as lava.",
           "Explosive eruptions throw ash and pumice high into the atmosphere,",
           "while basaltic lava flows slowly downhill and cools into new rock."]

CHESS = """<html><head><title>Chess</title><style>p {color: red}</style></head><body>
<h1>How chess pieces move</h1>
<p>The knight moves in an L shape: two squares in one direction and one square sideways,
and it is the only piece that can jump over others.</p>
<p>The bishop moves diagonally, the rook moves along ranks and files, and the queen combines
both. Castling moves the king two squares toward a rook.</p>
<script>console.log("not text")</script></body></html>
"""

# question -> the file (by name) that answers it
QUESTIONS = {
    "How long should the dough rise before shaping the loaf?": "bread.md",
    "What comes out of a volcano when magma reaches the surface?": "volcano.pdf",
    "Which chess piece can jump over other pieces?": "chess.html",
}


def files() -> dict[str, bytes]:
    return {"bread.md": BREAD.encode(), "volcano.pdf": tiny_pdf(VOLCANO),
            "chess.html": CHESS.encode()}
