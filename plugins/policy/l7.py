"""L7 rules with Cilium's semantics: HTTP requests (a policy's `rules.http`) and DNS names
(`rules.dns`, `toFQDNs`: matchName, matchPattern).

HTTP: method, path and host are regular expressions matched against the whole value (`/public`
does not allow `/public/x`; `/public.*` does); `headers` entries are `Name` (present) or
`Name: value` (exactly that value); the fields of one rule must all hold, and any rule of a
list allows. DNS: names are compared lower-case with a trailing dot; in a pattern `*` stands
for any characters of one label, a lone `*` for every name, and a leading `**.` for one or
more labels. Compiling raises ValueError naming what is wrong."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

MAX_NAME = 255
HEADER_MISMATCH_ACTIONS = ("", "LOG", "ADD", "DELETE", "REPLACE")
_LABEL = "[-a-zA-Z0-9_]"
# No nested repetition: Python's re backtracks, and a policy must not stall the agent.
_MATCH_NAME = re.compile(rf"{_LABEL}+(\.{_LABEL}+)*\.?")
_MATCH_PATTERN = re.compile(r"[-a-zA-Z0-9_*]+(\.[-a-zA-Z0-9_*]+)*\.?")
_QUERY = re.compile(rf"({_LABEL}+\.)*")


def quote(text: str, limit: int = 60) -> str:
    """Text for a message: in quotes, on one line (control characters escaped), shortened."""
    quoted = f'"{text}"' if text.isprintable() else json.dumps(text)
    return quoted if len(quoted) <= limit else quoted[:limit - 3] + "..."


def fqdn(name: str) -> str:
    """A DNS name as rules compare it: lower-case, ending in a dot."""
    name = name.lower()
    return name if name.endswith(".") else name + "."


@dataclass(frozen=True)
class DnsRule:
    """One matchName or matchPattern, as labels: `*` in a label matches any run of characters
    of that label (matched without backtracking), `any_prefix` one or more leading labels."""

    text: str  # as written
    labels: tuple[str, ...] = ()  # lower-case, without the final empty label
    any_prefix: bool = False  # "**." : one or more labels before `labels`
    everything: bool = False  # a lone "*"

    def allows(self, query: str) -> bool:
        name = fqdn(query)
        if not _QUERY.fullmatch(name):
            return False
        if self.everything:
            return True
        labels = name.split(".")[:-1]
        if self.any_prefix:
            if len(labels) <= len(self.labels):
                return False
            labels = labels[len(labels) - len(self.labels):]
        return len(labels) == len(self.labels) and all(map(_glob, self.labels, labels))


def _glob(pattern: str, text: str) -> bool:
    """`*` matches any run of characters; linear backtracking to the last star only."""
    p = t = 0
    star, resume = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] == text[t]:
            p, t = p + 1, t + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, resume, p = p, t, p + 1
        elif star >= 0:
            resume += 1
            p, t = star + 1, resume
        else:
            return False
    return pattern[p:].strip("*") == ""


def match_name(name: str) -> DnsRule:
    if len(name) > MAX_NAME or not _MATCH_NAME.fullmatch(name):
        raise ValueError(f'matchName {quote(name)} is not a DNS name (letters, digits, "-", "_" and dots, '
                         f"at most {MAX_NAME} characters)")
    return DnsRule(name, tuple(fqdn(name).split(".")[:-1]))


def match_pattern(pattern: str) -> DnsRule:
    def bad(why: str) -> ValueError:
        return ValueError(f"matchPattern {quote(pattern)}: {why}")

    if len(pattern) > MAX_NAME or not _MATCH_PATTERN.fullmatch(pattern):
        raise bad(f'only letters, digits, "-", "_", dots and "*" are allowed, at most {MAX_NAME} characters')
    if set(pattern.rstrip(".")) == {"*"}:  # "*", "**", "*.": every name
        return DnsRule(pattern, everything=True)
    first, _, rest = pattern.partition(".")
    any_prefix = len(first) > 1 and not first.strip("*")  # "**.": one or more labels
    labels = fqdn(rest if any_prefix else pattern).split(".")[:-1]
    if any(len(label) > 1 and not label.strip("*") for label in labels):
        raise bad('"**." is allowed only at the start')
    return DnsRule(pattern, tuple(re.sub(r"\*+", "*", label) for label in labels), any_prefix)


def full_match(text: str, what: str) -> re.Pattern:
    try:
        return re.compile(text)
    except (re.error, OverflowError) as e:  # OverflowError: a repetition like a{99999999999999999999}
        raise ValueError(f"{what} {quote(text)} is not a valid regular expression: {e}") from None
    except RecursionError:  # groups nested deeper than re's parser recurses
        raise ValueError(f"{what} {quote(text)} is not a valid regular expression: nested too deeply") from None


@dataclass(frozen=True)
class HeaderMatch:
    name: str  # lower-case
    value: str
    mismatch: str = ""  # "": the request is denied when the value differs; else allowed (LOG, ADD, ...)


@dataclass(frozen=True)
class HttpRule:
    method: re.Pattern | None = None
    path: re.Pattern | None = None
    host: re.Pattern | None = None
    headers: tuple[tuple[str, str | None], ...] = ()  # (lower-case name, exact value or None: present)
    header_matches: tuple[HeaderMatch, ...] = ()
    spec: str = "{}"  # the rule as written (JSON): what the proxy process is given

    def allows(self, method: str, path: str, host: str, headers: Mapping[str, str]) -> bool:
        """`headers` with lower-case names."""
        for regex, value in ((self.method, method), (self.path, path), (self.host, host)):
            if regex is not None and regex.fullmatch(value) is None:
                return False
        for name, value in self.headers:
            if name not in headers or (value is not None and headers[name] != value):
                return False
        # no value: the header must be present; a mismatch action lets the request through
        return all(m.mismatch or (m.name in headers if not m.value else headers.get(m.name) == m.value)
                   for m in self.header_matches)


def header(text: str) -> tuple[str, str | None]:
    """`Name` or `Name: value` (split at the first space, a trailing ':' of the name dropped)."""
    name, _, value = text.strip().partition(" ")
    name = name.removesuffix(":")
    if not name:
        raise ValueError(f"header {quote(text)} has no name")
    return name.lower(), (value.strip() if value.strip() else None)


def header_match(name: str, value: str, mismatch: str) -> HeaderMatch:
    if not name:
        raise ValueError("headerMatches needs a name")
    if mismatch not in HEADER_MISMATCH_ACTIONS:
        actions = ", ".join(a for a in HEADER_MISMATCH_ACTIONS if a)
        raise ValueError(f"mismatch {quote(mismatch)} is not one of {actions}")
    return HeaderMatch(name.lower(), value, mismatch)
