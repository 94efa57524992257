"""The policy plugin's numbers generated from plugins/policy/bpf/policy_maps.h by `make consts`: do not edit."""

from __future__ import annotations

POLICY_PREFIX_ANY_PROTO = 64
POLICY_PREFIX_ANY_PORT = 72
POLICY_PREFIX_FULL = 96
POLICY_F_DENY = 0x1  # a deny rule matched
POLICY_F_AUDIT = 0x2  # the deciding rule is in audit mode: report, do not drop
POLICY_ENFORCE = 0x1  # unmatched traffic is denied (default deny)
POLICY_AUDIT = 0x2  # denials are reported, not enforced
POLICY_LOCKDOWN = 0x4  # the policy did not fit the map: deny everything
POLICY_AUDIT_DEFAULT = 0x8  # default-deny drops are reported, not enforced
POLICY_OPEN = 0x10  # flags[0]: no rules, nothing enforced either way: no checks, and its connections need no record (the peer does not wait for its check)
CT_CHECK_EGRESS = 0x1
CT_CHECK_INGRESS = 0x2
