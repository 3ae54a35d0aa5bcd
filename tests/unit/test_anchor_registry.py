"""The evidence policy of the approved-anchor registry, table by table (pure code, no store)."""
from datetime import UTC, datetime

import pytest
from ansible.module_utils.anchor_registry import (
    DEFAULT_POLICY,
    PolicyError,
    canonical_fingerprint,
    commands,
    evaluate,
    is_expired,
    normalise_policy,
    refusal_message,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
VALID = "2027-01-01T00:00:00+00:00"
FP = "AB:" * 31 + "CD"


def ev(kind, actor="ana", detail="x"):
    return {"kind": kind, "actor": actor, "detail": detail, "at": "2026-03-01T10:00:00-06:00"}


ALL = {"accept": ["endpoint", "operator", "authenticated_mail"], "operators": 1}
FOUR_EYES = {"accept": ["operator"], "operators": 2}
MAIL_ONLY = {"accept": ["authenticated_mail"]}
NO_MAIL = {"accept": ["endpoint", "operator"], "operators": 1}

CASES = [
    # (policy, evidence, approved, satisfied)
    (ALL, [], False, []),
    (ALL, [ev("claim")], False, []),  # a claim never approves
    (ALL, [ev("claim"), ev("claim", "bob")], False, []),
    (ALL, [ev("seed")], False, []),  # nor does a seed
    (ALL, [ev("authenticated_mail")], True, ["authenticated_mail"]),
    (ALL, [ev("endpoint")], True, ["endpoint"]),
    (ALL, [ev("operator")], True, ["operator"]),
    (ALL, [ev("claim"), ev("operator"), ev("endpoint")], True, ["endpoint", "operator"]),
    (NO_MAIL, [ev("authenticated_mail")], False, []),  # not accepted by this provider's policy
    (MAIL_ONLY, [ev("authenticated_mail")], True, ["authenticated_mail"]),
    (MAIL_ONLY, [ev("operator"), ev("endpoint")], False, []),
    (FOUR_EYES, [ev("operator", "ana")], False, []),
    (FOUR_EYES, [ev("operator", "ana"), ev("operator", "ana", "otra vez")], False, []),  # same person twice: one
    (FOUR_EYES, [ev("operator", "ana"), ev("operator", "luis")], True, ["operator"]),
    ({"accept": ["operator"], "operators": "2"}, [ev("operator", "ana"), ev("operator", "luis")], True, ["operator"]),
    (None, [ev("endpoint")], True, ["endpoint"]),  # the default policy
]


@pytest.mark.parametrize("policy, evidence, approved, satisfied", CASES)
def test_policy_table(policy, evidence, approved, satisfied):
    result = evaluate(policy, evidence, not_after=VALID, now=NOW)
    assert result.approved is approved and result.satisfied == satisfied
    accepted = normalise_policy(policy)["accept"]
    assert result.missing == [k for k in accepted if k not in satisfied]


def test_expired_certificate_is_never_approved():
    result = evaluate(ALL, [ev("endpoint"), ev("operator")], not_after="2026-02-28T23:59:59+00:00", now=NOW)
    assert result.expired and not result.approved and result.satisfied == ["endpoint", "operator"]
    text = refusal_message("renapo", FP, "CN=Old", result, [], "2026-02-28T23:59:59+00:00")
    assert "expired on 2026-02-28T23:59:59+00:00" in text and "never approved" in text
    assert is_expired(datetime(2026, 3, 1, 12, 0, tzinfo=UTC), NOW)  # the boundary instant is expired
    assert not is_expired("2026-03-01T06:00:01-06:00", NOW)  # offsets compare as instants


@pytest.mark.parametrize("policy, error", [
    ({"accept": []}, "accepts no kind"),
    ({"accept": ["claim"]}, "never evidence"),
    ({"accept": ["seed", "operator"]}, "never evidence"),
    ({"accept": ["telepathy"]}, "unknown evidence kind"),
    ({"accept": ["operator"], "operators": 0}, "operators must be"),
    ({"accept": ["operator"], "operators": True}, "operators must be"),
    ({"accept": ["operator"], "operators": "dos"}, "operators must be"),
    ({"accept": ["operator"], "quorum": 2}, "unknown key"),
])
def test_bad_policies_are_refused(policy, error):
    with pytest.raises(PolicyError, match=error):
        normalise_policy(policy)


def test_policy_defaults_and_string_accept():
    assert normalise_policy(None) == DEFAULT_POLICY
    assert normalise_policy({"accept": "endpoint"}) == {"accept": ["endpoint"], "operators": 1}
    assert normalise_policy({"operators": 2})["accept"] == ["endpoint", "operator", "authenticated_mail"]


def test_refusal_lists_evidence_missing_and_how():
    evidence = [ev("claim", "intake", "carta del correo <x@renapo.example>"), ev("operator", "ana", "oficio 123")]
    result = evaluate({"accept": ["endpoint", "operator", "authenticated_mail"], "operators": 2}, evidence,
                      not_after=VALID, now=NOW)
    text = refusal_message("renapo", FP, "CN=RENAPO CA 2026", result, evidence, VALID)
    assert text.startswith(f"trust anchor {FP} ('CN=RENAPO CA 2026') of renapo is not approved")
    assert "claim by intake" in text and "is a claim, never evidence" in text
    assert "operator by ana" in text and "1 of 2 distinct operators" in text
    assert "Missing (any one of these suffices)" in text
    for kind in ("endpoint", "operator", "authenticated_mail"):
        assert f"  - {kind}: " in text
    assert "four eyes: 2 DIFFERENT people" in text and "recorded so far by ana" in text
    assert "DKIM" in text and "live endpoint" in text and "signed oficio" in text
    none = refusal_message("sat", FP, "CN=X", evaluate(MAIL_ONLY, [], now=NOW), [])
    assert "Evidence recorded: none." in none and "  - endpoint" not in none


def test_unaccepted_evidence_is_marked():
    evidence = [ev("authenticated_mail")]
    result = evaluate(NO_MAIL, evidence, now=NOW)
    assert "policy does not accept it" in refusal_message("renapo", FP, "CN=X", result, evidence)


def test_commands_for_each_missing_kind():
    lines = commands("renapo", FP, ["operator", "endpoint", "authenticated_mail"], certificate="/srv/renapo_ws.pem")
    approve = ("ansible-playbook playbooks/anchor.yml -e provider=renapo -e op=approve "
               "-e certificate=/srv/renapo_ws.pem -e operator=<you>")
    assert lines[0].startswith(f"ansible-playbook playbooks/anchor.yml -e provider=renapo -e fingerprint={FP} "
                               "-e operator=<you> -e channel=oficio")
    assert lines[0].endswith(f"then: {approve}") and lines[1].startswith(approve)
    assert lines[2].startswith("ansible-playbook playbooks/intake.yml")
    assert commands("sat", FP, []) == []
    assert "-e certificate=<delivered certificate file>" in commands("sat", FP, ["endpoint"])[0]


@pytest.mark.parametrize("given", [
    "ab:" * 31 + "cd", "SHA256 Fingerprint=" + FP, "sha256:" + ("AB" * 31 + "CD"), ("ab" * 31 + "cd").upper(),
])
def test_canonical_fingerprint(given):
    assert canonical_fingerprint(given) == FP


@pytest.mark.parametrize("bad", ["", None, "AB:CD", "zz" * 32])
def test_canonical_fingerprint_refuses(bad):
    with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
        canonical_fingerprint(bad)
