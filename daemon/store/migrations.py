"""The store's schema, as an ordered list of migrations; PRAGMA user_version counts those applied."""

# Sender, loop key and group are set when a mail is decided: the index entries of undecided mail (NULL) were
# written at ingest only to be moved at the decision, so these indexes hold decided mail only. Each commit of
# a mail wrote 12 pages to the WAL, now 9 (bench/README.md, "Fewer pages and fewer fsyncs a mail"). The same
# text is PostgreSQL's migration 4 (postgres_schema.py).
DECIDED_MAIL_INDEXES = """
    DROP INDEX escalations_sender;
    CREATE INDEX escalations_sender ON escalations(sender_key, created_at) WHERE sender_key IS NOT NULL;
    DROP INDEX escalations_sender_loop;
    CREATE INDEX escalations_sender_loop ON escalations(sender_key, loop_key) WHERE sender_key IS NOT NULL;
    DROP INDEX escalations_group;
    CREATE INDEX escalations_group ON escalations(group_id) WHERE group_id IS NOT NULL
    """

MIGRATIONS: tuple[str, ...] = (
    # 1: messages, their escalation, and its steps.
    """
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        identity TEXT NOT NULL UNIQUE,
        message_id TEXT,
        sha256 TEXT NOT NULL,
        raw BLOB NOT NULL,
        size INTEGER NOT NULL,
        source TEXT NOT NULL,
        mail_from TEXT NOT NULL,
        rcpt_to TEXT NOT NULL,
        peer TEXT NOT NULL,
        helo TEXT NOT NULL,
        tls INTEGER NOT NULL,
        received_at REAL NOT NULL,
        deliveries INTEGER NOT NULL,
        last_delivery_at REAL NOT NULL
    );
    CREATE TABLE escalations (
        message_pk INTEGER PRIMARY KEY REFERENCES messages(id),
        dedup_key TEXT NOT NULL,
        state TEXT NOT NULL,
        subject TEXT,
        sender TEXT,
        ticket_id INTEGER,
        incident_url TEXT,
        paged_at REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX escalations_state ON escalations(state);
    CREATE TABLE steps (
        message_pk INTEGER NOT NULL REFERENCES messages(id),
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        result TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (message_pk, name)
    );
    CREATE INDEX steps_due ON steps(state, next_attempt_at);
    """,
    # 2: the policy's verdict, kept with the escalation it decided.
    """
    ALTER TABLE escalations ADD COLUMN verdict TEXT;
    ALTER TABLE escalations ADD COLUMN category TEXT;
    ALTER TABLE escalations ADD COLUMN severity TEXT;
    ALTER TABLE escalations ADD COLUMN support_window TEXT;
    ALTER TABLE escalations ADD COLUMN suppressed_reason TEXT
    """,
    # 3: deduplication: conversations, incident groups and storms.
    """
    CREATE TABLE incident_groups (
        id INTEGER PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        dedup_key TEXT NOT NULL,
        problem_pk INTEGER NOT NULL REFERENCES messages(id),
        category TEXT,
        severity TEXT,
        opened_at REAL NOT NULL,
        last_report_at REAL NOT NULL,
        reports INTEGER NOT NULL
    );
    CREATE INDEX incident_groups_fingerprint ON incident_groups(fingerprint, last_report_at);
    ALTER TABLE escalations ADD COLUMN group_id INTEGER REFERENCES incident_groups(id);
    ALTER TABLE escalations ADD COLUMN relation TEXT;
    ALTER TABLE escalations ADD COLUMN relation_reason TEXT;
    ALTER TABLE escalations ADD COLUMN parent_pk INTEGER REFERENCES messages(id);
    ALTER TABLE escalations ADD COLUMN target_ticket_id INTEGER;
    ALTER TABLE escalations ADD COLUMN page_key TEXT;
    ALTER TABLE escalations ADD COLUMN sender_key TEXT;
    CREATE INDEX escalations_sender ON escalations(sender_key, created_at);
    CREATE INDEX escalations_group ON escalations(group_id);
    CREATE INDEX messages_message_id ON messages(message_id)
    """,
    # 4: Zendesk's encoded ids ("[7ZVQ3M-J7K4]") learnt from replies, to the escalation holding the ticket.
    """
    CREATE TABLE encoded_ids (
        encoded_id TEXT PRIMARY KEY,
        message_pk INTEGER NOT NULL REFERENCES messages(id)
    )
    """,
    # 5: where IMAP intake stands in each mailbox: a UIDVALIDITY change means the UIDs start over.
    """
    CREATE TABLE imap_mailboxes (
        account TEXT PRIMARY KEY,
        uidvalidity INTEGER NOT NULL,
        last_uid INTEGER NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    # 6: the From address, read from the header block at ingest: whose turn it is to be decided
    # (a storm from one sender must not hold up another's mail) is known before the mail is parsed.
    """
    ALTER TABLE messages ADD COLUMN from_address TEXT
    """,
    # 7: the loop key (escalation/grouping.py): one sender's mails that differ only in counters join one incident.
    """
    ALTER TABLE escalations ADD COLUMN loop_key TEXT;
    CREATE INDEX escalations_sender_loop ON escalations(sender_key, loop_key)
    """,
    # 8: whose turn a mail is in, kept with its escalation: read from messages, it sat behind the raw
    # bytes (ALTER TABLE adds columns last), and each read walked the message's overflow pages; the
    # queries that order undecided mail by sender read hundreds of rows at a time.
    """
    ALTER TABLE escalations ADD COLUMN fair_key TEXT NOT NULL DEFAULT '';
    UPDATE escalations SET fair_key = (SELECT COALESCE(m.from_address, LOWER(m.mail_from), '')
                                       FROM messages m WHERE m.id = escalations.message_pk);
    CREATE INDEX escalations_state_fair_key ON escalations(state, fair_key)
    """,
    # 9: `emergencyd release`: when a suppressed or demoted mail was handed back to be decided without its demotion.
    """
    ALTER TABLE escalations ADD COLUMN released_at REAL
    """,
    # 10: the last good copy of the tenant directory read from Zendesk ([trust] directory_from_zendesk), so that
    # a restart during a Zendesk outage decides as before it.
    """
    CREATE TABLE tenant_directory (
        source TEXT PRIMARY KEY,
        fetched_at REAL NOT NULL,
        copy TEXT NOT NULL
    )
    """,
    # 11: a mail whose deciding keeps failing is stuck after a few tries, not retried for ever (a poison message).
    """
    ALTER TABLE escalations ADD COLUMN decide_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE escalations ADD COLUMN decide_error TEXT
    """,
    # 12: leases: which replica escalates (and holds the IMAP mailbox) while several share one database.
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL,
        acquired_at REAL NOT NULL
    )
    """,
    # 13: `emergencyd retry`: when an escalation's failed steps were last handed back to be tried again.
    """
    ALTER TABLE escalations ADD COLUMN retried_at REAL
    """,
    # 14: fewer index pages for each mail's commit (DECIDED_MAIL_INDEXES).
    DECIDED_MAIL_INDEXES,
)
