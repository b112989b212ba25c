"""The tenant directory from Zendesk ([trust] directory_from_zendesk): organizations' domain names and
their end users, read through zenpy from the Zendesk fake, refreshed, kept in the store, and still in
force after a restart while Zendesk is down. Each decision with its pair."""
from __future__ import annotations

from types import SimpleNamespace

from emergencyd.escalation.directory import (
    DirectoryCopy,
    directory_from,
    with_directory,
)
from emergencyd.escalation.trust import TrustPolicy, sender_standing, tenant_of


def test_organizations_domains_and_their_end_users_make_the_directory_beside_the_configs():
    orgs = [SimpleNamespace(id=1, name="Acme Hosting", domain_names=["Acme.example", "acme-ops.example"]),
            SimpleNamespace(id=2, name="", domain_names=[])]
    users = [SimpleNamespace(email="Boss@Personal.example", organization_id=1, role="end-user"),
             SimpleNamespace(email="drifter@elsewhere.example", organization_id=None, role="end-user"),
             SimpleNamespace(email="agent@support.example", organization_id=1, role="agent"),
             SimpleNamespace(email="dev@two.example", organization_id=2, role="end-user")]
    copy = directory_from(orgs, users, fetched_at=100.0)
    assert copy.domains == (("acme-ops.example", "Acme Hosting"), ("acme.example", "Acme Hosting"))
    assert copy.addresses == (("boss@personal.example", "Acme Hosting"), ("dev@two.example", "organization 2"))
    assert DirectoryCopy.from_json(copy.to_json()) == copy
    trust = with_directory(TrustPolicy(tenant_domains=("tenant.gov.example",)), copy)
    assert tenant_of("dev@ops.acme.example", trust) == \
        "the tenant domain acme.example, organization Acme Hosting in Zendesk"
    assert tenant_of("boss@personal.example", trust) == \
        "the tenant address boss@personal.example, organization Acme Hosting in Zendesk"
    assert tenant_of("ops@tenant.gov.example", trust) == "the tenant domain tenant.gov.example"
    assert sender_standing("drifter@elsewhere.example", trust).startswith("not a tenant")
    assert sender_standing("agent@support.example", trust).startswith("not a tenant")   # an agent is no tenant
