# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one TLS chain fetch: what a live endpoint presents in its handshake, read with SNI, never verified.

Anchor evidence (cert_validation / trust_anchor) and expiry monitoring (expiry) both call `presented_chain`, so both
see the same certificates for the same endpoint. Stdlib only: it runs wherever expiry runs.
"""
import ipaddress
import re
import socket
import ssl

_ENDPOINT_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\s\[\]]+)):(?P<port>\d{1,5})$")


def split_endpoint(endpoint):
    """(host, port) of 'host:port' or '[v6]:port'; ValueError otherwise."""
    m = _ENDPOINT_RE.match(str(endpoint).strip())
    if not m or not 0 < int(m.group("port")) < 65536:
        raise ValueError("endpoint %r is not host:port" % (endpoint,))
    return m.group("v6") or m.group("host"), int(m.group("port"))


def is_ip(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def sni_for(host, server_name=None):
    """The SNI a handshake sends: server_name, else the host when it is a name; an IP address sends none (RFC 6066
    forbids it), so a name-based virtual host behind an IP needs server_name."""
    return server_name or (None if is_ip(host) else host)


def presented_chain(endpoint, server_name=None, timeout=10.0):
    """DER certificates the endpoint presents (leaf first), expired or untrusted included: the caller decides trust."""
    host, port = split_endpoint(endpoint)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # noqa: S503 - reading what is presented is the point; trust is decided later
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni_for(host, server_name)) as tls:
        public = getattr(tls, "get_unverified_chain", None)  # Python >= 3.13
        if public:
            return [bytes(c) for c in public()]
        private = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)  # 3.10-3.12
        chain = private() if private else None
        if chain:
            return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]
        return [tls.getpeercert(binary_form=True)]  # the leaf alone is the documented fallback
