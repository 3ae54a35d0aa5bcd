"""Expiry monitoring: days left of the certificates hosts trust and present and of what RENAPO/SAT present live,
the alert thresholds each one crosses, the dedupe key of a crossing and the scan's summary table.

Standard library only: the file scan runs on the managed hosts (Debian's /usr/bin/python3), next to cert_files.

Events and crossings. A certificate approaching its end is one *event*, `expiry:<service>:<sha256 hex>` (never the
host: one certificate held by several hosts is one event): the scan opens one ticket per event (its `event_key`)
listing every host that holds the certificate. Each *crossing* of a threshold, `expiry:<service>:<sha256
hex>:<threshold>`, sends one notice, recorded on the event's ticket under that key, so rerunning the scan finds the
ticket and sends nothing again.

Renewal. A certificate is *renewed* on a holder (a host's file, or a live endpoint) when that same file holds a
successor: a certificate of the same subject CN that expires later and crosses no threshold. A renewed row is shown
(RENEWED) but never alerts. `resolutions` closes an open event when no holder still has the certificate without its
successor (renewed, removed, or no longer presented) and every host of its ticket was scanned, or when the
approved-anchor registry retired the certificate.

Trust drift (DESIGN.md §2): what a host trusts must come only from the approved-anchor registry. `trust_drift`
compares the anchors each trust file holds with the fingerprints the registry approves for its provider and reports
both directions (held but not approved; approved but missing). Drift is reported, never ticketed: the next rollout
rebuilds the bundle from the registry and removes it.
"""
from __future__ import annotations

import datetime as dt
import re

from ansible.module_utils.cert_files import parse_certificate, pem_certificates
from ansible.module_utils.pki_format import fingerprint_text
from ansible.module_utils.tls_endpoint import (  # pylint: disable=unused-import  # split_endpoint re-exported
    presented_chain,
    split_endpoint,  # noqa: F401 - re-exported
)

DEFAULT_THRESHOLDS = (30, 15, 7, 2)
EXPIRED = 0  # the threshold of a certificate already past not_after
_DAY = dt.timedelta(days=1)


def thresholds(values=None):
    """Thresholds in days, largest first, without duplicates; each a positive integer."""
    values = DEFAULT_THRESHOLDS if values is None else values
    out = set()
    for v in values:
        if isinstance(v, bool) or not str(v).strip().isdigit() or int(v) < 1:
            raise ValueError("threshold %r is not a positive number of days" % (v,))
        out.add(int(v))
    if not out:
        raise ValueError("at least one threshold is needed")
    return sorted(out, reverse=True)


def days_left(not_after, now):
    """Whole days until not_after, rounded down: 9 days 23 hours is 9; one second past not_after is -1."""
    return (not_after - now) // _DAY


def crossed(days, limits):
    """The most urgent threshold `days` has reached (EXPIRED below zero), or None while above every one."""
    if days < 0:
        return EXPIRED
    reached = [t for t in limits if days <= t]
    return min(reached) if reached else None


def event_key(service, sha256):
    """Ticket event key of a certificate approaching its end: one per service and certificate, never per host."""
    return "expiry:%s:%s" % (service, sha256.replace(":", "").lower())


def dedupe_key(service, sha256, threshold):
    """Notice key of one crossing: one per service, certificate and threshold."""
    return "%s:%d" % (event_key(service, sha256), threshold)


def parse_event_key(key):
    """(service, fingerprint in the rows' form) of an event key, or None when it is not an expiry event."""
    parts = str(key or "").split(":")
    if len(parts) != 3 or parts[0] != "expiry" or not re.fullmatch(r"[0-9A-Fa-f]{64}", parts[2]):
        return None
    return parts[1], fingerprint_text(parts[2])


def parse_time(value):
    """ISO 8601 (naive means UTC) or None for now."""
    if not value:
        return dt.datetime.now(dt.UTC)
    t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def record(info, now, limits, *, host, service, role, source, position):
    """One certificate's row: where it is, what it is, how long it has left."""
    days = days_left(info.not_after, now)
    threshold = crossed(days, limits)
    return {
        "host": host, "service": service, "role": role, "source": source, "position": position,
        "subject_cn": info.subject_cn, "issuer_cn": info.issuer_cn, "serial_number": info.serial_hex,
        "sha256": info.fingerprint, "not_after": info.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_left": days, "threshold": threshold,
        "status": "ok" if threshold is None else "expired" if threshold == EXPIRED else "expiring",
    }


# ---------------------------------------------------------------- reading certificates

def file_certificates(path):
    """CertInfo of each certificate in a PEM bundle or a DER file; other PEM blocks (keys) are never read out."""
    with open(path, "rb") as fh:
        data = fh.read()
    if b"-----BEGIN " in data:
        certs = [info for _block, info in pem_certificates(data)]
        if not certs:
            raise ValueError("no certificate in the PEM file")
        return certs
    return [parse_certificate(data)]


# ---------------------------------------------------------------- scans

def _problem(host, source, msg, service=None):
    problem = {"host": host, "source": source, "problem": msg}
    if service:
        problem["service"] = service  # which provider's certificates could not be read (renewal stays unproven)
    return problem


def scan_files(files, host, now, limits):
    """Rows for each certificate in each file; an unreadable file is a problem row, never an exception."""
    rows, problems = [], []
    for f in files:
        try:
            certs = file_certificates(f["path"])
        except FileNotFoundError:
            problems.append(_problem(host, f["path"], "file not found", f["service"]))
            continue
        except (OSError, ValueError) as exc:
            problems.append(_problem(host, f["path"], "unreadable: %s" % exc, f["service"]))
            continue
        rows += [record(c, now, limits, host=host, service=f["service"], role=f.get("role") or "trusts",
                        source=f["path"], position=i) for i, c in enumerate(certs, 1)]
    return rows, problems


def scan_endpoints(endpoints, now, limits, timeout=10.0):
    """Rows for each certificate each endpoint presents now; a failed handshake is a problem row."""
    rows, problems = [], []
    for e in endpoints:
        try:
            ders = presented_chain(e["endpoint"], e.get("server_name"), timeout)
            certs = [parse_certificate(d) for d in ders]
        except (OSError, ValueError) as exc:
            problems.append(_problem(e["endpoint"], e["endpoint"], "TLS handshake failed: %s" % exc, e["service"]))
            continue
        rows += [record(c, now, limits, host=e["endpoint"], service=e["service"], role="live",
                        source=e["endpoint"], position=i) for i, c in enumerate(certs, 1)]
    return rows, problems


# ---------------------------------------------------------------- trust drift against the approved-anchor registry

SEED_COMMAND = "playbooks/anchor.yml -e op=seed -e provider=%s"


def fingerprint(value):
    """The rows' form of a SHA-256 fingerprint (pki_format.fingerprint_text: upper-case colon hex) from any usual
    spelling or from a PEM text holding one certificate; raises ValueError naming the defect."""
    return fingerprint_text(str(value or ""))


def approved_fingerprints(approved):
    """{provider: set of fingerprints} from {provider: [fingerprint or PEM]} (trust_anchor_info's `approved_pems`
    can be passed as they are); raises ValueError naming the provider of a bad entry."""
    if not isinstance(approved, dict):
        raise ValueError("approved must map each provider to its approved fingerprints, not %s"
                         % type(approved).__name__)
    out = {}
    for provider, values in approved.items():
        if values is None:
            values = []
        if isinstance(values, str) or not isinstance(values, (list, tuple, set)):
            raise ValueError("approved[%s] must be a list of fingerprints" % provider)
        try:
            out[str(provider)] = {fingerprint(v) for v in values}
        except ValueError as exc:
            raise ValueError("approved[%s]: %s" % (provider, exc)) from None
    return out


def trust_drift(rows, approved):
    """Compare what each host's trust files hold (rows with role `trusts`) with the registry.

    `approved` maps provider -> the fingerprints the registry approves (or PEMs; see `approved_fingerprints`). A
    provider ABSENT from it has no registry entry at all (never seeded): flagging every anchor would only be noise,
    so it gets one `registry_empty` entry instead. A provider present with an empty list has entries but approves
    none: everything its hosts hold is drift. Each trust file is compared on its own (the service reads one file).

    Returns (drift, registry_empty): drift entries {kind: held_not_approved | approved_missing, host, service,
    path, fingerprint, subject (CN), not_after}, sorted by host, service, path; registry_empty entries {service,
    hosts, message}."""
    approved = approved_fingerprints(approved)
    files = {}
    for r in rows:
        if r["role"] == "trusts":
            held = files.setdefault((r["host"], r["service"], r["source"]), {})
            held.setdefault(fingerprint(r["sha256"]), r)
    drift, empty = [], {}
    for (host, service, path), held in sorted(files.items()):
        if service not in approved:
            empty.setdefault(service, set()).add(host)
            continue
        for fp, r in sorted(held.items()):
            if fp not in approved[service]:
                drift.append({"kind": "held_not_approved", "host": host, "service": service, "path": path,
                              "fingerprint": fp, "subject": r["subject_cn"], "not_after": r["not_after"]})
        for fp in sorted(approved[service] - set(held)):
            drift.append({"kind": "approved_missing", "host": host, "service": service, "path": path,
                          "fingerprint": fp, "subject": None, "not_after": None})
    registry_empty = [{"service": s, "hosts": sorted(h),
                       "message": "registry empty for %s: seed it (%s)" % (s, SEED_COMMAND % s)}
                      for s, h in sorted(empty.items())]
    return drift, registry_empty


def drift_lines(drift, registry_empty=()):
    """The table's drift section: a heading, one DRIFT line per host and anchor, one line per empty registry."""
    held = [d for d in drift if d["kind"] == "held_not_approved"]
    heading = "TRUST DRIFT against the approved-anchor registry: %s" % (
        "%d held but not approved, %d approved but missing" % (len(held), len(drift) - len(held)) if drift
        else "none")
    lines = [heading]
    for d in drift:
        if d["kind"] == "held_not_approved":
            lines.append("DRIFT %s %s held, not approved: %s CN=%s not_after %s in %s" % (
                d["host"], d["service"], d["fingerprint"], d["subject"] or "-", d["not_after"], d["path"]))
        else:
            lines.append("DRIFT %s %s approved, missing: %s from %s" % (
                d["host"], d["service"], d["fingerprint"], d["path"]))
    lines += ["REGISTRY %s (hosts: %s)" % (e["message"], ", ".join(e["hosts"])) for e in registry_empty]
    return lines


# ---------------------------------------------------------------- renewal and the events it closes

def mark_renewed(rows):
    """Mark each alerting row whose file (or endpoint) also holds its successor - same service, role and subject
    CN, a later not_after, no threshold crossed - with `renewed_by` (the successor's fingerprint) and status
    `renewed`; returns the rows. A row without a successor gets `renewed_by` None."""
    holders = {}
    for r in rows:
        holders.setdefault((r["host"], r["service"], r["role"], r["source"]), []).append(r)
    for held in holders.values():
        for r in held:
            r.setdefault("renewed_by", None)
            if r["threshold"] is None or not r["subject_cn"]:
                continue
            successors = [s for s in held if s["subject_cn"] == r["subject_cn"] and s["threshold"] is None
                          and s["not_after"] > r["not_after"]]
            if successors:
                r["renewed_by"] = max(successors, key=lambda s: s["not_after"])["sha256"]
                r["status"] = "renewed"
    return rows


def resolutions(rows, problems, tickets, retired=None):
    """Which open expiry tickets the scan resolves, each {ticket_id, event_key, reason} (reason in Spanish).

    `tickets` are open tickets with an `event_key` (service_ticket_info's rows; other tickets are ignored);
    `retired` maps provider -> fingerprints the registry retired. A ticket is resolved when the registry retired its
    certificate, or when no row still holds the certificate without a successor (see `mark_renewed`), no host of the
    ticket failed to be scanned, and no endpoint or file of its provider was unreadable (the certificate could be
    there)."""
    retired = approved_fingerprints(retired or {})
    mark_renewed(rows)
    out = []
    for t in tickets:
        parsed = parse_event_key(t.get("event_key"))
        if parsed is None:
            continue
        service, fp = parsed
        hosts = list(t.get("hosts") or ())
        if fp in retired.get(service, ()):
            out.append({"ticket_id": t["id"], "event_key": t["event_key"],
                        "reason": "el certificado %s fue retirado del registro de anclas aprobadas de %s; la "
                                  "siguiente actualización lo quita de los servidores" % (fp[:11], service)})
            continue
        holding = sorted({r["host"] for r in rows if r["service"] == service and fingerprint(r["sha256"]) == fp
                          and r.get("renewed_by") is None})
        unknown = [p for p in problems if p["host"] in hosts or p.get("service") == service]
        if holding or unknown:
            continue
        renewed = sorted({r["host"] for r in rows if r["service"] == service and fingerprint(r["sha256"]) == fp})
        gone = [h for h in hosts if h not in renewed]
        parts = []
        if renewed:
            parts.append("renovado en %s (tiene%s su sucesor)" % (", ".join(renewed), "n" if len(renewed) > 1 else ""))
        if gone:
            parts.append("ya no está en %s" % ", ".join(gone))
        out.append({"ticket_id": t["id"], "event_key": t["event_key"],
                    "reason": "certificado %s por vencer renovado en todos los servidores: %s" % (
                        fp[:11], "; ".join(parts) or "ningún servidor ni proveedor lo presenta ya")})
    return out


# ---------------------------------------------------------------- summary

def alerts(rows):
    """One alert per crossing (service, certificate, threshold), naming every host and endpoint that holds it
    without its successor (a renewed row never alerts); `event` is the certificate's event key (its ticket)."""
    grouped = {}
    for r in sorted(rows, key=lambda r: (r["days_left"], r["host"], r["source"], r["position"])):
        if r["threshold"] is None or r.get("renewed_by"):
            continue
        key = dedupe_key(r["service"], r["sha256"], r["threshold"])
        a = grouped.setdefault(key, {
            "key": key, "event": event_key(r["service"], r["sha256"]), "service": r["service"],
            "threshold": r["threshold"], "status": r["status"],
            "days_left": r["days_left"], "not_after": r["not_after"], "serial_number": r["serial_number"],
            "sha256": r["sha256"], "subject_cn": r["subject_cn"], "hosts": [], "endpoints": [], "sources": []})
        bucket = a["endpoints"] if r["role"] == "live" else a["hosts"]
        if r["host"] not in bucket:
            bucket.append(r["host"])
        a["sources"].append("%s:%s" % (r["host"], r["source"]) if r["role"] != "live" else r["source"])
    return list(grouped.values())


_COLUMNS = ("HOST", "SERVICE", "ROLE", "DAYS", "ALERT", "NOT AFTER", "SUBJECT CN", "SHA256", "SOURCE")


def table(rows, problems=(), drift=()):
    """Fixed-width text lines, most urgent first, then the trust drift section (`drift_lines`), then problems
    (unreadable file, failed handshake)."""
    body = [(r["host"], r["service"], r["role"], str(r["days_left"]),
             "-" if r["threshold"] is None else "RENEWED" if r.get("renewed_by")
             else "EXPIRED" if r["threshold"] == EXPIRED else "<=%dd" % r["threshold"],
             r["not_after"], r["subject_cn"] or "-", r["sha256"][:11], "%s#%d" % (r["source"], r["position"]))
            for r in sorted(rows, key=lambda r: (r["days_left"], r["host"], r["source"], r["position"]))]
    widths = [max(len(c[i]) for c in [_COLUMNS, *body]) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(c))).rstrip() for c in [_COLUMNS, *body]]
    lines += list(drift)
    lines += ["PROBLEM %s %s: %s" % (p["host"], p["source"], p["problem"]) for p in problems]
    return lines


def summarize(rows, problems=(), expected_hosts=(), approved=None, open_tickets=(), retired=None):
    """alerts, drift, resolved tickets, table and counts of a whole scan; an expected host with no row and no
    problem was not scanned. Trust drift is checked only when `approved` (see `trust_drift`) is given; open expiry
    tickets (`open_tickets`) are resolved as `resolutions` says."""
    problems = list(problems)
    seen = {r["host"] for r in rows} | {p["host"] for p in problems}
    problems += [_problem(h, "-", "not scanned (unreachable or failed)") for h in expected_hosts if h not in seen]
    mark_renewed(rows)
    found = alerts(rows)
    drift, empty = trust_drift(rows, approved) if approved is not None else ([], [])
    lines = drift_lines(drift, empty) if approved is not None else []
    resolved = resolutions(rows, problems, open_tickets, retired)
    lines += ["RESOLVED ticket #%s %s: %s" % (r["ticket_id"], r["event_key"], r["reason"]) for r in resolved]
    return {
        "alerts": found, "drift": drift, "registry_empty": empty, "resolved": resolved,
        "table": table(rows, problems, lines), "problems": problems,
        "counts": {"certificates": len(rows), "alerts": len(found),
                   "expiring": sum(r["status"] == "expiring" for r in rows),
                   "expired": sum(r["status"] == "expired" for r in rows),
                   "renewed": sum(r["status"] == "renewed" for r in rows), "problems": len(problems),
                   "drift": len(drift), "resolved": len(resolved)},
    }
