"""The null engine: benchmarks only. It provisions nothing, so nothing real may use it."""

import pytest

from moran.errors import InvalidInput
from provisioning.engines import engine_for
from provisioning.models import OnboardingStatus, SandboxDocument
from provisioning.services import onboarding_start
from tenants.admin import EngineConnectionForm
from tenants.models import EngineConnection
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def null_engine():
    return EngineConnection.objects.create(name="null-bench", kind=EngineConnection.Kind.NULL)


def test_it_is_refused_as_an_engine_unless_a_benchmark_allows_it(null_engine, settings):
    # given the production default
    settings.NULL_ENGINE_ALLOWED = False
    # when / then
    with pytest.raises(ValueError, match="benchmarks only"):
        engine_for(null_engine)


def test_it_cannot_be_given_to_a_tenant(null_engine, settings):
    settings.NULL_ENGINE_ALLOWED = False
    with pytest.raises(InvalidInput) as raised:
        make_tenant(engine=null_engine)
    assert "engine" in raised.value.fields


def test_the_admin_does_not_make_one(settings):
    # given
    settings.NULL_ENGINE_ALLOWED = False
    form = EngineConnectionForm(data={"name": "fake", "kind": "null", "connect_timeout": 5, "read_timeout": 60})
    # then
    assert not form.is_valid()
    assert "benchmarks only" in str(form.errors["kind"])


def test_it_is_never_the_default():
    assert EngineConnection._meta.get_field("kind").default == EngineConnection.Kind.SANDBOX


def test_a_benchmark_run_on_it_completes_every_step_and_creates_nothing(null_engine, settings, eager, on_commit):
    # given a benchmark's settings
    settings.NULL_ENGINE_ALLOWED = True
    tenant = make_tenant(engine=null_engine)
    documents = SandboxDocument.objects.count()
    # when
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    # then
    tenant.onboarding.refresh_from_db()
    assert tenant.onboarding.status == OnboardingStatus.COMPLETED
    assert all(entry["status"] == "completed" for entry in tenant.onboarding.provisioning_steps.values())
    assert SandboxDocument.objects.count() == documents
