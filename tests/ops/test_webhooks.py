"""Notifications: the signed webhook call of an onboarding's end state (services, eager path, real worker)."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from celery_app import app as celery_app
from provisioning.models import OnboardingStatus, ProvisioningRun, SandboxFault, WebhookAttempt, WebhookDelivery
from provisioning.services import onboarding_cancel, onboarding_continue, onboarding_start
from provisioning.webhooks.delivery import webhook_delivery_send, webhook_signature
from provisioning.webhooks.outbox import onboarding_run_ended, webhook_delivery_resend
from tests.support.factories import make_tenant
from tests.support.webhook_receiver import WebhookReceiver
from tests.support.workers import WorkerProcess, realpath_available, wait_for_status

SECRET = "test-webhook-secret"


def signed_ok(call, secret=SECRET) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), call.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(call.headers.get("X-Moran-Signature", ""), expected)


def fail_step(tenant, step, times=1):
    SandboxFault.objects.create(tenant=tenant, step=step, kind=SandboxFault.Kind.PERMANENT, remaining=times)


#: what a worker needs to call the test receiver on 127.0.0.1 (refused by default, as any loopback target is).
LOCAL_TARGETS_ENV = {"MORAN_WEBHOOK_ALLOW_HTTP": "true", "MORAN_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32"}


@pytest.fixture
def receiver(settings):
    # The receiver listens on loopback over plain http: allowed here, explicitly, and nowhere by default.
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    with WebhookReceiver() as r:
        yield r


def ended_delivery(tenant, status="FAILED") -> WebhookDelivery:
    """The outbox row of a run that just ended (its send not scheduled: no commit happens in these tests)."""
    run = ProvisioningRun.objects.create(
        onboarding=tenant.onboarding, kind="start", outcome=ProvisioningRun.Outcome.STOPPED, finished_at=timezone.now()
    )
    return onboarding_run_ended(onboarding=tenant.onboarding, run_id=run.id, status=status)


# --- the service, in-process ---------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_it_signs_the_body_and_sends_the_idempotency_key(receiver, settings, eager, on_commit):
    # given
    settings.WEBHOOK_SECRET = SECRET
    tenant = make_tenant(webhook_url=receiver.url("/t"))
    # when
    run = on_commit(onboarding_start, onboarding=tenant.onboarding)
    # then
    (call,) = receiver.wait_for("/t", 1)
    assert signed_ok(call)
    assert not signed_ok(call, secret="another-secret")
    assert call.headers["Idempotency-Key"] == f"{run.id}:COMPLETED"
    assert call.headers["X-Moran-Event"] == "onboarding.ended"
    body = call.json
    assert body["status"] == "COMPLETED"
    assert body["tenant"]["slug"] == tenant.slug
    assert body["run"] == {**body["run"], "id": str(run.id), "kind": "start", "outcome": "completed"}
    assert body["idempotency_key"] == f"{run.id}:COMPLETED"
    delivery = WebhookDelivery.objects.get(idempotency_key=f"{run.id}:COMPLETED")
    assert (delivery.tenant_id, delivery.run_id, delivery.status) == (tenant.pk, run.id, "COMPLETED")
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)


@pytest.mark.django_db
def test_it_uses_the_global_url_when_the_tenant_has_none(receiver, settings, eager, on_commit):
    # given
    settings.WEBHOOK_URL = receiver.url("/global")
    tenant = make_tenant()
    # when
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    # then
    (call,) = receiver.wait_for("/global", 1)
    assert call.json["tenant"]["slug"] == tenant.slug
    # no secret configured: sent, but unsigned
    assert "X-Moran-Signature" not in call.headers


@pytest.mark.django_db
def test_it_calls_nothing_without_a_url(receiver, settings, eager, on_commit):
    # given
    settings.WEBHOOK_URL = ""
    tenant = make_tenant()
    # when
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    # then
    tenant.onboarding.refresh_from_db()
    assert tenant.onboarding.status == OnboardingStatus.COMPLETED
    assert receiver.calls == []
    assert not WebhookDelivery.objects.exists(), "nothing to deliver, nothing kept"


@pytest.mark.django_db
def test_it_announces_no_cancellation(receiver, settings, on_commit):
    # given: a run in charge (not eager: it stays queued, nothing consumes it)
    settings.CELERY_TASK_ALWAYS_EAGER = False
    tenant = make_tenant(webhook_url=receiver.url("/c"))
    from unittest import mock

    with mock.patch("provisioning.runs.run_enqueue"):
        on_commit(onboarding_start, onboarding=tenant.onboarding)
        # when
        on_commit(onboarding_cancel, onboarding=tenant.onboarding)
    # then
    time.sleep(0.2)
    tenant.onboarding.refresh_from_db()
    assert tenant.onboarding.status == OnboardingStatus.CANCELLED
    assert receiver.calls == []


@pytest.mark.django_db
def test_it_classifies_the_receivers_answers(receiver, settings):
    # given: a run that ended, and a receiver answering 503, 429, 404, 302 then 204
    tenant = make_tenant(webhook_url=receiver.script("/x", [503, 429, 404, 302, 204]))
    delivery = ended_delivery(tenant)
    # when / then: 5xx and 429 are worth retrying, 404 is final, a redirect is not followed, 2xx is delivered
    assert webhook_delivery_send(delivery_id=delivery.pk).state == "pending"
    assert webhook_delivery_send(delivery_id=delivery.pk).state == "pending"
    refused = webhook_delivery_send(delivery_id=delivery.pk)
    assert (refused.state, refused.last_status_code) == ("failed", 404)
    assert webhook_delivery_send(delivery_id=delivery.pk) is None, "a failed delivery is not tried again by itself"
    webhook_delivery_resend(delivery=delivery)
    assert webhook_delivery_send(delivery_id=delivery.pk).state == "failed", "a redirect is final"
    webhook_delivery_resend(delivery=delivery)
    delivered = webhook_delivery_send(delivery_id=delivery.pk)
    assert (delivered.state, delivered.last_status_code, delivered.attempts) == ("delivered", 204, 5)
    assert delivered.delivered_at is not None
    calls = receiver.calls_to("/x")
    assert len({c.body for c in calls}) == 1, "every attempt sends the same bytes"
    assert [c.headers["X-Moran-Delivery-Attempt"] for c in calls] == ["1", "2", "3", "4", "5"]
    # and each try is a row
    tries = list(delivery.tries.values_list("number", "outcome", "status_code"))
    assert tries == [
        (1, "retry", 503),
        (2, "retry", 429),
        (3, "refused", 404),
        (4, "refused", 302),
        (5, "delivered", 204),
    ]
    assert all(t.finished_at and t.duration_ms is not None for t in delivery.tries.all())


@pytest.mark.django_db
def test_it_logs_no_credentials_of_the_url(receiver, caplog):
    # given: a URL carrying credentials and a token
    tenant = make_tenant(webhook_url=receiver.url("/t?token=s3cr3t").replace("http://", "http://user:pa55@"))
    delivery = ended_delivery(tenant, status="COMPLETED")
    # when
    with caplog.at_level("INFO", logger="moran.notifications"):
        assert webhook_delivery_send(delivery_id=delivery.pk).state == "delivered"
    # then: the call went where it was configured (with its credentials), and no log line or row holds them
    (call,) = receiver.calls_to("/t?token=s3cr3t")
    assert call.headers["Authorization"].startswith("Basic ")
    assert "127.0.0.1" in caplog.text
    assert "pa55" not in caplog.text and "s3cr3t" not in caplog.text
    stored = str(list(WebhookDelivery.objects.values())) + str(list(WebhookAttempt.objects.values()))
    assert "pa55" not in stored and "s3cr3t" not in stored


@pytest.mark.django_db
def test_it_retries_a_receiver_that_cannot_be_reached(receiver):
    # given: a port nobody listens on
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tenant = make_tenant(webhook_url=f"http://127.0.0.1:{port}/hook")
    delivery = ended_delivery(tenant, status="COMPLETED")
    # when
    after = webhook_delivery_send(delivery_id=delivery.pk)
    # then: pending again, due later, and the try says why
    assert after.state == "pending" and after.next_attempt_at > timezone.now()
    (attempt,) = after.tries.all()
    assert (attempt.outcome, attempt.status_code, attempt.error) == ("retry", None, "ConnectionError")


@pytest.mark.django_db
def test_it_gives_up_after_the_maximum_number_of_tries(receiver, settings):
    # given: a receiver that always fails, two tries allowed
    settings.WEBHOOK_MAX_RETRIES = 1
    tenant = make_tenant(webhook_url=receiver.script("/down", [500]))
    delivery = ended_delivery(tenant)
    # when
    first = webhook_delivery_send(delivery_id=delivery.pk)
    second = webhook_delivery_send(delivery_id=delivery.pk)
    # then
    assert (first.state, second.state) == ("pending", "failed")
    assert (second.attempts, second.last_status_code, second.last_error) == (2, 500, "HTTP 500")
    assert webhook_delivery_send(delivery_id=delivery.pk) is None
    assert len(receiver.calls_to("/down")) == 2


def test_the_signature_is_hmac_sha256_of_the_body():
    assert webhook_signature(b"{}", "k") == "sha256=" + hmac.new(b"k", b"{}", hashlib.sha256).hexdigest()


# --- the real path: a worker process delivers ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def webhook_worker(django_db_setup, worker_queue):
    """A worker of its own (its own queue) with the webhook secret and fast, bounded retries."""
    if not realpath_available():
        pytest.skip("real-path tests need PostgreSQL and a broker")
    queue = f"test-hooks-{uuid.uuid4().hex[:8]}"
    proc = WorkerProcess(
        queue,
        env={
            **LOCAL_TARGETS_ENV,
            "MORAN_WEBHOOK_SECRET": SECRET,
            "MORAN_WEBHOOK_RETRY_BACKOFF": "1",
            "MORAN_WEBHOOK_RETRY_BACKOFF_MAX": "2",
            "MORAN_WEBHOOK_MAX_RETRIES": "3",
        },
    ).start()
    previous = django_settings.PROVISIONING_QUEUE
    django_settings.PROVISIONING_QUEUE = queue
    yield proc
    django_settings.PROVISIONING_QUEUE = previous
    proc.stop()


@pytest.mark.realpath
@pytest.mark.django_db(transaction=True)
def test_it_makes_exactly_one_signed_call_per_end_state(webhook_worker, receiver):
    # given: one tenant that stops at step 4 (PARTIAL) and is continued (COMPLETED), one that fails at step 0 (FAILED)
    partial = make_tenant(webhook_url=receiver.url("/partial"))
    fail_step(partial, "step_4_cost_centers")
    failed = make_tenant(webhook_url=receiver.url("/failed"))
    fail_step(failed, "step_0_engine_check")
    # when
    first = onboarding_start(onboarding=partial.onboarding)
    wait_for_status(partial.onboarding, OnboardingStatus.PARTIAL)
    receiver.wait_for("/partial", 1)
    second = onboarding_continue(onboarding=partial.onboarding)
    wait_for_status(partial.onboarding, OnboardingStatus.COMPLETED)
    third = onboarding_start(onboarding=failed.onboarding)
    wait_for_status(failed.onboarding, OnboardingStatus.FAILED)
    receiver.wait_for("/partial", 2)
    receiver.wait_for("/failed", 1)
    time.sleep(1.5)  # a duplicate, if any, would arrive now
    # then
    calls = {path: receiver.calls_to(path) for path in ("/partial", "/failed")}
    assert [c.headers["Idempotency-Key"] for c in calls["/partial"]] == [
        f"{first.id}:PARTIAL",
        f"{second.id}:COMPLETED",
    ]
    assert [c.headers["Idempotency-Key"] for c in calls["/failed"]] == [f"{third.id}:FAILED"]
    for call in calls["/partial"] + calls["/failed"]:
        assert signed_ok(call), call.headers
        assert call.json["idempotency_key"] == call.headers["Idempotency-Key"]
    assert [c.json["status"] for c in calls["/partial"]] == ["PARTIAL", "COMPLETED"]
    assert calls["/failed"][0].json["tenant"]["slug"] == failed.slug


@pytest.mark.realpath
@pytest.mark.django_db(transaction=True)
def test_it_retries_a_failing_receiver_without_blocking_provisioning(webhook_worker, receiver):
    # given: one receiver that fails twice then takes the call, one that always fails
    flaky = make_tenant(webhook_url=receiver.script("/flaky", [500, 500, 200]))
    down = make_tenant(webhook_url=receiver.script("/down", [500]))
    # when
    onboarding_start(onboarding=down.onboarding)
    wait_for_status(down.onboarding, OnboardingStatus.COMPLETED)
    receiver.wait_for("/down", 1)
    # while /down is being retried, another tenant provisions to the end
    onboarding_start(onboarding=flaky.onboarding)
    wait_for_status(flaky.onboarding, OnboardingStatus.COMPLETED)
    flaky_calls = receiver.wait_for("/flaky", 3)
    receiver.wait_for("/down", 4)  # the first call and 3 retries
    time.sleep(3)  # past the longest backoff: the retries have stopped
    # then: the onboarding's end state was recorded before its webhook was even tried, and the calls were retried
    assert [c.answered for c in flaky_calls] == [500, 500, 200]
    assert flaky.onboarding.finished_at.timestamp() <= flaky_calls[0].at
    assert flaky_calls[0].at <= flaky_calls[1].at <= flaky_calls[2].at
    assert [c.headers["X-Moran-Delivery-Attempt"] for c in flaky_calls] == ["1", "2", "3"]
    assert len({c.body for c in flaky_calls}) == 1 and len({c.headers["Idempotency-Key"] for c in flaky_calls}) == 1
    assert all(signed_ok(c) for c in flaky_calls)
    # a receiver that never recovers is given up on after the maximum, and its tenant's state is untouched
    assert len(receiver.calls_to("/down")) == 4
    down.onboarding.refresh_from_db()
    assert down.onboarding.status == OnboardingStatus.COMPLETED
    # and the deliveries say so, try by try
    flaky_delivery = WebhookDelivery.objects.get(tenant=flaky)
    assert (flaky_delivery.state, flaky_delivery.attempts, flaky_delivery.last_status_code) == ("delivered", 3, 200)
    assert list(flaky_delivery.tries.values_list("status_code", flat=True)) == [500, 500, 200]
    down_delivery = WebhookDelivery.objects.get(tenant=down)
    assert (down_delivery.state, down_delivery.attempts, down_delivery.last_error) == ("failed", 4, "HTTP 500")
    assert list(down_delivery.tries.values_list("number", "status_code")) == [(n, 500) for n in range(1, 5)]
    assert all(t.worker for t in down_delivery.tries.all()), "each try names the worker that made it"


@pytest.mark.realpath
@pytest.mark.django_db(transaction=True)
def test_it_delivers_exactly_once_when_the_send_was_lost_with_its_worker(receiver, worker_queue):
    # given: a worker that ends the run, whose webhook message goes to a queue nobody serves ...
    suffix = uuid.uuid4().hex[:8]
    steps_queue, lost_queue, rescue_queue = f"test-steps-{suffix}", f"test-lost-{suffix}", f"test-rescue-{suffix}"
    first = WorkerProcess(steps_queue, env={**LOCAL_TARGETS_ENV, "MORAN_NOTIFICATIONS_QUEUE": lost_queue}).start()
    previous = django_settings.PROVISIONING_QUEUE
    django_settings.PROVISIONING_QUEUE = steps_queue
    try:
        tenant = make_tenant(webhook_url=receiver.url("/once"))
        run = onboarding_start(onboarding=tenant.onboarding)
        wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED)
    finally:
        django_settings.PROVISIONING_QUEUE = previous
    # ... and is killed after its final commit and the send it made after the commit (the status shows before it);
    # the send message is lost with it (as with a broker that lost it)
    wait_for_messages(lost_queue, 1)
    first.kill()
    with celery_app.connection_for_write() as conn:
        assert conn.default_channel.queue_purge(lost_queue) == 1
    delivery = WebhookDelivery.objects.get(tenant=tenant)
    assert (delivery.state, delivery.attempts) == ("pending", 0)
    # when: another worker runs the dispatcher, as beat would, three times over
    rescuer = WorkerProcess(
        rescue_queue,
        env={**LOCAL_TARGETS_ENV, "MORAN_NOTIFICATIONS_QUEUE": rescue_queue, "MORAN_WEBHOOK_DISPATCH_GRACE": "0"},
    ).start()
    try:
        celery_app.send_task("provisioning.webhook_dispatch", queue=rescue_queue)
        (call,) = receiver.wait_for("/once", 1)
        for _ in range(2):
            celery_app.send_task("provisioning.webhook_dispatch", queue=rescue_queue)
        time.sleep(2)  # a second call, if any, would arrive now
    finally:
        rescuer.stop()
    # then: one call, one try, delivered
    assert len(receiver.calls_to("/once")) == 1
    assert call.headers["Idempotency-Key"] == f"{run.id}:COMPLETED"
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert list(delivery.tries.values_list("number", "outcome")) == [(1, "delivered")]


def wait_for_messages(queue: str, count: int, timeout: float = 30.0) -> None:
    """Until ``queue`` holds ``count`` messages (a passive declare: the queue exists once something was sent to it)."""
    deadline = time.monotonic() + timeout
    held = 0
    while time.monotonic() < deadline:
        with celery_app.connection_for_write() as conn:
            try:
                held = conn.default_channel.queue_declare(queue=queue, passive=True).message_count
            except conn.channel_errors:
                held = 0  # not declared yet: nothing was sent to it
        if held >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{queue} held {held} messages after {timeout} s, not {count}")
