"""A property-based run of the OpenAPI schema (schemathesis) against a live server on 127.0.0.1: generated requests
for every operation, as an operator and as an owner, on generated and on real tenant ids, valid and invalid (negative) data. Every
schemathesis check applies: no 5xx, no undocumented status, content type or header, no schema break, invalid data
refused and valid data accepted, a missing token refused. Bounded: MAX_EXAMPLES per operation."""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as REGISTRY
from schemathesis.checks import load_all_checks
from schemathesis.core.parameters import ParameterLocation

from accounts.services import token_issue
from tests.support.api_cast import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)

MAX_EXAMPLES = int(os.environ.get("MORAN_SCHEMATHESIS_EXAMPLES", "10"))
load_all_checks()
# Every check schemathesis has (server errors, status codes, content types, headers, body schemas, negative data
# rejected, positive data accepted, missing auth ignored, unsupported methods, Allow headers, ...).
CHECKS = REGISTRY.get_all()
# Except one check on the two create operations (a tenant, a batch of them): whether a tenant body is valid also depends on other rows (a free slug, company
# and abbreviation; an engine and an owner that exist) and on rules a JSON schema does not carry (ISO 4217 membership,
# case-insensitive input that is normalised), so a schema-valid body may rightly be a 400 with field errors. Every
# other check still applies to it, and the schema's own example must be created (201, asserted below).
NOT_FOR_CREATE = [check for check in CHECKS if check.__name__ == "positive_data_acceptance"]


CREATES = ("POST /api/tenants", "POST /api/tenants/batch")


def negative_at(case, location) -> bool:
    return case.meta is not None and case.meta.is_negative_at(location)


def fuzz(operation, mode, *, call, tokens, users):
    """Generated cases of one operation in one mode, each sent as every member of the cast; a case with a tenant id
    is sent again on tenants that exist (the owner's own, and someone else's)."""
    label = f"{operation.method.upper()} {operation.path}"

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        for who, token in tokens.items():
            if operation.path == "/api/auth/logout":
                # log-out revokes the token it is sent with: use a fresh one each time
                token = token_issue(email=users[who].email, password=PASSWORD).token
            call(case, label, token)
            if "tenant_id" in (case.path_parameters or {}) and not negative_at(case, ParameterLocation.PATH):
                for real in users["real tenant ids"]:
                    case.path_parameters = {**case.path_parameters, "tenant_id": real}
                    call(case, label, token)

    run()


def test_it_answers_generated_requests_without_5xx_or_schema_breaks(
    live_server, eager, operator, owner, acme, globex, client_for
):
    # given: the schema as the live server serves it, and the cast's tokens
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/")
    tokens = {"operator": client_for(operator).token, "owner": client_for(owner).token}
    users = {"operator": operator, "owner": owner, "real tenant ids": ("acme", str(globex.id))}
    calls: dict[str, int] = {}
    statuses: set[tuple[str, int]] = set()
    refusals: list[str] = []

    # No shared requests.Session: a kept-alive connection would keep a server thread, and its database connection,
    # alive past the test, and the test database could not be dropped.
    def call(case, label, token):
        # A case whose headers were made invalid on purpose (the required Authorization left out) is sent as made.
        headers = {} if negative_at(case, ParameterLocation.HEADER) else {"Authorization": f"Bearer {token}"}
        excluded = NOT_FOR_CREATE if label in CREATES else []
        response = case.call_and_validate(
            base_url=live_server.url, headers=headers, checks=CHECKS, excluded_checks=excluded
        )
        calls[label] = calls.get(label, 0) + 1
        statuses.add((label, response.status_code))
        if label in CREATES and response.status_code == 400:
            refusals.append(response.text[:300])

    # when
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, call=call, tokens=tokens, users=users)
        label = f"{operation.method.upper()} {operation.path}"
        if label in CREATES:
            # The schema's own example (a tenant, a batch), sent explicitly: Hypothesis's CI profile (CI=true) does
            # not replay examples, and random bodies are (rightly) refused, so this is what proves a valid create
            # conforms too.
            example = operation.definition.raw["requestBody"]["content"]["application/json"]["examples"]
            body = next(iter(example.values()))["value"]
            call(operation.Case(body=body, media_type="application/json"), label, tokens["operator"])

    # then: every operation was exercised (the checks raised on any failure above)
    assert len(operations) == 12
    assert set(calls) == {f"{op.method.upper()} {op.path}" for op in operations}
    # the schema's example tenant was created (and provisioned)
    assert ("POST /api/tenants", 201) in statuses, refusals[:3]
    assert ("POST /api/tenants/batch", 202) in statuses, refusals[-3:]
    print(
        f"\nschemathesis: {sum(calls.values())} requests over {len(operations)} operations; statuses: {sorted(statuses)}"
    )
