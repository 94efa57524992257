"""L7 rule semantics as Cilium's (HTTP full-match regexes and headers, DNS matchName and
matchPattern), checked against the cases Cilium documents."""

from __future__ import annotations

import time

import pytest

from pylium.plugins.policy import l7


def http(**fields) -> l7.HttpRule:
    regexes = {k: l7.full_match(v, k) for k, v in fields.items() if k in ("method", "path", "host")}
    headers = tuple(l7.header(h) for h in fields.get("headers", ()))
    matches = tuple(l7.header_match(*m) for m in fields.get("header_matches", ()))
    return l7.HttpRule(**regexes, headers=headers, header_matches=matches)


def allows(rule: l7.HttpRule, method="GET", path="/", host="svc", headers=None) -> bool:
    return rule.allows(method, path, host, headers or {})


def test_paths_methods_and_hosts_match_the_whole_value():
    assert allows(http(path="/public"), path="/public")
    assert not allows(http(path="/public"), path="/public/x")
    assert allows(http(path="/public.*"), path="/public/x") and allows(http(path="/public.*"), path="/public")
    assert not allows(http(method="GET"), method="HEAD")
    assert allows(http(method="GET|HEAD"), method="HEAD")
    assert allows(http(host="api\\.example\\.com"), host="api.example.com")
    assert not allows(http(host="api"), host="api.example.com")
    rule = http(method="POST", path="/v1/request-landing")  # the fields of one rule all hold
    assert allows(rule, "POST", "/v1/request-landing") and not allows(rule, "PUT", "/v1/request-landing")
    assert allows(http(), "DELETE", "/anything")  # {}: everything (visibility)


def test_headers_require_presence_or_an_exact_value():
    exact = http(headers=["X-My-Header: true"])
    assert allows(exact, headers={"x-my-header": "true"})
    assert not allows(exact, headers={"x-my-header": "false"}) and not allows(exact)
    present = http(headers=["X-Token"])
    assert allows(present, headers={"x-token": ""}) and not allows(present)
    strict = http(header_matches=[("X-Env", "prod", "")])
    assert allows(strict, headers={"x-env": "prod"}) and not allows(strict, headers={"x-env": "dev"})
    logged = http(header_matches=[("X-Env", "prod", "LOG")])  # a mismatch action lets the request through
    assert allows(logged, headers={"x-env": "dev"})


@pytest.mark.parametrize(("rule", "query", "allowed"), [
    (l7.match_name("Cilium.IO"), "cilium.io.", True),
    (l7.match_name("cilium.io"), "CILIUM.io", True),
    (l7.match_name("cilium.io"), "www.cilium.io", False),
    (l7.match_pattern("*.cilium.io"), "a.cilium.io", True),
    (l7.match_pattern("*.cilium.io"), "cilium.io", False),
    (l7.match_pattern("*.cilium.io"), "a.b.cilium.io", False),
    (l7.match_pattern("*cilium.io"), "cilium.io", True),
    (l7.match_pattern("*cilium.io"), "subcilium.io.", True),
    (l7.match_pattern("*"), "anything.at.all", True),
    (l7.match_pattern("**.cilium.io"), "a.b.cilium.io", True),
    (l7.match_pattern("**.cilium.io"), "a.cilium.io", True),
    (l7.match_pattern("**.cilium.io"), "cilium.io", False),
    (l7.match_pattern("api-*.example.com"), "api-v2.example.com", True),
    (l7.match_pattern("api-*.example.com"), "api.example.com", False),
])
def test_dns_names_and_patterns(rule, query, allowed):
    assert rule.allows(query) is allowed


@pytest.mark.parametrize(("make", "text", "message"), [
    (l7.match_name, "bad name", "not a DNS name"),
    (l7.match_name, "a" * 256, "at most 255"),
    (l7.match_pattern, "a.**.com", '"**." is allowed only at the start'),
    (l7.match_pattern, "{a,b}.com", "only letters"),
    (l7.match_pattern, "a+.com", "only letters"),
    (lambda t: l7.full_match(t, "path"), "/a(", 'path "/a(" is not a valid regular expression'),
    (l7.header, " ", "has no name"),
])
def test_bad_rules_say_what_is_wrong(make, text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("*", r"\*").replace("+", r"\+")):
        make(text)


def test_more_dns_pattern_forms():
    assert l7.match_pattern("a**b.com").allows("axyzb.com")  # a run of stars is one star
    assert l7.match_pattern("**").allows("a.b.c") and l7.match_pattern("*.").allows("x")
    assert not l7.match_pattern("*.example.com").allows("bad!name.example.com")
    for bad in ("a..com", ".com"):
        with pytest.raises(ValueError, match="only letters"):
            l7.match_pattern(bad)


def test_hostile_names_and_patterns_cost_no_time():
    started = time.monotonic()
    with pytest.raises(ValueError):
        l7.match_name("a" * 60 + "!")
    rule = l7.match_pattern("*a*a*a*a*a*a*a*a*a*a.com")
    assert not rule.allows("a" * 60 + "b.com")
    assert time.monotonic() - started < 0.5


def test_a_header_match_without_a_value_asks_for_presence():
    rule = http(header_matches=[("X-Token", "", "")])
    assert allows(rule, headers={"x-token": "abc"}) and not allows(rule)


def test_a_pattern_of_stars_and_dots_keeps_its_labels():
    rule = l7.match_pattern("*.*")
    assert rule.allows("a.b") and not rule.allows("a") and not rule.allows("a.b.c")
