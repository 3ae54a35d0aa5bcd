"""Evidence policy of the approved-anchor registry (DESIGN.md §2): when a recorded anchor may become `approved`.

Pure code (no database, no Ansible import), so the rule is tested table by table; the ticket store applies it inside
its transaction and the modules print `commands()` next to the refusal.

An anchor is approved only on evidence from a channel the delivery e-mail cannot forge:
- `endpoint`: the provider's live endpoint presented a chain ending in it (TLS with SNI);
- `operator`: named operators recorded its fingerprint (signed oficio, telephone); `operators: 2` is four eyes and
  counts DISTINCT actors, so one person recording twice is still one;
- `authenticated_mail`: a delivery authenticated for the provider's domain (DKIM pass, aligned) states it.
A `claim` (the fingerprint in an unauthenticated e-mail) and a `seed` (today's hosts, recorded once by an operator)
are kept as history and never count for an approval.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from ansible.module_utils.pki_format import fingerprint_text

EVIDENCE_KINDS = ("endpoint", "operator", "authenticated_mail", "claim", "seed")
APPROVING_KINDS = ("endpoint", "operator", "authenticated_mail")
ANCHOR_STATES = ("pending", "approved", "retired")
DEFAULT_POLICY = {"accept": list(APPROVING_KINDS), "operators": 1}

# How each accepted kind is supplied, in words; the exact commands come from `commands()`.
HOW = {
    "endpoint": "the provider's live endpoint must present a certificate chain ending in this anchor (TLS, with the "
                "service's SNI name); approve again giving the endpoint once the provider serves its new certificate",
    "operator": "{operators} named operator(s) must record this fingerprint, read from the provider's signed oficio "
                "or confirmed by telephone with the provider",
    "authenticated_mail": "a delivery e-mail authenticated for the provider's domain (DKIM pass aligned with its "
                          "From:) whose letter states this fingerprint; the intake records it when such a mail arrives",
}
WHY_NOT = {
    "claim": "does not count: a fingerprint stated only in an unauthenticated e-mail is a claim, never evidence",
    "seed": "does not count for a new approval: seeding records what hosts held, it proves nothing",
}


class PolicyError(ValueError):
    """An evidence policy from inventory that cannot be applied."""


def normalise_policy(policy=None):
    """`{"accept": [...], "operators": n}` checked and completed with the defaults; raises PolicyError."""
    policy = dict(DEFAULT_POLICY if policy is None else policy)
    unknown = sorted(set(policy) - {"accept", "operators"})
    if unknown:
        raise PolicyError(f"unknown key(s) in the evidence policy: {', '.join(unknown)}; keys are accept, operators")
    accept = policy.get("accept", DEFAULT_POLICY["accept"])
    if isinstance(accept, str):
        accept = [accept]
    accept = list(dict.fromkeys(accept or ()))
    if not accept:
        raise PolicyError("the evidence policy accepts no kind of evidence: nothing could ever be approved; "
                          f"accept some of {', '.join(APPROVING_KINDS)}")
    never = [k for k in accept if k in ("claim", "seed")]
    if never:
        raise PolicyError(f"the evidence policy accepts {', '.join(never)}, which is never evidence "
                          "(anyone can mail a claim; a seed proves nothing)")
    bad = [k for k in accept if k not in APPROVING_KINDS]
    if bad:
        raise PolicyError(f"unknown evidence kind(s) {', '.join(map(str, bad))}; "
                          f"kinds are {', '.join(APPROVING_KINDS)}")
    raw = policy.get("operators", DEFAULT_POLICY["operators"])
    # Inventory may give "2" as a string; a bool is a mistake, not a count.
    countable = isinstance(raw, int) and not isinstance(raw, bool) or isinstance(raw, str) and raw.strip().isdigit()
    operators = int(raw) if countable else 0
    if operators < 1:
        raise PolicyError(f"operators must be a whole number >= 1, not {raw!r}")
    return {"accept": accept, "operators": operators}


def canonical_fingerprint(text):
    """SHA-256 fingerprint in the registry's form, openssl's ('AB:CD:...'); raises ValueError when not one."""
    return fingerprint_text(str(text or ""))


def _moment(value):
    if value is None or isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromisoformat(str(value))
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # certificate dates are UTC
    return moment


def is_expired(not_after, now=None):
    """True when a certificate valid until `not_after` (datetime or ISO 8601) is expired at `now`."""
    return _moment(not_after) <= (_moment(now) or datetime.now(UTC))


@dataclass
class Evaluation:
    """What the policy says about one anchor's evidence."""

    approved: bool
    satisfied: list = field(default_factory=list)  # accepted kinds the evidence satisfies
    missing: list = field(default_factory=list)  # accepted kinds not (yet) satisfied
    expired: bool = False
    operators: list = field(default_factory=list)  # distinct actors of operator evidence
    policy: dict = field(default_factory=dict)

    def as_dict(self):
        return {"approved": self.approved, "satisfied": list(self.satisfied), "missing": list(self.missing),
                "expired": self.expired, "operators": list(self.operators), "policy": dict(self.policy)}


def evaluate(policy, evidence, *, not_after=None, now=None):
    """Apply `policy` to `evidence` ([{kind, actor, ...}]) of one fingerprint; an expired certificate never passes."""
    policy = normalise_policy(policy)
    kinds = {e["kind"] for e in evidence}
    operators = sorted({e["actor"] for e in evidence if e["kind"] == "operator" and e.get("actor")})
    satisfied = []
    for kind in policy["accept"]:
        if kind == "operator" and len(operators) >= policy["operators"] or kind != "operator" and kind in kinds:
            satisfied.append(kind)
    expired = not_after is not None and is_expired(not_after, now)
    return Evaluation(approved=bool(satisfied) and not expired, satisfied=satisfied,
                      missing=[k for k in policy["accept"] if k not in satisfied], expired=expired,
                      operators=operators, policy=policy)


def _how(kind, evaluation):
    text = HOW[kind]
    if kind != "operator":
        return text
    wanted = evaluation.policy["operators"]
    text = text.format(operators=wanted)
    if wanted > 1:
        text += f" (four eyes: {wanted} DIFFERENT people)"
    if evaluation.operators:
        text += (f"; recorded so far by {', '.join(evaluation.operators)} ({len(evaluation.operators)} of {wanted}),"
                 " so the next one must be someone else")
    return text


def _note(item, evaluation):
    kind = item["kind"]
    if kind in WHY_NOT:
        return WHY_NOT[kind]
    if kind not in evaluation.policy["accept"]:
        return "does not count: this provider's policy does not accept it"
    if kind == "operator" and kind not in evaluation.satisfied:
        return f"{len(evaluation.operators)} of {evaluation.policy['operators']} distinct operators"
    return "counts"


def refusal_message(provider, fingerprint, subject, evaluation, evidence, not_after=None):
    """Why the anchor is not approved: the evidence there is, what is missing and how to supply each kind."""
    head = f"trust anchor {fingerprint} ('{subject}') of {provider} is not approved"
    if evaluation.expired:
        return (f"{head}: the certificate expired on {not_after}; an expired anchor is never approved "
                "(record the provider's current anchor instead)")
    lines = [f"{head}: no evidence from a channel the delivery e-mail cannot forge "
             f"(policy accepts {', '.join(evaluation.policy['accept'])})."]
    if evidence:
        lines.append("Evidence recorded:")
        lines += [f"  - {e['kind']} by {e.get('actor')} at {e.get('at')}: {e.get('detail')} ({_note(e, evaluation)})"
                  for e in evidence]
    else:
        lines.append("Evidence recorded: none.")
    lines.append("Missing (any one of these suffices):")
    lines += [f"  - {kind}: {_how(kind, evaluation)}" for kind in evaluation.missing]
    return "\n".join(lines)


def commands(provider, fingerprint, missing, *, certificate=None):
    """The exact commands that supply each missing kind of evidence and then approve (playbooks/anchor.yml)."""
    approve = (f"ansible-playbook playbooks/anchor.yml -e provider={provider} -e op=approve "
               f"-e certificate={certificate or '<delivered certificate file>'} -e operator=<you>")
    out = []
    for kind in missing:
        if kind == "operator":
            out.append(f"ansible-playbook playbooks/anchor.yml -e provider={provider} -e fingerprint={fingerprint} "
                       f"-e operator=<you> -e channel=oficio   # or -e channel=telefono; then: {approve}")
        elif kind == "endpoint":
            out.append(f"{approve}   # once the provider's endpoint presents it (endpoint and SNI name from "
                       "procedure_providers in inventory)")
        elif kind == "authenticated_mail":
            out.append("ansible-playbook playbooks/intake.yml   # after the provider re-sends its publication, "
                       "DKIM-signed by its own domain")
    return out
