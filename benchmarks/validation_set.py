"""The validation set for choosing quantization recipes: texts of the kinds users send, never the test set.

    .venv/bin/python benchmarks/validation_set.py [--tokenizer ~/.cache/embeddinggemma-300m/tokenizer.model]

writes ``benchmarks/validation/texts.jsonl`` (one row per text: id, kind, script, prompt_name, source,
n_tokens, text). The file is frozen in the repository: rebuilding needs this machine's Debian files, so
another OS or package set would give other texts. ``validation_reference.py`` embeds the rows with
sentence-transformers (float32) into ``reference.npy``; ``precision.py`` scores model folders on them.

Where the texts come from (all offline, all under free licenses; nothing from ../shared/reference or
../shared/eval, and nothing the GPTQ calibration file ``convert/calibration.jsonl`` holds):

- Translated user-interface messages of GLib (``glib20.mo``) and GTK 2 (``gtk20.mo``), LGPL-2.1+, read
  from ``/usr/share/locale/<lang>/LC_MESSAGES`` with Python's ``gettext``: natural sentences in 25
  languages and 19 scripts, concatenated one message a line up to a token budget (long documents near
  the model's 2,048-token limit, and shorter ones). Calibration must use other catalogs, never these two.
- Debian files on this machine: the GPL-3 text (``/usr/share/common-licenses/GPL-3``), apt's changelog
  and copyright file (``/usr/share/doc/apt``), a C header (``/usr/include/stdio.h``, LGPL-2.1+), and
  the Debian ``iso-codes`` country list (``/usr/share/iso-codes/json/iso_3166-1.json``, LGPL-2.1+).
  The Apache-2.0 text is *not* used: the test set holds it.
- Python 3.11's own sources (PSF license) of modules the calibration file does not draw docstrings from
  (``graphlib``, ``colorsys``, ``fnmatch``), as code.
- Seeded generators (``numpy.random.default_rng``): CSV and Markdown tables, syslog, web-server and
  JSON logs, a repeated Python traceback, HTML boilerplate, one word repeated for ~700 tokens (in two
  scripts), a repeated phrase, a repeated separator character, a number sequence, and 1-3 word queries.

Token counts are the model's: ``<bos>`` + SentencePiece(prompt + text) + ``<eos>`` (prompt included),
counted on the model's ``tokenizer.model``; no text exceeds 2,048 tokens, so nothing is truncated.
"""

from __future__ import annotations

import argparse
import gettext
import gzip
import json
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "validation" / "texts.jsonl"
LOCALE = Path("/usr/share/locale")
PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "Summarization": "task: summarization | query: ",
}
MAX_TOKENS = 2048
LATIN = {"de", "tr", "vi"}

# (language, script, catalog, token budget). Long ones end near the 2,048-token limit.
UI_TEXTS = [
    ("ru", "Cyrillic", "glib20", 2040),
    ("ar", "Arabic", "glib20", 2040),
    ("zh_CN", "Han", "glib20", 2040),
    ("ja", "Japanese", "glib20", 2040),
    ("hi", "Devanagari", "glib20", 2040),
    ("ko", "Hangul", "glib20", 2040),
    ("th", "Thai", "glib20", 2040),
    ("el", "Greek", "glib20", 2040),
    ("he", "Hebrew", "gtk20", 1500),
    ("ka", "Georgian", "glib20", 1800),
    ("hy", "Armenian", "glib20", 1200),
    ("ta", "Tamil", "glib20", 2040),
    ("bn", "Bengali", "glib20", 900),
    ("de", "Latin", "glib20", 2040),
    ("tr", "Latin", "gtk20", 700),
    ("vi", "Latin", "gtk20", 500),
    ("uk", "Cyrillic", "gtk20", 600),
    ("fa", "Arabic", "gtk20", 450),
    ("gu", "Gujarati", "gtk20", 800),
    ("te", "Telugu", "gtk20", 600),
    ("ml", "Malayalam", "gtk20", 1000),
    ("my", "Myanmar", "gtk20", 700),
    ("km", "Khmer", "gtk20", 400),  # km has no gtk20: falls back below
    ("pa", "Gurmukhi", "gtk20", 500),
    ("si", "Sinhala", "gtk20", 600),
]


class Counter:
    def __init__(self, model_path: Path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor()
        self.sp.Load(str(model_path))

    def __call__(self, prompt_name: str, text: str) -> int:
        return len(self.sp.encode(PROMPTS[prompt_name] + text)) + 2

    def fit(self, prompt_name: str, pieces: list[str], budget: int, sep: str = "\n") -> str:
        """The longest prefix of ``pieces`` (joined by ``sep``) within ``budget`` tokens."""
        lo, hi = 1, len(pieces)
        while lo < hi:  # binary search on the number of pieces
            mid = (lo + hi + 1) // 2
            if self(prompt_name, sep.join(pieces[:mid])) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return sep.join(pieces[:lo])


def catalog_messages(lang: str, domain: str) -> list[str]:
    path = LOCALE / lang / "LC_MESSAGES" / f"{domain}.mo"
    if not path.is_file():
        return []
    with path.open("rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog  # noqa: SLF001 - the raw msgid -> msgstr table
    out = []
    for key, value in sorted(catalog.items(), key=lambda kv: str(kv[0])):
        if not key or not isinstance(value, str):
            continue
        strip = lambda s: re.sub(r"%[-0-9.]*[sdluxc]|%\d\$[sd]|_", "", s).strip()  # printf slots and mnemonics
        value = strip(value)
        untranslated = value == strip(str(key)) or (lang not in LATIN and _mostly_ascii(value))
        if len(value) >= 12 and not untranslated:
            out.append(value)
    return list(dict.fromkeys(out))


def _mostly_ascii(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isascii() for c in letters) >= 0.5 * len(letters)


def shuffled(items: list, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [items[i] for i in rng.permutation(len(items))]


def ui_texts(count: Counter) -> list[dict]:
    rows = []
    for i, (lang, script, domain, budget) in enumerate(UI_TEXTS):
        messages = catalog_messages(lang, domain)
        if not messages:
            domain = "gdk-pixbuf" if domain == "gtk20" else "gtk20"  # km: only gdk-pixbuf; never calibration's
            messages = catalog_messages(lang, domain)
        text = count.fit("document", shuffled(messages, 100 + i), budget)
        kind = "long-doc" if budget >= 1900 else "doc"
        rows.append(dict(id=f"ui-{lang}", kind=kind, script=script, prompt_name="document",
                         source=f"/usr/share/locale/{lang}/LC_MESSAGES/{domain}.mo (LGPL-2.1+)", text=text))
    return rows


def file_texts(count: Counter) -> list[dict]:
    rows = []
    gpl = Path("/usr/share/common-licenses/GPL-3").read_text(encoding="utf-8")
    start = gpl.index("  4. Conveying Verbatim Copies.")
    rows.append(dict(id="gpl3-middle", kind="long-doc", script="Latin", prompt_name="document",
                     source="/usr/share/common-licenses/GPL-3 (from section 4)",
                     text=count.fit("document", gpl[start:].split("\n"), 2040)))
    changelog = gzip.open("/usr/share/doc/apt/changelog.gz", "rt", encoding="utf-8").read()
    rows.append(dict(id="apt-changelog", kind="changelog", script="Latin", prompt_name="document",
                     source="/usr/share/doc/apt/changelog.gz (GPL-2+)", text=count.fit("document", changelog.split("\n"), 2040)))
    copyright_ = Path("/usr/share/doc/apt/copyright").read_text(encoding="utf-8")
    rows.append(dict(id="apt-copyright", kind="boilerplate", script="Latin", prompt_name="document",
                     source="/usr/share/doc/apt/copyright", text=count.fit("document", copyright_.split("\n"), 800)))
    stdio = Path("/usr/include/stdio.h").read_text(encoding="utf-8")
    rows.append(dict(id="stdio-h", kind="code", script="Latin", prompt_name="document",
                     source="/usr/include/stdio.h (glibc, LGPL-2.1+)", text=count.fit("document", stdio.split("\n"), 2040)))
    iso = Path("/usr/share/iso-codes/json/iso_3166-1.json").read_text(encoding="utf-8")
    rows.append(dict(id="iso3166-json", kind="json", script="Latin", prompt_name="document",
                     source="/usr/share/iso-codes/json/iso_3166-1.json (LGPL-2.1+)", text=count.fit("document", iso.split("\n"), 1600)))
    import colorsys, fnmatch, graphlib  # noqa: E401 - modules the calibration file takes no docstrings from

    for module, budget, prompt in ((graphlib, 2040, "document"), (colorsys, 1200, "document"), (fnmatch, 900, "InstructionRetrieval")):
        source = Path(module.__file__).read_text(encoding="utf-8")
        rows.append(dict(id=f"py-{module.__name__}", kind="code", script="Latin", prompt_name=prompt,
                         source=f"Python 3.11 Lib/{module.__name__}.py (PSF license)", text=count.fit(prompt, source.split("\n"), budget)))
    return rows


CITIES = ["Lisboa", "Kraków", "São Paulo", "Zürich", "Reykjavík", "Nairobi", "Osaka", "Montréal", "Cluj-Napoca", "Tbilisi", "Chennai", "Perth"]
STATUS = ["paid", "pending", "refunded", "failed", "shipped"]
HOSTS = ["web-01", "web-02", "db-primary", "cache-3"]
DAEMONS = ["sshd", "systemd", "kernel", "cron", "postfix/smtpd", "dockerd"]
PATHS = ["/", "/index.html", "/api/v2/orders", "/static/app.3f9c.js", "/login", "/favicon.ico", "/api/v2/users/42", "/healthz"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", "curl/8.5.0", "Googlebot/2.1 (+http://www.google.com/bot.html)", "python-requests/2.32.3"]


def generated_texts(count: Counter) -> list[dict]:
    rng = np.random.default_rng(2026)
    rows = []

    def add(id_, kind, text, prompt="document", script="Latin", source="seeded generator (benchmarks/validation_set.py)"):
        rows.append(dict(id=id_, kind=kind, script=script, prompt_name=prompt, source=source, text=text))

    lines = ["order_id,date,city,amount_eur,status,items"]
    for i in range(400):
        lines.append(f"{100231 + i},2025-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d},{CITIES[rng.integers(len(CITIES))]},"
                     f"{rng.integers(100, 99999) / 100:.2f},{STATUS[rng.integers(len(STATUS))]},{rng.integers(1, 9)}")
    add("csv-orders", "table-csv", count.fit("document", lines, 1900))
    md = ["| Package | Version | License | Size (kB) | Maintained |", "|---|---|---|---:|:---:|"]
    for i in range(80):
        md.append(f"| lib{''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz'), 6))} | {rng.integers(0, 4)}.{rng.integers(0, 20)}.{rng.integers(0, 9)} "
                  f"| {['MIT', 'BSD-3-Clause', 'GPL-3.0', 'LGPL-2.1', 'MPL-2.0'][rng.integers(5)]} | {rng.integers(4, 9000)} | {'yes' if rng.random() < 0.7 else 'no'} |")
    add("md-packages", "table-md", count.fit("document", md, 900))
    tsv = ["\t".join(f"x{j}" for j in range(8))] + ["\t".join(f"{v:.4f}" for v in rng.normal(size=8)) for _ in range(150)]
    add("tsv-numbers", "table-csv", count.fit("document", tsv, 1200))

    syslog = []
    for i in range(300):
        d = DAEMONS[rng.integers(len(DAEMONS))]
        msg = {
            "sshd": f"Failed password for invalid user admin from 203.0.113.{rng.integers(1, 255)} port {rng.integers(30000, 65000)} ssh2",
            "systemd": f"Started Session {rng.integers(100, 999)} of User ubuntu.",
            "kernel": f"[{rng.integers(1000, 99999)}.{rng.integers(0, 999999):06d}] EXT4-fs (sda1): re-mounted. Opts: errors=remount-ro",
            "cron": "(root) CMD (   cd / && run-parts --report /etc/cron.hourly)",
            "postfix/smtpd": f"connect from unknown[198.51.100.{rng.integers(1, 255)}]",
            "dockerd": f'time="2025-03-0{rng.integers(1, 9)}T12:{rng.integers(0, 60):02d}:{rng.integers(0, 60):02d}Z" level=info msg="ignoring event" module=libcontainerd',
        }[d]
        syslog.append(f"Mar  {rng.integers(1, 9)} 12:{i // 60 % 60:02d}:{i % 60:02d} {HOSTS[rng.integers(len(HOSTS))]} {d}[{rng.integers(200, 40000)}]: {msg}")
    add("syslog", "log", count.fit("document", syslog, 2040))
    access = []
    for i in range(300):
        access.append(f'192.0.2.{rng.integers(1, 255)} - - [12/Mar/2025:08:{i // 60 % 60:02d}:{i % 60:02d} +0000] "GET {PATHS[rng.integers(len(PATHS))]} HTTP/1.1" '
                      f'{[200, 200, 200, 304, 404, 500][rng.integers(6)]} {rng.integers(0, 50000)} "-" "{AGENTS[rng.integers(len(AGENTS))]}"')
    add("access-log", "log", count.fit("document", access, 1500))
    jlog = [json.dumps({"ts": f"2025-03-12T08:00:{i % 60:02d}.{rng.integers(0, 999):03d}Z", "level": ["INFO", "DEBUG", "WARN"][rng.integers(3)],
                        "logger": "worker.queue", "msg": "job finished", "job_id": int(rng.integers(1e6)), "duration_ms": int(rng.integers(1, 5000))})
            for i in range(200)]
    add("json-log", "log", count.fit("document", jlog, 1000))
    trace = ('Traceback (most recent call last):\n  File "/srv/app/worker.py", line 88, in run\n    result = handler(payload)\n'
             '  File "/srv/app/handlers.py", line 41, in handler\n    return payload["items"][0]["sku"]\nKeyError: \'items\'\n'
             'WARNING:worker:retrying job in 5 seconds\n')
    add("traceback-repeated", "log", count.fit("document", [trace] * 40, 900, sep=""))
    html = ['<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>Shop</title></head>\n<body>',
            '<nav><a href="/">Home</a> | <a href="/products">Products</a> | <a href="/about">About us</a> | <a href="/contact">Contact</a></nav>',
            '<div class="cookie-banner">We use cookies to improve your experience. By continuing to browse you agree to our use of cookies. <button>Accept</button></div>']
    html += [f'<div class="product"><h2>Product {i}</h2><p>Price: ${rng.integers(5, 500)}.99</p><a class="btn" href="/cart/add/{i}">Add to cart</a></div>' for i in range(40)]
    html += ['<footer>© 2025 Example Shop. All rights reserved. Terms of service | Privacy policy | Imprint</footer>\n</body>\n</html>']
    add("html-shop", "boilerplate", count.fit("document", html, 1400))

    add("repeat-word-en", "repeated-word", count.fit("document", ["data"] * 1000, 700, sep=" "))
    add("repeat-word-ru", "repeated-word", count.fit("document", ["привет"] * 1000, 700, sep=" "), script="Cyrillic")
    add("repeat-phrase", "repeated-phrase", count.fit("document", ["Subscribe to our newsletter for the latest updates."] * 200, 900, sep=" "))
    add("repeat-phrase-ja", "repeated-phrase", count.fit("document", ["この商品は在庫切れです。"] * 300, 600, sep=""), script="Japanese")
    add("repeat-char", "repeated-char", count.fit("document", ["=" * 79] * 400, 400))
    add("numbers", "numbers", count.fit("document", [str(i) for i in range(1, 2000)], 1200, sep=", "))
    add("emoji-run", "emoji", " ".join(["🙂", "👍", "🎉", "🔥"][rng.integers(4)] for _ in range(120)))

    shorts = [("hello", "query", "Latin"), ("東京", "query", "Han"), ("погода завтра", "query", "Cyrillic"),
              ("NaN", "document", "Latin"), ("?", "document", "Latin"), ("مرحبا بالعالم", "query", "Arabic"),
              ("COVID-19 vaccine", "query", "Latin"), ("नमस्ते", "Clustering", "Devanagari"), ("ok", "STS", "Latin"),
              ("안녕하세요", "Classification", "Hangul"), ("sort list python", "InstructionRetrieval", "Latin"),
              ("ประเทศไทย", "query", "Thai")]
    for i, (text, prompt, script) in enumerate(shorts):
        add(f"short-{i:02d}", "short", text, prompt=prompt, script=script, source="hand-written 1-3 word input")
    return rows


def build(tokenizer: Path) -> list[dict]:
    count = Counter(tokenizer)
    rows = ui_texts(count) + file_texts(count) + generated_texts(count)
    for row in rows:
        row["n_tokens"] = count(row["prompt_name"], row["text"])
        assert row["n_tokens"] <= MAX_TOKENS, row["id"]
    check_disjoint(rows)
    return rows


def check_disjoint(rows: list[dict]) -> None:
    """No line of 40+ characters is shared with the test set, the evaluation sets or the calibration file."""
    shared = HERE.parents[1] / "shared"
    others = [HERE.parent / "convert" / "calibration.jsonl", shared / "reference" / "public.jsonl"]
    others += sorted((shared / "eval").rglob("*.jsonl")) if (shared / "eval").is_dir() else []
    seen = set()
    for path in others:
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                for field in json.loads(line).values() if line.startswith("{") else [line]:
                    if isinstance(field, str):
                        seen.update(s.strip() for s in field.split("\n") if len(s.strip()) >= 40)
    for row in rows:
        clash = [s for s in row["text"].split("\n") if s.strip() in seen]
        if clash:
            raise SystemExit(f"{row['id']} shares text with a held-out or calibration file: {clash[0][:80]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, default=Path("~/.cache/embeddinggemma-300m/tokenizer.model").expanduser())
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = build(args.tokenizer)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    scripts = sorted({r["script"] for r in rows})
    print(f"wrote {args.out}: {len(rows)} texts, {len(scripts)} scripts ({', '.join(scripts)}), "
          f"{sum(r['n_tokens'] >= 1900 for r in rows)} of 1,900+ tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
