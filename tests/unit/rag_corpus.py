"""A small corpus with one distinct fact per file, and questions about each (RAG tests)."""

from __future__ import annotations

import json
from pathlib import Path

FILES: dict[str, str] = {
    "garden.md": "# Garden log\n\nGeneral notes about the allotment.\n\n## Tomatoes\n\n"
                 "I planted San Marzano tomatoes on April 12. They need watering every two "
                 "days and a stake once they reach knee height.\n\n## Compost\n\n"
                 "Turn the compost heap every three weeks.\n",
    "car.txt": "Car maintenance\n\nThe recommended tire pressure for the Skoda is 2.4 bar at "
               "the front and 2.2 bar at the rear. The next oil change is due at 45000 km.\n",
    "server.py": '"""A tiny metrics server."""\n\nimport http.server\n\nDEFAULT_PORT = 8731\n\n\n'
                 'def start_metrics_server(port: int = DEFAULT_PORT) -> None:\n'
                 '    """Start the metrics HTTP server on the given port (8731 by default)."""\n'
                 '    handler = http.server.BaseHTTPRequestHandler\n'
                 '    server = http.server.HTTPServer(("", port), handler)\n'
                 '    server.serve_forever()\n\n\n'
                 'class RetryPolicy:\n'
                 '    """Retry failed uploads five times with exponential backoff."""\n\n'
                 '    attempts = 5\n',
    "wifi.txt": "Home network\n\nThe guest wifi network is called Lighthouse and its password is "
                "tangerine-42.\n",
    "recipes.rst": "Recipes\n=======\n\nPancakes\n--------\n\nFor pancakes use 250 g flour, two "
                   "eggs and 500 ml milk; rest the batter for 30 minutes.\n\nBread\n-----\n\n"
                   "Bake sourdough at 240 degrees for 45 minutes.\n",
    "deploy.html": "<html><body><h1>Deployment</h1><p>Production deploys happen every Thursday at "
                   "14:00 through the blue pipeline, after the QA sign-off.</p></body></html>",
    "books.md": "# Books\n\nI lent my copy of The Left Hand of Darkness to Maria in January; she "
                "promised to return it by summer.\n",
    "dentist.txt": "Appointments\n\nThe dentist appointment with Dr. Okafor is on March 3rd at "
                   "9:30 in the morning.\n",
    "invoice.go": "package billing\n\n// ParseInvoiceNumber checks invoice numbers, which look "
                  "like INV-2024-0001.\nfunc ParseInvoiceNumber(s string) (int, error) {\n"
                  "\treturn 0, nil\n}\n",
    "README.md": "# Project Bluefin\n\nThe project codename is Bluefin. The staging server runs "
                 "at staging.bluefin.local and is rebuilt every night.\n",
}

QUESTIONS: list[tuple[str, str]] = [
    ("When did I plant the tomatoes?", "garden.md"),
    ("What tire pressure does the Skoda need?", "car.txt"),
    ("Which port does the metrics server use by default?", "server.py"),
    ("What is the guest wifi password?", "wifi.txt"),
    ("How much flour goes into the pancakes?", "recipes.rst"),
    ("When do production deploys happen?", "deploy.html"),
    ("Who did I lend The Left Hand of Darkness to?", "books.md"),
    ("When is the dentist appointment?", "dentist.txt"),
    ("What do invoice numbers look like?", "invoice.go"),
    ("What is the address of the staging server?", "README.md"),
]


def notebook() -> str:
    return json.dumps({"cells": [
        {"cell_type": "markdown", "source": ["# Sales analysis\n", "Quarterly numbers."]},
        {"cell_type": "code", "source": "q3_revenue = 1_250_000  # euros, Q3 total",
         "outputs": []}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def write_corpus(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in FILES.items():
        p = folder / name
        p.write_text(text, encoding="utf-8")
        paths.append(p)
    return paths


def minimal_pdf(pages: list[str]) -> bytes:
    """A valid PDF with one line of text per page (Helvetica), built by hand for the tests."""
    kid_ids = [4 + 2 * i for i in range(len(pages))]
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            ("<< /Type /Pages /Kids [{}] /Count {} >>".format(
                " ".join(f"{k} 0 R" for k in kid_ids), len(pages))).encode(),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objs.append((f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font "
                     f"<< /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>").encode())
        objs.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    out = b"%PDF-1.4\n"
    offsets = []
    for k, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % k + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return out
