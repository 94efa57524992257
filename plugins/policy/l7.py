"""L7 rules with Cilium's semantics: HTTP requests (a policy's `rules.http`) and DNS names
(`rules.dns`, `toFQDNs`: matchName, matchPattern).

HTTP: method, path and host are regular expressions matched against the whole value (`/public`
does not allow `/public/x`; `/public.*` does); `headers` entries are `Name` (present) or
`Name: value` (exactly that value); the fields of one rule must all hold, and any rule of a
list allows. DNS: names are compared lower-case with a trailing dot; in a pattern `*` stands
for any characters of one label, a lone `*` for every name, and a leading `**.` for one or
more labels. Compiling raises ValueError naming what is wrong."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

MAX_NAME = 255
HEADER_MISMATCH_ACTIONS = ("", "LOG", "ADD", "DELETE", "REPLACE")
_LABEL = "[-a-zA-Z0-9_]"
_MATCH_NAME = re.compile(rf"({_LABEL}+\.?)+")
_MATCH_PATTERN = re.compile(rf"(\*\*\.)?[-a-zA-Z0-9_.*]+")


def fqdn(name: str) -> str:
    """A DNS name as rules compare it: lower-case, ending in a dot."""
    name = name.lower()
    return name if name.endswith(".") else name + "."


@dataclass(frozen=True)
class DnsRule:
    """One matchName or matchPattern."""

    text: str  # as written
    regex: re.Pattern

    def allows(self, query: str) -> bool:
        return self.regex.fullmatch(fqdn(query)) is not None


def match_name(name: str) -> DnsRule:
    if len(name) > MAX_NAME or not _MATCH_NAME.fullmatch(name):
        raise ValueError(f'matchName "{name}" is not a DNS name (letters, digits, "-", "_" and dots, '
                         f"at most {MAX_NAME} characters)")
    return DnsRule(name, re.compile(re.escape(fqdn(name))))


def match_pattern(pattern: str) -> DnsRule:
    if len(pattern) > MAX_NAME or not _MATCH_PATTERN.fullmatch(pattern) or "**" in pattern.removeprefix("**."):
        raise ValueError(f'matchPattern "{pattern}": only letters, digits, "-", "_", dots and "*" are allowed, '
                         f'and "**." only at the start')
    if pattern == "*":
        return DnsRule(pattern, re.compile(rf"({_LABEL}+\.)+"))
    body, prefix = fqdn(pattern), ""
    if body.startswith("**."):
        body, prefix = body[3:], rf"({_LABEL}+\.)+"
    return DnsRule(pattern, re.compile(prefix + re.escape(body).replace(r"\*", f"{_LABEL}*")))


def full_match(text: str, what: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as e:
        raise ValueError(f'{what} "{text}" is not a valid regular expression: {e}') from None


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

    def allows(self, method: str, path: str, host: str, headers: Mapping[str, str]) -> bool:
        """`headers` with lower-case names."""
        for regex, value in ((self.method, method), (self.path, path), (self.host, host)):
            if regex is not None and regex.fullmatch(value) is None:
                return False
        for name, value in self.headers:
            if name not in headers or (value is not None and headers[name] != value):
                return False
        return all(m.mismatch or headers.get(m.name) == m.value for m in self.header_matches)


def header(text: str) -> tuple[str, str | None]:
    """`Name` or `Name: value` (split at the first space, a trailing ':' of the name dropped)."""
    name, _, value = text.strip().partition(" ")
    name = name.removesuffix(":")
    if not name:
        raise ValueError(f'header "{text}" has no name')
    return name.lower(), (value.strip() if value.strip() else None)


def header_match(name: str, value: str, mismatch: str) -> HeaderMatch:
    if not name:
        raise ValueError("headerMatches needs a name")
    if mismatch not in HEADER_MISMATCH_ACTIONS:
        actions = ", ".join(a for a in HEADER_MISMATCH_ACTIONS if a)
        raise ValueError(f'mismatch "{mismatch}" is not one of {actions}')
    return HeaderMatch(name.lower(), value, mismatch)
