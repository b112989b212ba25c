"""The decide step's sender check: which header fields count for this envelope, and, when
`[trust] verify_dkim` is on, emergencyd's own DKIM verification with dkimpy.

DKIM verification is CPU (canonicalising the body) and DNS (the selector's key): it runs on
threads of its own, never on the event loop, and waits at most `dkim_timeout_seconds`. A
DNS failure or a timeout is `temperror`, never an exception. `dnsfunc` takes dkimpy's
signature, (name: bytes, timeout: float) -> TXT bytes or None; the daemon passes none and gets
`resolver_lookup`: `[trust] dkim_dns_server`, or the system's resolvers from /etc/resolv.conf.
Not dkimpy's own lookup, which reports a DNS timeout or a SERVFAIL as a missing key ("fail").
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from emergencyd.escalation.records import Envelope
from emergencyd.escalation.trust import TrustPolicy, assess, peer_trusted
from emergencyd.parsers.auth_results import DkimCheck, SenderTrust
from emergencyd.parsers.message import ParsedMessage

log = logging.getLogger("emergencyd.trust")
# dkimpy logs every failed signature at ERROR; the result is recorded on the verdict instead.
_DKIMPY_LOG = logging.getLogger("emergencyd.trust.dkimpy")
_DKIMPY_LOG.setLevel(logging.CRITICAL)

MAX_SIGNATURES = 5                  # a real mail carries one to three
MAX_DKIM_BYTES = 4 * 1024 * 1024    # beyond this the body hash costs more than it tells
DKIM_THREADS = 2
DnsFunc = Callable[..., bytes | None]
_pool: ThreadPoolExecutor | None = None


async def decide_trust(envelope: Envelope, parsed: ParsedMessage, policy: TrustPolicy,
                       read_raw: Callable[[], Awaitable[bytes]], *, dnsfunc: DnsFunc | None = None
                       ) -> SenderTrust | None:
    """The sender's trust for the decide step; None when trust is not configured."""
    dkim = None
    if needs_dkim_check(parsed, policy):
        if dnsfunc is None:
            dnsfunc = resolver_lookup(policy.dkim_dns_server)
        dkim = await check_dkim(await read_raw(), timeout=policy.dkim_timeout_seconds, dnsfunc=dnsfunc)
    return trust_with(envelope, parsed, policy, dkim)


def needs_dkim_check(parsed: ParsedMessage, policy: TrustPolicy) -> bool:
    """Only then does the sender's trust need more than the mail and its envelope (DNS, on threads)."""
    return policy.enabled and policy.verify_dkim and parsed.header("DKIM-Signature") is not None


def trust_with(envelope: Envelope, parsed: ParsedMessage, policy: TrustPolicy,
               dkim: DkimCheck | None) -> SenderTrust | None:
    """The sender's trust from the mail, its envelope and our own DKIM check if one was needed; pure."""
    if not policy.enabled:
        return None
    if policy.verify_dkim and dkim is None:
        dkim = DkimCheck("none", detail="no DKIM-Signature")
    headers_count = peer_trusted(envelope.source, envelope.peer, policy.trusted_relays)
    return assess(parsed.headers, policy, headers_count=headers_count, dkim=dkim)


async def check_dkim(raw: bytes, *, timeout: float, dnsfunc: DnsFunc | None = None) -> DkimCheck:
    """Every signature (up to MAX_SIGNATURES), off the loop, within `timeout` seconds."""
    if len(raw) > MAX_DKIM_BYTES:
        return DkimCheck("none", detail=f"not checked: the message is over {MAX_DKIM_BYTES} bytes")
    loop = asyncio.get_running_loop()
    work = partial(verify_signatures, raw, timeout=timeout, dnsfunc=dnsfunc)
    try:
        return await asyncio.wait_for(loop.run_in_executor(_threads(), work), timeout)
    except asyncio.TimeoutError:
        return DkimCheck("temperror", detail=f"no answer within {timeout:g} s")


def verify_signatures(raw: bytes, *, timeout: float, dnsfunc: DnsFunc | None = None) -> DkimCheck:
    """Blocking: the best result over the signatures; never raises."""
    try:
        import dkim
    except ImportError:
        return DkimCheck("none", detail="dkimpy is not installed")
    try:
        verifier = dkim.DKIM(raw, timeout=timeout, logger=_DKIMPY_LOG)
        count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    except Exception as exc:         # dkimpy refuses the message itself
        return DkimCheck("permerror", detail=_describe(exc))
    results, passed = [], []
    for index in range(min(count, MAX_SIGNATURES)):
        result, domain = _verify_one(dkim, verifier, index, dnsfunc)
        results.append(result)
        if result == "pass" and domain:
            passed.append(domain)
    for best in ("pass", "temperror", "fail", "permerror"):
        if best in results:
            return DkimCheck(best, tuple(dict.fromkeys(passed)),
                             detail="" if best == "pass" else ", ".join(dict.fromkeys(results)))
    return DkimCheck("none", detail="no DKIM-Signature")


def resolver_lookup(server: tuple[str, int] | None) -> DnsFunc:
    """dkimpy's TXT lookup, asked of the one resolver at (host, port), or of the system's resolvers
    (/etc/resolv.conf) when None; UDP, then TCP when truncated.

    Answers as dkimpy expects: the record's bytes, or None for a name without one (NXDOMAIN,
    no TXT, a name that cannot be asked), which dkimpy reports as a missing key: "fail". A
    timeout or a SERVFAIL (also a validating resolver's answer to bogus DNSSEC) raises
    dnspython's DNSException, which dkimpy lets through and _verify_one counts as "temperror".
    """
    import dns.exception
    import dns.name
    import dns.resolver

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            qname = dns.name.from_text(name.decode("ascii"))
        except (UnicodeDecodeError, dns.exception.DNSException):
            return None
        # No usable /etc/resolv.conf raises NoResolverConfiguration: "temperror", like a timeout.
        resolver = dns.resolver.Resolver(configure=server is None)
        if server is not None:
            resolver.nameservers, resolver.port = [server[0]], server[1]
        resolver.use_edns(0, 0, 1232)          # DNS Flag Day 2020's size: a 2048-bit key fits in UDP
        try:
            answer = resolver.resolve(qname, "TXT", lifetime=timeout, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(answer.rrset[0].strings) if answer.rrset else None
    return lookup


def _verify_one(dkim, verifier, index: int, dnsfunc: DnsFunc | None) -> tuple[str, str]:
    kwargs = {} if dnsfunc is None else {"dnsfunc": dnsfunc}
    try:
        ok = verifier.verify(idx=index, **kwargs)
    except dkim.DnsTimeoutError:
        return "temperror", ""
    except dkim.KeyFormatError:          # a broken key record (dkimpy answers False for a missing one)
        return "permerror", ""
    except dkim.ValidationError as exc:  # dkimpy raises (not returns False) on a changed body
        return ("fail" if "body hash mismatch" in str(exc) else "permerror"), ""
    except dkim.DKIMException:
        return "permerror", ""
    except Exception:                    # the DNS lookup itself failed (timeout, SERVFAIL, no route)
        return "temperror", ""
    domain = (verifier.domain or b"").decode("ascii", "replace").lower()
    return ("pass" if ok else "fail"), domain


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(DKIM_THREADS, thread_name_prefix="dkim")
    return _pool


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
