"""WordNet 3.0's database files read here: every synset's gloss with its lexicographer
file and its topic domain.

The format is ``wndb(5WN)`` (https://wordnet.princeton.edu/documentation/wndb5wn):
each of ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv`` starts with a
licence header (lines starting with two spaces), then one line per synset::

    synset_offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt [ptr...] [frames...] | gloss

``synset_offset`` is 8 decimal digits, ``lex_filenum`` 2, ``w_cnt`` 2 hexadecimal,
``lex_id`` 1 hexadecimal, ``p_cnt`` 3 decimal; each pointer is
``pointer_symbol synset_offset pos source/target``. The topic domain of a synset is the
target of its ``;c`` pointer. WordNet is copyright 2006 Princeton University, under
the WordNet 3.0 licence (permissive: use, copy, modify and distribute with the
copyright notice): https://wordnet.princeton.edu/license-and-commercial-use
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

__all__ = ["LEXNAMES", "DATA_FILES", "Synset", "find_root", "read_synsets"]

# The 45 lexicographer files by lex_filenum, from lexnames(5WN) of WordNet 3.0
# (https://wordnet.princeton.edu/documentation/lexnames5wn).
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
# file -> the ss_type letters its lines may have ("s": adjective satellite)
DATA_FILES = {"data.noun": "n", "data.verb": "v", "data.adj": "as", "data.adv": "r"}
ENV = "WORDNET_DIR"
_HOW = ("get them with `apt-get install wordnet-base` (Debian/Ubuntu: /usr/share/wordnet), "
        "`python -m nltk.downloader wordnet` (nltk_data/corpora/wordnet), or Princeton's WordNet 3.0 download "
        "(its dict/ folder), and pass root= or set $WORDNET_DIR to that folder")


@dataclass(frozen=True)
class Synset:
    """One synset: ``key`` ``"n:00001740"`` (ss_type of its file and offset), its first
    word, lexicographer file index into :data:`LEXNAMES`, gloss, and the key of its
    first ``;c`` (topic domain) target or ``None``."""

    key: str
    word: str
    lexfile: int
    gloss: str
    domain: Optional[str]


def _candidates() -> List[str]:
    out = []
    if os.environ.get(ENV):
        out.append(os.environ[ENV])
    out.append("/usr/share/wordnet")
    nltk = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    nltk += [os.path.join(os.path.expanduser("~"), "nltk_data"), "/usr/share/nltk_data", "/usr/local/share/nltk_data",
             "/usr/lib/nltk_data", "/usr/local/lib/nltk_data"]
    out += [os.path.join(p, "corpora", "wordnet") for p in nltk]
    return out


def _missing(folder: str) -> List[str]:
    return [f for f in DATA_FILES if not os.path.isfile(os.path.join(folder, f))]


def find_root(root=None) -> str:
    """The folder holding ``data.noun``, ``data.verb``, ``data.adj``, ``data.adv``:
    ``root`` when given (checked), else the first of ``$WORDNET_DIR``,
    ``/usr/share/wordnet`` (Debian's wordnet-base), and ``corpora/wordnet`` under
    ``$NLTK_DATA`` and NLTK's usual data folders that has them all."""
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a path (str or os.PathLike) to the WordNet database folder or None, "
                            f"got {type(root).__name__}")
        root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(root):
            raise FileNotFoundError(f"WordNet root {root} is not a folder; it must hold {', '.join(DATA_FILES)}; "
                                    f"{_HOW}")
        missing = _missing(root)
        if missing:
            raise FileNotFoundError(f"WordNet root {root} lacks {', '.join(missing)}; it must hold "
                                    f"{', '.join(DATA_FILES)} (WordNet 3.0's database files); {_HOW}")
        return root
    tried = _candidates()
    for folder in tried:
        if os.path.isdir(folder) and not _missing(folder):
            return os.path.abspath(folder)
    raise FileNotFoundError(f"no WordNet database found (looked for {', '.join(DATA_FILES)} in {', '.join(tried)}); "
                            f"{_HOW}")


def _parse_line(line: str, ptypes: str, where: str) -> Tuple[str, str, int, str, Optional[str]]:
    head, bar, gloss = line.partition(" | ")
    if not bar:
        if line.rstrip().endswith(" |"):
            head, gloss = line.rstrip()[:-2], ""
        else:
            raise ValueError(f"{where}: no ' | ' before the gloss")
    f = head.split()
    try:
        offset, lexfile, ss_type = f[0], int(f[1]), f[2]
        if len(offset) != 8 or not offset.isdigit():
            raise ValueError(f"synset_offset {offset!r} is not 8 digits")
        if not 0 <= lexfile < len(LEXNAMES):
            raise ValueError(f"lex_filenum {lexfile} is not in 0..{len(LEXNAMES) - 1}")
        if ss_type not in ptypes:
            raise ValueError(f"ss_type {ss_type!r} does not belong in this file (expected one of {list(ptypes)})")
        w_cnt = int(f[3], 16)
        if w_cnt < 1:
            raise ValueError("w_cnt is 0")
        word = f[4]
        i = 4 + 2 * w_cnt
        p_cnt = int(f[i])
        domain = None
        for j in range(p_cnt):
            sym, target, pos = f[i + 1 + 4 * j], f[i + 2 + 4 * j], f[i + 3 + 4 * j]
            if len(target) != 8 or not target.isdigit() or pos not in "nvasr":
                raise ValueError(f"pointer {j + 1} ({sym} {target} {pos}) is malformed")
            if sym == ";c" and domain is None:
                domain = f"{'a' if pos == 's' else pos}:{target}"
    except (IndexError, ValueError) as e:
        raise ValueError(f"{where}: not a wndb(5WN) synset line ({e})") from None
    key = f"{'a' if ss_type == 's' else ss_type}:{offset}"
    return key, word, lexfile, gloss.strip(), domain


def read_synsets(root) -> Dict[str, Synset]:
    """Every synset of the four data files under ``root`` (see :func:`find_root`), by key,
    in file order (noun, verb, adj, adv; by offset within each)."""
    out: Dict[str, Synset] = {}
    for name, ptypes in DATA_FILES.items():
        path = os.path.join(root, name)
        count = 0
        with open(path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if line.startswith("  ") or not line.strip():
                    continue  # the licence header
                key, word, lexfile, gloss, domain = _parse_line(line, ptypes, f"WordNet file {path}, line {n}")
                out[key] = Synset(key, word, lexfile, gloss, domain)
                count += 1
        if not count:
            raise ValueError(f"WordNet file {path} has no synset lines (only a header, or empty); replace it with "
                             f"WordNet 3.0's {name}; {_HOW}")
    return out
