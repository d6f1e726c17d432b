"""The store-editable synonym layer: spelling variants, other names for the same thing, purposes.

A synonym file is TOML (format in the shipped default, ``edge/text/synonyms.toml``, and in
``docs/search.md``)::

    [[spelling]]                      # variants of one word: searched as if typed
    terms = ["yoghurt", "yogurt"]
    [[same]]                          # other names of the same thing: searched at a lower weight
    terms = ["aubergine", "eggplant"]
    [[purpose]]                       # one-way: what it is for -> what to search too (lower weight)
    when = ["mojito", "cocktail"]
    add = ["lime", "mint"]

Terms are compared as normalised words (case and accents folded) under a light stem
(:func:`edge.text.lexical.stem`), so "Courgettes" matches "courgette" and "Äggplanta" matches
"aggplanta". Several files load in order (the shipped default, then the store's own) and add up.
:meth:`SynonymSet.changed` tells whether any file changed on disk, so ``reload`` re-reads them
without a restart.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge.core.errors import ConfigError
from edge.text.lexical import stem, words

DEFAULT_FILE = Path(__file__).with_name("synonyms.toml")
KINDS = ("spelling", "same", "purpose")

Phrase = tuple[str, ...]  # normalised words


@dataclass(frozen=True)
class Rule:
    """One entry: a query containing one of ``when`` also searches every phrase of ``add``."""

    kind: str  # spelling | same | purpose
    when: tuple[Phrase, ...]
    add: tuple[Phrase, ...]


@dataclass(frozen=True)
class Expansion:
    """What the synonym layer adds to a query: phrases by kind, each once, in query order."""

    spelling: tuple[Phrase, ...] = ()
    same: tuple[Phrase, ...] = ()
    purpose: tuple[Phrase, ...] = ()
    matched: tuple[Phrase, ...] = ()  # the query phrases that triggered a rule

    def __bool__(self) -> bool:
        return bool(self.spelling or self.same or self.purpose)


def _key(phrase: Phrase) -> tuple[str, ...]:
    return tuple(stem(w) for w in phrase)


@dataclass
class SynonymSet:
    """Rules from one or more files, indexed by the stemmed first word of each trigger phrase."""

    files: tuple[Path, ...] = ()
    rules: list[Rule] = field(default_factory=list)
    _stamps: dict[Path, tuple[int, int] | None] = field(default_factory=dict, repr=False)
    _index: dict[str, list[tuple[tuple[str, ...], Rule]]] = field(default_factory=dict, repr=False)
    _spelling: dict[str, list[tuple[tuple[str, ...], Rule]]] = field(default_factory=dict, repr=False)
    _add_keys: dict[Phrase, tuple[str, ...]] = field(default_factory=dict, repr=False)  # add phrase -> its key

    @classmethod
    def load(cls, files: Sequence[Path | str]) -> SynonymSet:
        """Read the files in order; a missing or malformed file is a :class:`ConfigError` naming it."""
        out = cls(files=tuple(Path(f) for f in files))
        for path in out.files:
            out._stamps[path] = _stamp(path)
            out.rules.extend(read_rules(path))
        for rule in out.rules:
            if rule.kind == "spelling":
                for phrase in rule.when:
                    out._add(out._spelling, _key(phrase), rule)
        for rule in out.rules:
            if rule.kind != "spelling":
                for phrase in rule.when:
                    out._add(out._index, _key(tuple(out.canonical(phrase)[0])), rule)
                for phrase in rule.add:
                    out._add_keys[phrase] = _key(tuple(out.canonical(phrase)[0]))
        for index in (out._spelling, out._index):
            for entries in index.values():
                entries.sort(key=lambda e: -len(e[0]))  # longest trigger first
        return out

    @staticmethod
    def _add(index: dict[str, list[tuple[tuple[str, ...], Rule]]], key: tuple[str, ...], rule: Rule) -> None:
        index.setdefault(key[0], []).append((key, rule))

    def changed(self) -> bool:
        """True when a file was edited, created or removed since it was read."""
        return any(_stamp(p) != m for p, m in self._stamps.items())

    def words(self) -> set[str]:
        """Every word of every rule (typo corrections may land on them: 'yougurt' -> 'yogurt')."""
        return {w for r in self.rules for phrase in (*r.when, *r.add) for w in phrase}

    def canonical(self, query: Sequence[str]) -> tuple[list[str], list[Phrase]]:
        """Spelling variants replaced by their group's first term, and the variants the query did not use."""
        keys = [stem(w) for w in query]
        out: list[str] = []
        variants: list[Phrase] = []
        i = 0
        while i < len(keys):
            hits = _hits_at(self._spelling, keys, i)
            if not hits:
                out.append(query[i])
                i += 1
                continue
            span, rule = len(hits[0][0]), hits[0][1]
            own = _key(tuple(query[i : i + span]))
            out.extend(rule.add[0])
            variants.extend(p for p in rule.add if _key(p) != own)
            i += span
        return out, variants

    def expand(self, query: Sequence[str]) -> Expansion:
        """Rules triggered by the (normalised) query words, longest match first, left to right."""
        words_, spelling = self.canonical(query)
        keys = [stem(w) for w in words_]
        found: dict[str, list[Phrase]] = {"same": [], "purpose": []}
        matched: list[Phrase] = []
        i = 0
        while i < len(keys):
            hits = _hits_at(self._index, keys, i)
            if not hits:
                i += 1
                continue
            span = len(hits[0][0])
            own = tuple(keys[i : i + span])
            matched.append(tuple(words_[i : i + span]))
            for _, rule in hits:
                found[rule.kind].extend(p for p in rule.add if self._add_keys[p] != own)
            i += span
        return Expansion(spelling=tuple(dict.fromkeys(spelling)), same=tuple(dict.fromkeys(found["same"])),
                         purpose=tuple(dict.fromkeys(found["purpose"])), matched=tuple(matched))


def _hits_at(index: dict[str, list[tuple[tuple[str, ...], Rule]]], keys: Sequence[str],
             i: int) -> list[tuple[tuple[str, ...], Rule]]:
    """Rules whose trigger starts at position ``i``: all of the longest matching length."""
    best: list[tuple[tuple[str, ...], Rule]] = []
    for key, rule in index.get(keys[i], []):
        if tuple(keys[i : i + len(key)]) != key:
            continue
        if best and len(key) < len(best[0][0]):
            break
        best.append((key, rule))
    return best


def _stamp(path: Path) -> tuple[int, int] | None:
    """(modification time in ns, size) of a file, None when it is missing: what :meth:`SynonymSet.changed` compares."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def read_rules(path: Path) -> list[Rule]:
    """The rules of one synonym file (see the module docstring for the format)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"synonym file not found: {path}", hint="fix search.synonyms or create the file") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"synonym file {path} is not valid TOML: {e}",
                          hint="see docs/search.md for the format") from e
    unknown = sorted(set(data) - set(KINDS))
    if unknown:
        raise ConfigError(f"synonym file {path}: unknown section(s) {unknown}", hint=f"use {', '.join(KINDS)}")
    rules: list[Rule] = []
    for kind in KINDS:
        for n, entry in enumerate(data.get(kind, []), start=1):
            rules.append(_rule(path, kind, n, entry))
    return rules


def _rule(path: Path, kind: str, n: int, entry: object) -> Rule:
    where = f"synonym file {path}: [[{kind}]] entry {n}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} is not a table", hint=f"write it as [[{kind}]] with keys under it")
    want = ("when", "add") if kind == "purpose" else ("terms",)
    if set(entry) != set(want):
        raise ConfigError(f"{where} has keys {sorted(entry)}, expected {list(want)}",
                          hint="see docs/search.md for the format")
    lists = [_phrases(where, key, entry[key]) for key in want]
    if kind == "purpose":
        return Rule(kind=kind, when=lists[0], add=lists[1])
    return Rule(kind=kind, when=lists[0], add=lists[0])


def _phrases(where: str, key: str, value: object) -> tuple[Phrase, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: '{key}' must be a non-empty list of strings", hint='e.g. terms = ["a", "b"]')
    phrases = [tuple(words(v)) for v in value]
    if not all(phrases):
        raise ConfigError(f"{where}: '{key}' has an entry without letters or digits", hint="remove it")
    return tuple(dict.fromkeys(phrases))


def load_synonyms(own: Path | None = None, *, default: bool = True) -> SynonymSet:
    """The shipped default (unless ``default`` is False) followed by a store's own file, if any."""
    files: list[Path] = [DEFAULT_FILE] if default else []
    if own is not None:
        files.append(Path(own))
    return SynonymSet.load(files)

