"""parsers.noise: bounces, auto-replies, read receipts, ARF reports and loops
must never page; tenants' mail must.

Fixtures under tests/fixtures/noise are written for these tests, after the
shapes of real mail (Postfix/Exim/Exchange/DragonFly bounces, Exchange and
Lotus Notes auto-replies, an iso-8859-2 Polish auto-reply, ARF, MDN); the
name says the expected outcome: ``<kind>_*.eml`` or ``human_*.eml``.
"""
from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest

import emergencyd.parsers.noise as noise
from emergencyd.parsers.message import parse_message
from emergencyd.parsers.noise import NOISE_KINDS, RULES, Noise, detect_noise

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "noise"
OWN = ("emergency@example.org",)
OWN_HOSTS = ("emergencyd.example.org",)


def detect_file(name: str, *, mail_from: str | None = None, own_hostnames=OWN_HOSTS) -> Noise | None:
    parsed = parse_message((FIXTURES / name).read_bytes())
    return detect_noise(parsed, mail_from=mail_from, own_addresses=OWN, own_hostnames=own_hostnames)


def build(*headers: str, body: str = "Hello,\n\nthe API is down.\n", mail_from: str | None = None,
          own_hostnames=OWN_HOSTS) -> Noise | None:
    """detect_noise over a message made of ``headers`` (plus From/To/Date
    defaults when missing) and ``body``."""
    names = {h.split(":", 1)[0].lower() for h in headers}
    defaults = [
        ("from", "From: Tenant Ops <ops@tenant.example>"),
        ("to", "To: emergency@example.org"),
        ("date", "Date: Thu, 13 Mar 2025 10:00:00 +0000"),
        ("message-id", "Message-ID: <built@tenant.example>"),
    ]
    lines = [line for name, line in defaults if name not in names] + list(headers)
    raw = ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode("utf-8")
    return detect_noise(parse_message(raw), mail_from=mail_from, own_addresses=OWN, own_hostnames=own_hostnames)


def utf8_subject(text: str) -> str:
    return "Subject: =?utf-8?b?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


# ---------------------------------------------------------------------------
# Fixtures: kind and the evidence named in the reason
# ---------------------------------------------------------------------------

NOISE_FIXTURES = [
    # loops
    ("loop_x_loop.eml", "loop", ["X-Loop names emergency@example.org"]),
    ("loop_received_by_us.eml", "loop", ["Received", "by emergencyd.example.org"]),
    ("loop_from_own_address.eml", "loop", ["From is our own address emergency@example.org"]),
    # bounces, structural evidence
    ("bounce_postfix_dsn.eml", "bounce", ["Content-Type multipart/report; report-type=delivery-status"]),
    # Exchange: quoted, mixed-case report type, and Auto-Submitted: auto-replied
    ("bounce_exchange_auto_replied.eml", "bounce", ["report-type=delivery-status"]),
    # Exim: text/plain, Auto-Submitted: auto-replied, X-Failed-Recipients
    ("bounce_exim_failed_recipients.eml", "bounce", ["X-Failed-Recipients: noc@gone.example"]),
    ("bounce_ses_via_sns.eml", "bounce", ["Amazon SES", '"notificationType":"Bounce"']),
    # bounces, heuristic evidence
    ("bounce_dragonfly_bare_daemon.eml", "bounce", ["sender mailer-daemon", "MAILER-DAEMON sender"]),
    ("bounce_postmaster_human.eml", "bounce", ["sender postmaster@tenant.example", "postmaster sender is treated as a bounce"]),
    ("bounce_subject_system_administrator.eml", "bounce",
     ["subject 'Undeliverable: Re: Website down'", "sender name 'System Administrator'"]),
    # a bounce subject with Auto-Submitted and a null reverse path is a bounce, not an auto-reply
    ("bounce_german_subject_null_path.eml", "bounce",
     ["subject 'Unzustellbar: Re: Störung Rechenzentrum'", "null reverse path (Return-Path: <>)"]),
    ("bounce_null_path_only.eml", "bounce", ["null reverse path (Return-Path: <>)"]),
    # notices no header marks: a mail system's sender or a failure subject, with the notice's own wording
    ("notice_returned_mail_ordinary_sender.eml", "bounce",
     ["the subject names 'returned mail'", "opens with the wording 'failed recipients'"]),
    ("notice_antivirus_gateway_encoded_subject.eml", "bounce",
     ["sender symantec_antivirus_for_smtp_gateways@filter.partner.example", "'could not be delivered to'"]),
    ("notice_ndr_mailbox_batv_return_path.eml", "bounce",
     ["reverse path <prvs=0713a2b4c5=ndr@relay.hosting.example>", "'could not be delivered to'"]),
    ("notice_gateway_re_wrapper_french.eml", "bounce",
     ["the subject names 'non remis'", "opens with the wording 'n'a pas pu etre delivre'"]),
    ("notice_filter_keeps_subject_returns_original.eml", "bounce",
     ["opens with the wording 'message could not be delivered'", "returns a message/rfc822 part"]),
    # a mailing list's notices
    ("list_notice_unsubscribed.eml", "list_notice", ["a List-Id field", "'you have been unsubscribed'"]),
    ("list_notice_moderation_german.eml", "list_notice",
     ["sender betrieb-owner", "'wartet auf die freigabe durch den moderator'"]),
    # feedback reports and read receipts
    ("feedback_arf.eml", "feedback_report", ["report-type=feedback-report", "ARF"]),
    ("read_receipt_mdn.eml", "read_receipt", ["report-type=disposition-notification", "MDN"]),
    ("read_receipt_gelesen_subject.eml", "read_receipt",
     ["subject 'Gelesen: Re: Störung Rechenzentrum'", "Content-Class: urn:content-classes:mdn"]),
    # auto-replies
    # Return-Path: <> and Auto-Submitted, no bounce evidence: an RFC 3834 auto-reply
    ("auto_reply_exchange_ooo.eml", "auto_reply", ["Auto-Submitted: auto-generated"]),
    ("auto_reply_lotus_notes.eml", "auto_reply", ["subject 'AUTO: Smith, John is out of the office."]),
    ("auto_reply_polish_iso8859_2.eml", "auto_reply", ["subject '[Automatyczna odpowiedź] Re: Awaria serwera'"]),
    ("auto_reply_precedence_bulk_null_path.eml", "auto_reply", ["Precedence: bulk"]),
    ("auto_reply_rfc3834_parameters.eml", "auto_reply", ["Auto-Submitted: auto-replied"]),
    # a header decides even when the subject looks like a human reply
    ("auto_reply_x_autoreply.eml", "auto_reply", ["X-Autoreply: yes"]),
    ("auto_reply_mailing_list.eml", "auto_reply",
     ["mailing list", "Precedence: list", "List-Id: Ops announcements <ops-announce.lists.tenant.example>"]),
]

HUMAN_FIXTURES = [
    "human_plain_emergency.eml",
    "human_html_emergency.eml",
    # "I'm out of office tomorrow but our app is down" and "Undeliverable", "550" in the body
    "human_out_of_office_in_body.eml",
    # a tenant forwarding a bounce inline is reporting a problem
    "human_forwarded_bounce.eml",
    # ... or as an attachment (the DSN is inside message/rfc822)
    "human_forward_as_attachment.eml",
    # "RE: Automatic reply: ..." is a human answering an auto-reply (with X-Auto-Response-Suppress)
    "human_reply_to_auto_reply.eml",
    "human_auto_submitted_no.eml",
    # Outlook meeting mail carries X-Auto-Response-Suppress: All
    "human_outlook_meeting.eml",
    # a bounce-like subject without any machine signal (body wording is no signal)
    "human_delivery_failure_subject.eml",
    # the words of each notice above, in a tenant's own mail: a returned-mail subject with a pasted bounce,
    # a relay monitor's SMTP code, a list's moderation wording
    "human_our_mails_bounce_site_down.eml",
    "human_relay_monitor_alert.eml",
    "human_list_post_about_moderation.eml",
    # a notice forwarded without a word of one's own: the forwarded-bounce rule answers it with a ticket
    "human_forwarded_notice_without_words.eml",
    # ... nor is an attached message/rfc822
    "human_undeliverable_subject_with_attachment.eml",
]


@pytest.mark.parametrize(("name", "kind", "evidence"), NOISE_FIXTURES, ids=[n for n, _, _ in NOISE_FIXTURES])
def test_noise_fixture(name, kind, evidence):
    found = detect_file(name)
    assert found is not None, name
    assert found.kind == kind, found
    for needle in evidence:
        assert needle in found.reason, (needle, found.reason)


@pytest.mark.parametrize("name", HUMAN_FIXTURES)
def test_human_mail_is_not_noise(name):
    assert detect_file(name) is None


def test_every_fixture_is_covered_and_every_kind_has_one():
    names = {p.name for p in FIXTURES.glob("*.eml")}
    assert names == {n for n, _, _ in NOISE_FIXTURES} | set(HUMAN_FIXTURES)
    assert {kind for _, kind, _ in NOISE_FIXTURES} == set(NOISE_KINDS)


# ---------------------------------------------------------------------------
# The envelope sender and the own addresses / hostnames
# ---------------------------------------------------------------------------


def test_null_envelope_sender_is_a_bounce():
    found = build("Subject: Mail", mail_from="")
    assert found == Noise("bounce", "null reverse path (MAIL FROM:<>)")
    assert build("Subject: Mail", mail_from="<>").kind == "bounce"


def test_known_envelope_sender_overrides_return_path_header():
    """Over SMTP the envelope is the truth; a Return-Path header came from the sender."""
    assert detect_file("bounce_null_path_only.eml", mail_from="gw@carrier.example") is None
    assert detect_file("bounce_null_path_only.eml", mail_from=None).kind == "bounce"


def test_null_envelope_sender_with_auto_reply_evidence_is_an_auto_reply():
    found = build("Subject: Re: outage", "Auto-Submitted: auto-replied", mail_from="")
    assert found == Noise("auto_reply", "Auto-Submitted: auto-replied")
    found = build("Subject: Automatic reply: outage", mail_from="")
    assert found.kind == "auto_reply" and "subject 'Automatic reply: outage'" in found.reason


def test_null_envelope_sender_with_a_bounce_subject_and_auto_submitted_is_a_bounce():
    found = build("Subject: Undeliverable: outage", "Auto-Submitted: auto-replied", mail_from="")
    assert found.kind == "bounce"
    assert "subject 'Undeliverable: outage'" in found.reason and "MAIL FROM:<>" in found.reason


def test_received_loop_needs_the_hostname_exactly():
    assert detect_file("loop_received_by_us.eml", own_hostnames=()) is None
    assert detect_file("loop_received_by_us.eml", own_hostnames=("example.org",)) is None
    found = detect_file("loop_received_by_us.eml", own_hostnames=("EmergencyD.Example.org.",))
    assert found.kind == "loop"
    # the MX that delivered the mail is not "us"
    assert detect_file("human_plain_emergency.eml", own_hostnames=OWN_HOSTS) is None


def test_x_loop_naming_someone_else_is_not_our_loop():
    assert build("Subject: outage", "X-Loop: helpdesk@tenant.example") is None
    found = build("Subject: outage", "X-Loop: Platform Emergency <EMERGENCY@example.org>")
    assert found == Noise("loop", "X-Loop names emergency@example.org")


def test_no_own_addresses_disables_address_loops():
    parsed = parse_message((FIXTURES / "loop_from_own_address.eml").read_bytes())
    assert detect_noise(parsed, mail_from="emergency@example.org", own_addresses=()) is None


# ---------------------------------------------------------------------------
# Evidence details
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [
    'multipart/report; report-type=delivery-status; boundary="b"',
    'multipart/report; report-type="delivery-status"; boundary="b"',
    'Multipart/Report; Report-Type=Delivery-Status; boundary="b"',
    'multipart/report; boundary="b";\r\n\treport-type="DELIVERY-STATUS"',
])
def test_report_type_is_case_and_quote_insensitive(content_type):
    found = build("Subject: Returned", "MIME-Version: 1.0", "Content-Type: " + content_type,
                  body="--b\nContent-Type: text/plain\n\nfailed\n--b--\n")
    assert found == Noise("bounce", "Content-Type multipart/report; report-type=delivery-status")


def test_report_types_of_other_kinds():
    arf = build("Subject: report", "MIME-Version: 1.0",
                'Content-Type: multipart/report; report-type="Feedback-Report"; boundary="b"',
                body="--b\nContent-Type: text/plain\n\nabuse\n--b--\n")
    assert arf.kind == "feedback_report"
    mdn = build("Subject: Disposition notification", "MIME-Version: 1.0",
                "Content-Type: multipart/report; report-type=disposition-notification; boundary=b",
                body="--b\nContent-Type: text/plain\n\nshown\n--b--\n")
    assert mdn.kind == "read_receipt"


def test_report_parts_without_a_report_content_type():
    mixed = 'Content-Type: multipart/mixed; boundary="b"'
    dsn = build("Subject: notice", "MIME-Version: 1.0", mixed,
                body="--b\nContent-Type: text/plain\n\nx\n--b\nContent-Type: message/delivery-status\n\n"
                     "Final-Recipient: rfc822; a@b.example\nAction: failed\n--b--\n")
    assert dsn == Noise("bounce", "a message/delivery-status part")
    arf = build("Subject: notice", "MIME-Version: 1.0", mixed,
                body="--b\nContent-Type: text/plain\n\nx\n--b\nContent-Type: message/feedback-report\n\n"
                     "Feedback-Type: abuse\n--b--\n")
    assert arf == Noise("feedback_report", "a message/feedback-report part (ARF)")
    mdn = build("Subject: notice", "MIME-Version: 1.0", mixed,
                body="--b\nContent-Type: text/plain\n\nx\n--b\nContent-Type: message/disposition-notification\n\n"
                     "Disposition: manual-action/MDN-sent-manually; displayed\n--b--\n")
    assert mdn == Noise("read_receipt", "a message/disposition-notification part (MDN)")


def test_arf_from_postmaster_keeps_its_kind():
    found = build("From: postmaster@isp.example", "Subject: complaint", "MIME-Version: 1.0",
                  "Content-Type: multipart/report; report-type=feedback-report; boundary=b",
                  body="--b\nContent-Type: text/plain\n\nabuse\n--b--\n")
    assert found.kind == "feedback_report"


def test_exchange_ndr_header():
    found = build("Subject: Notice", "X-MS-Exchange-Message-Is-Ndr: ")
    assert found.kind == "bounce" and "X-MS-Exchange-Message-Is-Ndr" in found.reason


@pytest.mark.parametrize("sender", [
    "MAILER-DAEMON@mx.example.net", "Mailer-Daemon@mx.example.net", "postmaster@tenant.example",
    "POSTMASTER@tenant.example", "Mail Delivery Subsystem <MAILER-DAEMON>", "MAILER-DAEMON <>",
])
def test_daemon_and_postmaster_senders_are_bounces(sender):
    found = build("From: " + sender, "Subject: hello")
    assert found.kind == "bounce"
    assert "sender " in found.reason and "treated as a bounce" in found.reason


def test_bounce_subject_needs_a_second_signal():
    assert build("Subject: Undelivered Mail Returned to Sender") is None
    found = build("Subject: Undelivered Mail Returned to Sender", "Auto-Submitted: auto-replied")
    assert found == Noise("bounce", "subject 'Undelivered Mail Returned to Sender' with Auto-Submitted: auto-replied")
    found = build("From: Mail Delivery System <mds@mx.example.net>", "Subject: failure notice")
    assert found == Noise("bounce", "subject 'failure notice' with sender name 'Mail Delivery System'")
    found = build("From: no-reply@carrier.example", utf8_subject("メールエラー通知"))
    assert found.kind == "bounce" and "sender no-reply@carrier.example" in found.reason
    found = build("Return-Path: <MAILER-DAEMON@mx.example.net>", "From: admin@mx.example.net",
                  "Subject: Returned mail: see transcript for details")
    assert found.kind == "bounce" and "reverse path <mailer-daemon@mx.example.net>" in found.reason


def test_bounce_subject_with_returned_headers_part():
    found = build("From: Notifier <notify@gw.example.net>", "Subject: Delivery Notification: Delivery has failed",
                  "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b"',
                  body="--b\nContent-Type: text/plain\n\nfailed\n--b\nContent-Type: text/rfc822-headers\n\n"
                       "From: emergency@example.org\nSubject: outage\n--b--\n")
    assert found == Noise("bounce", "subject 'Delivery Notification: Delivery has failed' "
                                    "with a returned text/rfc822-headers part")


@pytest.mark.parametrize("subject", [
    "Undeliverable: Re: outage", "Undelivered Mail Returned to Sender",
    "Delivery Status Notification (Failure)", "Returned mail: User unknown",
    "Mail delivery failed: returning message to sender", "failure notice", "Delivery Failure",
    "Unzustellbar: Wartung", "Non remis : Panne", "Non recapitabile: Guasto",
    "No se puede entregar: Caída", "Onbestelbaar: storing", "Niedostarczalne: awaria",
])
def test_bounce_subjects(subject):
    found = build(utf8_subject(subject), mail_from="")
    assert found.kind == "bounce"
    assert found.reason.startswith(f"subject '{subject}' with null reverse path")


@pytest.mark.parametrize("value", [
    "auto-replied", "Auto-Replied", "auto-generated", "auto-notified",
    "auto-replied; owner-email=\"me@tenant.example\"", "(vacation) auto-replied", "AUTO-GENERATED (cron)",
])
def test_auto_submitted_other_than_no(value):
    found = build("Subject: hello", "Auto-Submitted: " + value)
    assert found.kind == "auto_reply"
    keyword = value.split(";")[0].replace("(vacation)", "").replace("(cron)", "").strip().lower()
    assert found.reason == f"Auto-Submitted: {keyword}"


@pytest.mark.parametrize("value", ["no", "No", " no (sent by a human)", ""])
def test_auto_submitted_no_is_not_noise(value):
    assert build("Subject: hello", "Auto-Submitted: " + value) is None


@pytest.mark.parametrize(("header", "reason"), [
    ("X-Autoreply: yes", "X-Autoreply: yes"),
    ("X-Autorespond: Thanks", "X-Autorespond: Thanks"),
    ("X-Autoresponse: 1", "X-Autoresponse: 1"),
    ("Precedence: bulk", "Precedence: bulk"),
    ("Precedence: junk", "Precedence: junk"),
    ("Precedence: auto_reply", "Precedence: auto_reply"),
    ("Precedence: list", "mailing list: Precedence: list"),
])
def test_auto_reply_headers(header, reason):
    assert build("Subject: hello", header) == Noise("auto_reply", reason)


@pytest.mark.parametrize("header", [
    "X-Auto-Response-Suppress: All",  # Outlook sets it on ordinary mail too
    "X-Auto-Response-Suppress: DR, RN, NRN, OOF, AutoReply",
    "X-Precedence: bulk",
    "X-Mailer: Autoresponder Pro 2.0",
    "X-Autoreply: no",
    "Precedence: first-class",
    "List-Id: <ops.lists.tenant.example>",  # a list header alone is not enough
    "Disposition-Notification-To: ops@tenant.example",  # asking for a receipt is not one
])
def test_hints_that_are_not_enough_alone(header):
    assert build("Subject: The API is down", header) is None


@pytest.mark.parametrize("subject", [
    "Automatic reply: outage", "Auto reply: outage", "Auto-Reply: outage", "Autoreply: outage",
    "AutoResponse: outage", "Out of Office: outage", "Out of the office", "Out of Office AutoReply: outage",
    "AUTO: Jane Doe is out of the office (returning 17.03.2025)",
    "Abwesenheitsnotiz: Störung", "Automatische Antwort: Störung",
    "Réponse automatique : panne", "Reponse automatique : panne", "Absence : panne",
    "Respuesta automática: caída", "Respuesta automatica: caida", "Fuera de la oficina: caída",
    "Risposta automatica: guasto", "Automatisch antwoord: storing",
    "Automatyczna odpowiedź: awaria", "[Automatyczna odpowiedz] awaria",
    "自動応答: 障害", "Resposta automática: falha", "Autosvar: driftstopp",
    "Automaattinen vastaus: häiriö", "Автоматический ответ: авария",
    "ＡＵＴＯＭＡＴＩＣ ＲＥＰＬＹ: outage",  # full-width forms
])
def test_auto_reply_subjects(subject):
    found = build(utf8_subject(subject))
    assert found == Noise("auto_reply", f"subject '{subject}'")


def test_auto_reply_subject_in_latin1_encoded_word():
    found = build("Subject: =?iso-8859-1?Q?R=E9ponse_automatique_:_panne?=")
    assert found == Noise("auto_reply", "subject 'Réponse automatique : panne'")


@pytest.mark.parametrize("subject", [
    "Re: Automatic reply: outage",  # a human answering an auto-reply
    "AW: Automatische Antwort: Störung",
    "Fwd: Out of Office: outage",
    "Fwd: Undeliverable: Invoice",
    "RE: Read: incident report",
    "Out of office tomorrow, but checkout is down now",
    "Absence of metrics in Grafana since 09:00",
    "Vacation planning tool returns 500",
    "Automation pipeline broken",
    "Read timeouts on the database",
    "Undeliverable mail piling up in our queue",  # no second signal
    "The autoreply of our helpdesk loops",
])
def test_human_subjects_are_not_noise(subject):
    assert build(utf8_subject(subject)) is None


@pytest.mark.parametrize("subject", ["Read: outage", "Gelesen: Störung", "Lu : panne", "Leído: caída", "Read receipt"])
def test_read_receipt_subjects_need_receipt_evidence(subject):
    assert build(utf8_subject(subject)) is None
    found = build(utf8_subject(subject), "Content-Class: urn:content-classes:MDN")
    assert found.kind == "read_receipt"
    assert f"subject '{subject}'" in found.reason and "Content-Class" in found.reason
    found = build(utf8_subject(subject), mail_from="")
    assert found.kind == "read_receipt" and "MAIL FROM:<>" in found.reason


def test_read_receipt_wording_in_the_body():
    found = build("Subject: Read: outage",
                  body="Your message\n\n  To: Ops\n  Subject: outage\n\nwas read on 13.03.2025 10:01.\n")
    assert found == Noise("read_receipt", "subject 'Read: outage' with read-notification wording in the body")


def test_list_id_named_in_reason():
    found = build("Subject: [ops] weekly", "Precedence: list", "List-Id: Ops <ops.lists.tenant.example>")
    assert found == Noise("auto_reply", "mailing list: Precedence: list with List-Id: Ops <ops.lists.tenant.example>")


def test_ses_delivery_notification_and_cloudwatch_alarm_are_not_noise():
    headers = ("From: AWS Notifications <no-reply@sns.amazonaws.com>", "Subject: AWS Notification Message",
               "x-amz-sns-message-id: 5a3b0e2c-9d7f-5b8e-bf01-0c1d2e3f4a5b")
    assert build(*headers, body='{"notificationType":"Delivery","delivery":{}}\n') is None
    alarm = ("From: AWS Notifications <no-reply@sns.amazonaws.com>",
             'Subject: ALARM: "api-5xx-rate" in EU (Frankfurt)', headers[2])
    assert build(*alarm, body="You are receiving this email because your Amazon CloudWatch Alarm ...\n") is None
    complaint = build(*headers, body='{"notificationType":"Complaint","complaint":{}}\n')
    assert complaint.kind == "feedback_report" and '"notificationType":"Complaint"' in complaint.reason


def test_reason_quotes_long_values_bounded():
    found = build(utf8_subject("Automatic reply: " + "x" * 500))
    assert found.kind == "auto_reply"
    assert len(found.reason) < 120 and found.reason.endswith("...'")


# ---------------------------------------------------------------------------
# The rule table and robustness
# ---------------------------------------------------------------------------


def test_rule_table_is_ordered_data():
    kinds = [kind for kind, _ in RULES]
    assert set(kinds) == set(NOISE_KINDS)
    first_seen = list(dict.fromkeys(kinds))
    assert first_seen == list(NOISE_KINDS)
    assert all(callable(predicate) and predicate.__name__ != "<lambda>" for _, predicate in RULES)
    # bounce evidence before auto-reply evidence; the bare null reverse path last
    names = [predicate.__name__ for _, predicate in RULES]
    assert names.index("bounce_subject") < names.index("auto_submitted_header")
    assert names.index("failed_recipients_header") < names.index("auto_submitted_header")
    assert RULES[-1] == ("bounce", noise.null_reverse_path)


def test_a_raising_predicate_is_skipped(monkeypatch):
    def broken(facts):
        raise RuntimeError("bug")

    monkeypatch.setattr(noise, "RULES", (("loop", broken),) + RULES)
    assert detect_file("auto_reply_lotus_notes.eml").kind == "auto_reply"
    assert detect_file("human_plain_emergency.eml") is None


@pytest.mark.parametrize("raw", [
    b"", b"\x00\xff\xfe garbage", b"Subject: only a header", b"From: <>\r\n\r\n",
    b"Content-Type: multipart/report; report-type=\r\n\r\n",
    b"Content-Type: multipart/report; report-type=\"unterminated\r\n\r\n",
    b"Subject: =?utf-8?b?////?=\r\nAuto-Submitted: ((((\r\n\r\n",
    b"Return-Path: <\r\nX-Loop: @@@\r\nReceived: by\r\n\r\n",
    b"From: " + b"a" * 100_000 + b"@x\r\nSubject: " + "é".encode() * 50_000 + b"\r\n\r\n",
])
def test_never_raises_on_odd_input(raw):
    parsed = parse_message(raw)
    for mail_from in (None, "", "<>", "x@y"):
        result = detect_noise(parsed, mail_from=mail_from, own_addresses=OWN, own_hostnames=OWN_HOSTS)
        assert result is None or result.kind in NOISE_KINDS


def test_never_raises_on_wrong_argument_types():
    parsed = parse_message((FIXTURES / "human_plain_emergency.eml").read_bytes())
    assert detect_noise(None, mail_from=None, own_addresses=OWN) is None  # type: ignore[arg-type]
    assert detect_noise(parsed, mail_from=None, own_addresses=None) is None  # type: ignore[arg-type]
    assert detect_noise(parsed, mail_from=None, own_addresses=("",), own_hostnames=(None,)) is None  # type: ignore[arg-type]


def test_noise_is_frozen():
    found = Noise("bounce", "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.kind = "loop"  # type: ignore[misc]
