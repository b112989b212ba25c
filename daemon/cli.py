"""The `emergencyd` command: run, check-config, inject, classify, status, show, retry, release, rearm, store copy,
hash-password."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Callable, Iterator

import shtab

from emergencyd.daemon.config.model import Config, ConfigError, load_config
from emergencyd.daemon.config.store import StoreBackend
from emergencyd.daemon.ops.logs import configure_logging
from emergencyd.daemon.ops.metrics import build_version
from emergencyd.daemon.ops.status import render_status, status_document
from emergencyd.daemon.store.backends import copy_into, database_errors, open_store, probe_store, store_exists
from emergencyd.daemon.store.core import Store
from emergencyd.daemon.store.errors import StoreError
from emergencyd.escalation.decider import injected
from emergencyd.escalation.directory import directory_line, kept_copy
from emergencyd.escalation.records import RearmOutcome, ReleaseOutcome, RetryOutcome

# Where the config is when --config does not say: $EMERGENCYD_CONFIG, then the packaged place, then here.
CONFIG_SEARCH = (Path("/etc/emergencyd/config.toml"), Path("config.toml"))
INJECT_BUSY_TIMEOUT_MS = 30_000
RETRY_COMMAND = "retry"
# The commands the on-call runs when something is wrong, maybe with the daemon stopped: they read the store and
# the policy, never call Zendesk or PagerDuty, and so need none of the daemon's credentials.
TOOLS = frozenset({"status", "show", "classify", RETRY_COMMAND, "release", "rearm", "inject", "store"})


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    if args.command == "hash-password":      # needs no config
        return cmd_hash_password(args)
    try:
        config = load_config(config_path(args.config), for_tools=args.command in TOOLS)
    except ConfigError as exc:
        print(f"emergencyd: config error: {exc}", file=sys.stderr)
        return 2
    try:
        return args.func(config, args)
    except StoreError as exc:
        print(f"emergencyd: {exc}", file=sys.stderr)
        return 3
    except database_errors(config.store) as exc:   # a damaged or lost store met by a read (status, inject)
        print(f"emergencyd: store {config.store.location}: {exc}", file=sys.stderr)
        return 3


def config_path(given: str | None, environ: dict[str, str] | None = None) -> Path:
    """--config, else $EMERGENCYD_CONFIG, else the first of CONFIG_SEARCH that exists (the last if none does)."""
    if given:
        return Path(given)
    from_env = (os.environ if environ is None else environ).get("EMERGENCYD_CONFIG", "")
    if from_env:
        return Path(from_env)
    return next((path for path in CONFIG_SEARCH if path.exists()), CONFIG_SEARCH[-1])


CONFIG_HELP = ("config file (default: $EMERGENCYD_CONFIG, else /etc/emergencyd/config.toml if it exists, "
               "else ./config.toml); before or after the command")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emergencyd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"emergencyd {build_version()}")
    # A static script from this parser: `emergencyd --print-completion bash > /etc/bash_completion.d/emergencyd`.
    shtab.add_argument_to(parser, ["--print-completion"])
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        # SUPPRESS: given after the command it counts, and not given it leaves the one before the command alone.
        p.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
        p.set_defaults(func=func)
        return p

    run = command("run", cmd_run, "Run the daemon in the foreground; logs go to stderr.")
    run.add_argument("--verbose", action="store_true", help="debug logging")
    check = command("check-config", cmd_check_config,
                    "Validate the config, and that its database and IMAP OAuth 2.0 grant work; exit 0 when they do.")
    check.add_argument("--offline", action="store_true",
                       help="check the config only: no PostgreSQL connection, no token asked of the provider")
    inject = command("inject", cmd_inject, "Submit .eml files through the same durable path as SMTP.")
    inject.add_argument("files", nargs="+", type=Path, metavar="MESSAGE.eml")
    inject.add_argument("--received-at", metavar="ISO-8601",
                        help="when the mail really arrived, for replaying saved mail (default: now)")
    explain = command("classify", cmd_classify,
                      "Explain the policy's decision for each message: one JSON object per line.")
    explain.add_argument("files", nargs="+", type=Path, metavar="MESSAGE.eml")
    explain.add_argument("--at", help="receive time, ISO-8601 (default: now; no offset means the policy's zone)")
    explain.add_argument("--text", action="store_true", help="human-readable output")
    explain.add_argument("--offline", action="store_true", help="do not ask the configured rspamd ([spam])")
    release = command("release", cmd_release,
                      "Decide a suppressed or demoted message again without its demotion (noise, spam, a "
                      "stranger's unmatched mail, a held page): its rules say whether it pages. The running "
                      "daemon takes it within a second.")
    release.add_argument("id", type=int, metavar="ID", help="the message's id, as `status` shows it")
    rearm = command("rearm", cmd_rearm, "Decide a stuck message again, its failed attempts forgotten (once the "
                    "cause in `status` is fixed). The running daemon takes it within a second.")
    rearm.add_argument("id", type=int, metavar="ID", help="the message's id, as `status` shows it")
    status = command("status", cmd_status, "Show escalations by state and the recent messages.")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--limit", type=_count, default=20,
                        help="how many recent messages (default 20; 0: the counts and incidents only)")
    show = command("show", cmd_show, "One message whole: envelope, headers, verdict, every step's attempts and "
                   "errors. Reads the store: works with the daemon stopped.")
    show.add_argument("id", type=int, metavar="ID", help="the message's id, as `status` shows it")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    retry = command(RETRY_COMMAND, cmd_retry,
                    "Try a message's failed steps again (after their cause is fixed: a revoked key, a deleted Zendesk "
                    "user). A running daemon takes them within a second, a stopped one at its start; each looks first "
                    "for what an earlier attempt did, so nothing is made twice.")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="?", metavar="ID", help="the message's id, as `status` shows it")
    which.add_argument("--failed", action="store_true", help="every failed message (received since --since)")
    retry.add_argument("--since", metavar="ISO-8601", help="with --failed: received at or after this time")
    store = sub.add_parser("store", help="Operations on the store itself.", description="Operations on the store.")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    copy = store_sub.add_parser(
        "copy", help="Copy a SQLite store into the PostgreSQL database of the config (a new one).",
        description="Copy a single host's SQLite store, every message with its id and state, into the PostgreSQL "
                    "database that the config's [store] names (backend = \"postgresql\"), which must hold no "
                    "mail yet. Stop the daemon that uses the SQLite store first.")
    copy.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    copy.add_argument("--from", dest="source", required=True, metavar="sqlite:PATH", help="the SQLite store")
    copy.add_argument("--to", dest="target", required=True, choices=["postgresql"],
                      help="the config's PostgreSQL database")
    copy.set_defaults(func=cmd_store_copy)
    hash_password = sub.add_parser(
        "hash-password", help="Print a line for smtp.auth_users_file; the password is read from stdin.",
        description="Print USER:HASH (scrypt, random salt) for smtp.auth_users_file. The password is read "
                    "from the terminal without echo, or as the first line of stdin.")
    hash_password.add_argument("user", help="the name the relay logs in with")
    return parser


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from emergencyd.daemon.ingest.smtp_auth import hash_password
    if not args.user or ":" in args.user or any(c.isspace() for c in args.user):
        print("emergencyd: the user name must be non-empty, without ':' or spaces", file=sys.stderr)
        return 2
    password = getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("emergencyd: empty password", file=sys.stderr)
        return 2
    print(f"{args.user}:{hash_password(password)}")
    return 0


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    from emergencyd.daemon.app import StartupError, run_daemon
    try:
        run_daemon(config)
    except StartupError as exc:
        print(f"emergencyd: {exc}", file=sys.stderr)
        return 4
    return 0


def cmd_check_config(config: Config, args: argparse.Namespace) -> int:
    mode = "dry run" if config.dry_run else "live"
    print(f"{config.source}: valid ({mode}; SMTP {config.smtp.listen}, "
          f"{len(config.smtp.recipients)} recipient(s); store {config.store.location})")
    print(f"tenant directory: {directory_line(config.policy.trust, None)}")
    offline = args.offline
    print(f"store {config.store.location}: not checked (--offline)" if offline and
          config.store.backend is StoreBackend.POSTGRESQL else probe_store(config.store))
    if config.imap.enabled and config.imap.oauth2 is not None:
        from emergencyd.daemon.ingest.oauth2_tokens import TokenError, probe_token
        described = f"imap OAuth 2.0 ({config.imap.oauth2.describe})"
        if offline:
            print(f"{described}: no token asked for (--offline)")
            return 0
        try:
            print(f"{described}: {probe_token(config.imap.oauth2, config.imap.username)}")
        except TokenError as exc:
            print(f"emergencyd: {described}: no access token ({exc.problem}: {exc.detail}); {exc.problem.advice}",
                  file=sys.stderr)
            return 1
    return 0


def cmd_inject(config: Config, args: argparse.Namespace) -> int:
    from emergencyd.daemon.ops.explain import receive_time
    try:
        received_at = receive_time(args.received_at, config).timestamp() if args.received_at else None
    except ValueError:
        print(f"emergencyd: --received-at {args.received_at!r} is not an ISO-8601 time", file=sys.stderr)
        return 2
    # Unlike an SMTP client, whose server retries a 451, `inject` has no one to retry for it:
    # it waits longer for a running daemon's writes before giving up.
    store = open_store(config.store, busy_timeout_ms=max(config.store.busy_timeout_ms, INJECT_BUSY_TIMEOUT_MS))
    failures = 0
    try:
        for path in args.files:
            try:
                raw = path.read_bytes()
            except OSError as exc:
                print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
                failures += 1
                continue
            envelope = injected(config.smtp.recipients, received_at or time.time())
            result = store.ingest(raw, envelope)
            word = "duplicate of message" if result.duplicate else "stored as message"
            print(f"{path}: {word} {result.message_pk}")
    finally:
        store.close()
    return 1 if failures else 0


def cmd_classify(config: Config, args: argparse.Namespace) -> int:
    from emergencyd.daemon.ops.explain import run_classify
    return run_classify(config, args.files, args.at, args.text, offline=args.offline)


def cmd_release(config: Config, args: argparse.Namespace) -> int:
    return _hand_back(config, args.id, Store.release, ReleaseOutcome.RELEASED,
                      "released; the daemon decides it again without its demotion "
                      "(`emergencyd status` shows the new decision)")


def cmd_rearm(config: Config, args: argparse.Namespace) -> int:
    return _hand_back(config, args.id, Store.rearm, RearmOutcome.REARMED,
                      "rearmed; the daemon tries to decide it again")


def _hand_back(config: Config, pk: int, change: Callable[[Store, int], StrEnum], done: StrEnum, said: str) -> int:
    """A store change that makes a message new again for the running daemon (release, rearm), or why not."""
    with _existing_store(config, busy_timeout_ms=max(config.store.busy_timeout_ms, INJECT_BUSY_TIMEOUT_MS)) as store:
        outcome = change(store, pk)
    if outcome is not done:
        print(f"emergencyd: message {pk}: {outcome}; nothing changed", file=sys.stderr)
        return 1
    print(f"message {pk}: {said}")
    return 0


@contextmanager
def _existing_store(config: Config, *, busy_timeout_ms: int | None = None) -> Iterator[Store]:
    """The store, for a command that reads or hands back what is there: exit 3 when there is none yet."""
    if not store_exists(config.store):
        raise StoreError(f"no store at {config.store.location} yet")
    store = open_store(config.store, busy_timeout_ms=busy_timeout_ms)
    try:
        yield store
    finally:
        store.close()


def cmd_show(config: Config, args: argparse.Namespace) -> int:
    from emergencyd.daemon.ops.show import render_show, show_document
    with _existing_store(config) as store:
        try:
            document = show_document(store, args.id)
        except KeyError:
            print(f"emergencyd: no message {args.id}", file=sys.stderr)
            return 1
    print(json.dumps(document, indent=2) if args.json else render_show(document))
    return 0


def cmd_retry(config: Config, args: argparse.Namespace) -> int:
    if args.id is None:
        return _retry_failed(config, args.since)
    return _hand_back(config, args.id, Store.retry, RetryOutcome.RETRIED,
                      "its failed steps are due again; `emergencyd show` follows them")


def _retry_failed(config: Config, since_text: str | None) -> int:
    from emergencyd.daemon.ops.explain import receive_time
    try:
        since = receive_time(since_text, config).timestamp() if since_text else 0.0
    except ValueError:
        print(f"emergencyd: --since {since_text!r} is not an ISO-8601 time", file=sys.stderr)
        return 2
    with _existing_store(config, busy_timeout_ms=max(config.store.busy_timeout_ms, INJECT_BUSY_TIMEOUT_MS)) as store:
        retried = [pk for pk in store.failed_since(since) if store.retry(pk) is RetryOutcome.RETRIED]
    print(f"{len(retried)} failed message(s) handed back" + (f": {', '.join(map(str, retried))}" if retried else ""))
    return 0


def cmd_store_copy(config: Config, args: argparse.Namespace) -> int:
    copied = copy_into(config.store, args.source, args.target)
    print(f"copied into {config.store.location}: " + ", ".join(f"{n} {table}" for table, n in copied.items()))
    return 0


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    with _existing_store(config) as store:
        document = status_document(store, limit=args.limit, dry_run=config.dry_run, tenant_directory=directory_line(
            config.policy.trust, kept_copy(store, config.policy.trust)))
    print(json.dumps(document, indent=2) if args.json else render_status(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
