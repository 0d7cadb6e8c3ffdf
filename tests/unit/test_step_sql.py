"""The step path's lean SQL (provisioning.pending, provisioning.rowsql, the step's hold): the rows a change writes go
with the state in one statement, what it loads equals what the ORM loads, and the lease and slot come back whatever
happens."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from provisioning import execution, runs
from provisioning.capacity import engine_slots_in_use, slot_keys, step_hold
from provisioning.locks import step_lease_key, try_advisory_locks
from provisioning.models import Onboarding, StepAttempt, StepLog
from provisioning.rowsql import select_for_update
from provisioning.runs import onboarding_start
from provisioning.state import Changed, Stale, onboarding_write, step_log_row
from provisioning.steps import STEP_NAMES
from tenants.models import Tenant
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db(transaction=True)

postgres_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's statements and locks")


@pytest.fixture
def started(monkeypatch):
    monkeypatch.setattr(runs, "run_enqueue", lambda *, run_id: True)  # committed, never sent: steps by hand
    tenant = make_tenant(slug="lean")
    onboarding_start(onboarding=tenant.onboarding)
    tenant.onboarding.refresh_from_db()
    return tenant.onboarding


def deliver(onboarding, step_name):
    onboarding.refresh_from_db()
    return execution.step_execute(
        onboarding_id=onboarding.pk, run_id=str(onboarding.run_id), step_name=step_name, retries=0, max_retries=3
    )


@postgres_only
def test_the_rows_of_a_change_and_the_state_are_one_statement(started):
    def change(ob, steps):
        step_log_row(ob, STEP_NAMES[0], 1, "first")
        step_log_row(ob, STEP_NAMES[0], 1, "second")
        return Changed(steps, log="third")

    with CaptureQueriesContext(connection) as queries:
        onboarding_write(started.pk, run_id=started.run_id, change=change)
    sqls = [q["sql"] for q in queries.captured_queries if q["sql"] not in ("BEGIN", "COMMIT")]
    # the lock, then one statement with the log lines and the UPDATE
    assert len(sqls) == 2, sqls
    assert "FOR UPDATE" in sqls[0]
    assert sqls[1].startswith("WITH") and "provisioning_steplog" in sqls[1] and "UPDATE" in sqls[1]
    lines = list(StepLog.objects.filter(onboarding=started).order_by("id").values_list("message", flat=True))
    assert lines[-3:] == ["first", "second", "third"]  # one multi-row INSERT keeps their order
    started.refresh_from_db()
    assert started.version > 0


def test_a_change_that_fails_writes_none_of_its_rows(started):
    before = StepLog.objects.count(), StepAttempt.objects.count()

    def change(ob, steps):
        step_log_row(ob, STEP_NAMES[0], 1, "never written")
        raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        onboarding_write(started.pk, run_id=started.run_id, change=change)
    assert (StepLog.objects.count(), StepAttempt.objects.count()) == before
    assert not StepLog.objects.filter(message="never written").exists()


def test_a_step_writes_its_attempt_and_its_lines_with_its_state(started):
    outcome = deliver(started, STEP_NAMES[0])
    assert outcome.kind == execution.StepOutcome.DONE
    started.refresh_from_db()
    entry = started.provisioning_steps[STEP_NAMES[0]]
    attempt = StepAttempt.objects.get(onboarding=started, step=STEP_NAMES[0])
    assert (entry["status"], entry["attempts"], attempt.number, attempt.outcome) == ("completed", 1, 1, "completed")
    assert attempt.duration_ms is not None and attempt.finished_at >= attempt.started_at
    lines = list(StepLog.objects.filter(onboarding=started, step=STEP_NAMES[0]).order_by("id"))
    assert [line.message for line in lines][0] == "attempt 1 started"
    assert lines[-1].message.startswith("completed")
    assert all(line.run_id == started.run_id for line in lines)


def test_the_locked_read_loads_what_the_orm_loads(started):
    from django.db import transaction

    with transaction.atomic():
        lean = select_for_update(Onboarding, started.pk)
    orm = Onboarding.objects.get(pk=started.pk)
    fields = [f.attname for f in Onboarding._meta.concrete_fields]
    assert {f: getattr(lean, f) for f in fields} == {f: getattr(orm, f) for f in fields}
    assert isinstance(lean.provisioning_steps, dict) and not lean._state.adding
    with pytest.raises(Onboarding.DoesNotExist), transaction.atomic():
        select_for_update(Onboarding, 10**9)


def test_the_first_read_loads_the_tenant_its_engine_and_its_onboarding(started):
    tenant, onboarding, tried = execution._read(started.pk)
    assert tried is None  # no lock asked for, none taken
    orm = Tenant.objects.select_related("engine").get(pk=started.tenant_id)
    fields = [f.attname for f in Tenant._meta.concrete_fields]
    assert {f: getattr(tenant, f) for f in fields} == {f: getattr(orm, f) for f in fields}
    assert tenant.engine == orm.engine and tenant.engine.max_concurrency == orm.engine.max_concurrency
    fields = [f.attname for f in Onboarding._meta.concrete_fields]
    fresh = Onboarding.objects.get(pk=started.pk)
    assert {f: getattr(onboarding, f) for f in fields} == {f: getattr(fresh, f) for f in fields}
    assert execution._read(10**9) is None


@postgres_only
def test_the_first_read_opens_a_new_connection_when_the_old_one_died(started):
    from django.db import connections

    execution._read(started.pk)
    # The server ends this session (as a restart would) while the connection sits idle between tasks.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    tenant, onboarding, _ = execution._read(started.pk)
    assert tenant.pk == started.tenant_id and onboarding.pk == started.pk


@postgres_only
def test_a_step_writes_without_a_lock_when_nobody_else_writes(settings, monkeypatch):
    """Read with the lease and a slot, begin, finish with their giving back: three statements, no transaction, no
    row lock (on the null engine, which sends none of its own); and nothing is left held."""
    from tenants.models import EngineConnection

    settings.NULL_ENGINE_ALLOWED = True
    monkeypatch.setattr(runs, "run_enqueue", lambda *, run_id: True)
    engine = EngineConnection.objects.create(name="null-test", kind=EngineConnection.Kind.NULL)
    started = make_tenant(slug="lean-null", engine=engine).onboarding
    onboarding_start(onboarding=started)
    for name in STEP_NAMES[:3]:  # the company and fiscal-year steps take engine-wide locks of their own
        deliver(started, name)
    started.refresh_from_db()
    with CaptureQueriesContext(connection) as queries:
        outcome = execution.step_execute(
            onboarding_id=started.pk, run_id=str(started.run_id), step_name=STEP_NAMES[3], retries=0, max_retries=3
        )
    assert outcome.kind == execution.StepOutcome.DONE
    sqls = [q["sql"] for q in queries.captured_queries]
    assert len(sqls) == 3, [s[:60] for s in sqls]
    assert not any("FOR UPDATE" in sql or sql in ("BEGIN", "COMMIT") for sql in sqls)
    assert engine_slots_in_use([engine]) == {engine.pk: 0}
    assert try_advisory_locks(step_lease_key(started.run_id, STEP_NAMES[3])) == [True]  # the lease is free
    from provisioning.locks import advisory_unlock

    advisory_unlock(step_lease_key(started.run_id, STEP_NAMES[3]))
    started.refresh_from_db()
    assert started.provisioning_steps[STEP_NAMES[3]]["status"] == "completed"
    assert StepAttempt.objects.get(onboarding=started, step=STEP_NAMES[3]).outcome == "completed"


def _count_attempts(ob, steps):
    entry = steps[STEP_NAMES[0]]
    steps[STEP_NAMES[0]] = {**entry, "attempts": entry["attempts"] + 1}
    step_log_row(ob, STEP_NAMES[0], entry["attempts"] + 1, "counted")
    return steps


def test_a_write_over_a_row_that_changed_since_it_was_read_is_done_under_the_lock(started):
    """The row read, then written by someone else: the write is not lost and not applied on the old copy."""
    read = Onboarding.objects.get(pk=started.pk)
    onboarding_write(started.pk, run_id=started.run_id, change=_count_attempts)  # the other writer
    written = onboarding_write(started.pk, run_id=started.run_id, change=_count_attempts, read=read)
    started.refresh_from_db()
    assert started.provisioning_steps[STEP_NAMES[0]]["attempts"] == 2  # both counted, on the latest row
    assert started.version == written.onboarding.version == Onboarding.objects.get(pk=started.pk).version
    assert StepLog.objects.filter(onboarding=started, message="counted").count() == 2


def test_a_change_that_sends_sql_of_its_own_runs_once_under_the_lock(started):
    read = Onboarding.objects.get(pk=started.pk)
    version = read.version
    calls = []

    def change(ob, steps):
        calls.append(StepLog.objects.filter(onboarding_id=ob.pk).count())  # SQL: not allowed without the lock
        return _count_attempts(ob, steps)

    onboarding_write(started.pk, run_id=started.run_id, change=change, read=read)
    started.refresh_from_db()
    assert started.version == version + 1  # written once
    assert started.provisioning_steps[STEP_NAMES[0]]["attempts"] == 1
    assert StepLog.objects.filter(onboarding=started, message="counted").count() == 1
    if connection.vendor == "postgresql":
        assert len(calls) == 1  # the try without the lock stopped at its first statement, before it ran


def test_a_stale_read_of_another_run_writes_nothing(started):
    read = Onboarding.objects.get(pk=started.pk)
    other = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(Stale, match=f"run {other} is not in charge of onboarding {started.pk}"):
        onboarding_write(started.pk, run_id=other, change=_count_attempts, read=read)
    assert not StepLog.objects.filter(onboarding=started, message="counted").exists()


@postgres_only
def test_the_hold_gives_lease_and_slot_back(started):
    tenant = Tenant.objects.select_related("engine").get(pk=started.tenant_id)
    engine = tenant.engine
    _, _, tried = execution._read(started.pk, lease=step_lease_key(started.run_id, STEP_NAMES[3]), slot=True)
    with step_hold(
        run_id=started.run_id,
        step_name=STEP_NAMES[3],
        engine_id=engine.pk,
        max_concurrency=engine.max_concurrency,
        tried=tried,
    ) as hold:
        assert hold.lease and hold.grant.held and hold.grant.slot is not None
        assert engine_slots_in_use([engine]) == {engine.pk: 1}
    assert engine_slots_in_use([engine]) == {engine.pk: 0}
    assert try_advisory_locks(step_lease_key(started.run_id, STEP_NAMES[3])) == [True]  # free again
    from provisioning.locks import advisory_unlock

    advisory_unlock(step_lease_key(started.run_id, STEP_NAMES[3]))


@postgres_only
def test_a_duplicate_delivery_keeps_no_slot(started, settings):
    """Another session holds the step's lease: the hold says so, and the slot tried with the lease is given back."""
    from django.db import connections

    settings.STEP_LEASE_WAIT = 0.3
    tenant = Tenant.objects.select_related("engine").get(pk=started.tenant_id)
    engine = tenant.engine
    key = step_lease_key(started.run_id, STEP_NAMES[3])
    holder = connections.create_connection("default")
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [key])
        _, _, tried = execution._read(started.pk, lease=key, slot=True)
        with step_hold(
            run_id=started.run_id,
            step_name=STEP_NAMES[3],
            engine_id=engine.pk,
            max_concurrency=engine.max_concurrency,
            tried=tried,
        ) as hold:
            assert not hold.lease and not hold.grant.held
            assert engine_slots_in_use([engine]) == {engine.pk: 0}
    finally:
        holder.close()
    assert engine_slots_in_use([engine]) == {engine.pk: 0}


@postgres_only
def test_the_step_statements_are_prepared_once_per_session(started):
    from provisioning import rowsql

    rowsql.execute("SELECT %s::int + 1", [1])
    with CaptureQueriesContext(connection) as queries:
        assert rowsql.execute("SELECT %s::int + 1", [41]) == (42,)
    assert [q["sql"] for q in queries.captured_queries] == [
        q["sql"] for q in queries.captured_queries if "EXECUTE" in q["sql"]
    ]
    assert not any("PREPARE" in q["sql"] for q in queries.captured_queries)  # prepared by the first call already


@postgres_only
def test_a_statement_the_session_lost_is_prepared_again(started):
    from provisioning import rowsql

    assert rowsql.execute("SELECT %s::int * 2", [2]) == (4,)
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")  # what a session that is not the one they were prepared in looks like
    assert rowsql.execute("SELECT %s::int * 2", [21]) == (42,)
    connection.close()  # a new session starts with none
    assert rowsql.execute("SELECT %s::int * 2", [5]) == (10,)


@postgres_only
def test_inside_a_transaction_statements_are_not_prepared(started):
    from django.db import transaction

    from provisioning import rowsql

    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        assert rowsql.execute("SELECT %s::int - 1", [1]) == (0,)
    assert not any("EXECUTE" in q["sql"] or "PREPARE" in q["sql"] for q in queries.captured_queries)


@postgres_only
def test_prepared_statements_can_be_turned_off(started, settings):
    from provisioning import rowsql

    settings.PREPARED_STATEMENTS = False
    with CaptureQueriesContext(connection) as queries:
        assert rowsql.execute("SELECT %s::int + 2", [1]) == (3,)
    assert [q["sql"] for q in queries.captured_queries] == ["SELECT 1::int + 2"]


def test_a_change_edits_a_copy_of_the_state_all_the_way_down():
    from provisioning.state import initial_steps, state_copy

    steps = initial_steps()
    steps[STEP_NAMES[7]]["result"] = {"roles": ["Accounts Manager", {"role": "System Manager"}], "user": "a@b.c"}
    copy = state_copy(steps)
    assert copy == steps  # every value kept, lists included
    copy[STEP_NAMES[7]]["result"]["roles"][1]["role"] = "Guest"
    copy[STEP_NAMES[7]]["result"]["roles"].append("more")
    assert steps[STEP_NAMES[7]]["result"]["roles"] == ["Accounts Manager", {"role": "System Manager"}]


@postgres_only
def test_a_compare_and_swap_that_loses_its_connection_is_written_under_the_lock(started, monkeypatch):
    from django.db import OperationalError

    from provisioning import state

    def lost(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(state, "pending_write_if", lost)
    read = Onboarding.objects.get(pk=started.pk)
    version = read.version
    written = onboarding_write(started.pk, run_id=started.run_id, change=_count_attempts, read=read)
    started.refresh_from_db()
    assert written.onboarding.version == started.version == version + 1
    assert started.provisioning_steps[STEP_NAMES[0]]["attempts"] == 1


def test_a_write_that_ends_the_run_announces_it_under_the_lock(started, monkeypatch):
    from provisioning import state

    announced = []
    monkeypatch.setattr(state, "onboarding_run_ended", lambda **kw: announced.append(kw["status"]))
    monkeypatch.setattr(state, "batch_run_ended", lambda **kw: None)

    def end_quietly(ob, steps):  # ends the run without a statement of its own
        ob.run_id = None
        return steps

    read = Onboarding.objects.get(pk=started.pk)
    onboarding_write(started.pk, run_id=started.run_id, change=end_quietly, read=read)
    started.refresh_from_db()
    assert started.run_id is None and announced == [started.status]


def test_a_compare_and_swap_write_logs_its_line(started, caplog):
    read = Onboarding.objects.get(pk=started.pk)
    with caplog.at_level("INFO", logger="moran.provisioning"):
        onboarding_write(
            started.pk, run_id=started.run_id, change=_count_attempts, read=read, log="looked", log_step=STEP_NAMES[0]
        )
    [record] = [r for r in caplog.records if r.getMessage() == "looked"]
    assert (record.step, record.run_id, record.tenant) == (STEP_NAMES[0], str(started.run_id), started.tenant_id)


@postgres_only
def test_a_write_without_a_run_goes_through_on_an_onboarding_that_has_none():
    onboarding = make_tenant(slug="lean-idle").onboarding
    read = Onboarding.objects.get(pk=onboarding.pk)
    written = onboarding_write(onboarding.pk, run_id=None, change=_count_attempts, read=read, log="looked idle")
    assert written.onboarding.provisioning_steps[STEP_NAMES[0]]["attempts"] == 1
    assert StepLog.objects.filter(onboarding=onboarding, message="looked idle", run_id=None).exists()
    with pytest.raises(Stale):  # and one that names a run, on an onboarding with none, is stale
        onboarding_write(onboarding.pk, run_id=str(uuid.uuid4()), change=_count_attempts, read=read)


def test_the_instance_the_writer_returns_cannot_save_state_later(started):
    written = onboarding_write(started.pk, run_id=started.run_id, change=_count_attempts)
    written.onboarding.status = "FAILED"
    written.onboarding.provisioning_steps = {}
    written.onboarding.save()  # a caller that edits and saves the returned instance: the guard still holds
    fresh = Onboarding.objects.get(pk=started.pk)
    assert fresh.status == started.status and fresh.provisioning_steps[STEP_NAMES[0]]["attempts"] == 1


class _Killed(BaseException):
    """Stands for SIGKILL: no handler of the step's catches it, so the attempt stays ``running`` as a dead worker's."""


def test_an_admin_user_created_by_an_attempt_that_died_is_still_moran_s(started, monkeypatch):
    from provisioning.engines.sandbox import SandboxEngine

    for name in STEP_NAMES[:7]:
        assert deliver(started, name).kind == execution.StepOutcome.DONE
    real_insert = SandboxEngine.insert

    def insert_then_die(self, doctype, doc):
        created = real_insert(self, doctype, doc)
        if doctype == "User":
            raise _Killed()  # the user exists in the engine; its attempt never records a result
        return created

    monkeypatch.setattr(SandboxEngine, "insert", insert_then_die)
    with pytest.raises(_Killed):
        deliver(started, "step_7_admin_user")
    monkeypatch.setattr(SandboxEngine, "insert", real_insert)
    # the message comes back: the next attempt finds the user, and knows it as Moran's
    assert deliver(started, "step_7_admin_user").kind == execution.StepOutcome.DONE
    started.refresh_from_db()
    entry = started.provisioning_steps["step_7_admin_user"]
    assert (entry["status"], entry["attempts"], entry["result"]["created_by_moran"]) == ("completed", 2, True)
    # so step 8 restricts it to its company instead of refusing it as a stranger's
    assert deliver(started, "step_8_user_permissions").kind == execution.StepOutcome.DONE


@postgres_only
def test_the_first_read_tries_the_lease_and_a_slot_of_the_tenant_s_engine(started):
    tenant = Tenant.objects.select_related("engine").get(pk=started.tenant_id)
    lease = step_lease_key(started.run_id, STEP_NAMES[3])
    _, _, tried = execution._read(started.pk, lease=lease, slot=True)
    try:
        assert tried.lease and tried.slot in slot_keys(tenant.engine_id, tenant.engine.max_concurrency)
        assert engine_slots_in_use([tenant.engine]) == {tenant.engine_id: 1}
        # A second try of the same lease from another session fails while this one holds it.
        assert _other_session_tries(lease) is False
    finally:
        from provisioning.locks import advisory_unlock

        advisory_unlock(tried.slot, lease)
    assert engine_slots_in_use([tenant.engine]) == {tenant.engine_id: 0}
    _, _, tried = execution._read(started.pk, lease=lease, slot=False)
    assert tried.lease and tried.slot is None and engine_slots_in_use([tenant.engine]) == {tenant.engine_id: 0}
    from provisioning.locks import advisory_unlock

    advisory_unlock(lease)
    assert execution._read(10**9, lease=lease, slot=True) is None
    assert _other_session_tries(lease) is True  # no row: no lock was taken


def _other_session_tries(key) -> bool:
    from django.db import connections

    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            return cursor.fetchone()[0]
    finally:
        other.close()


@postgres_only
def test_slot_keys_are_laid_out_as_the_first_read_computes_them(started):
    """The read computes a slot key in SQL; the engine pages and the bounded wait compute them in Python."""
    from provisioning import rowsql
    from provisioning.capacity import first_slot_sql

    engine = Tenant.objects.select_related("engine").get(pk=started.tenant_id).engine
    keys = set(slot_keys(engine.pk, engine.max_concurrency))
    seen = {
        rowsql.execute(f"SELECT {first_slot_sql('e')} FROM tenants_engineconnection e WHERE e.id = %s", [engine.pk])[0]
        for _ in range(60)
    }
    assert seen == keys  # every slot, and nothing else, over enough draws
    assert len(slot_keys(engine.pk, 500)) == 64 and not keys & set(slot_keys(engine.pk + 1, 64))


@postgres_only
def test_a_finish_that_loses_its_compare_and_swap_leaves_the_locks_to_their_holder(started):
    """The finish's statement gives the hold back only when it wrote; when someone wrote in between, the locked
    write records the end and the hold gives its locks back on the way out."""
    from provisioning.pending import GiveBack

    lease = step_lease_key(started.run_id, STEP_NAMES[0])
    assert try_advisory_locks(lease) == [True]
    read = Onboarding.objects.get(pk=started.pk)
    onboarding_write(started.pk, run_id=started.run_id, change=_count_attempts)  # another writer
    give_back = GiveBack([lease])
    onboarding_write(started.pk, run_id=started.run_id, change=_count_attempts, read=read, give_back=give_back)
    assert not give_back.done and _other_session_tries(lease) is False  # still held here
    read = Onboarding.objects.get(pk=started.pk)
    onboarding_write(started.pk, run_id=started.run_id, change=_count_attempts, read=read, give_back=give_back)
    assert give_back.done and _other_session_tries(lease) is True  # given back by the write itself
    started.refresh_from_db()
    assert started.provisioning_steps[STEP_NAMES[0]]["attempts"] == 3


def test_the_admin_history_statement_answers_as_the_orm_query(started):
    """Step 8's question (did step 7 of any tenant of this engine create this admin user?) in one statement on
    PostgreSQL, the ORM's query elsewhere: the same answers."""
    from provisioning.steps import admin_user_created_by_moran

    tenant = Tenant.objects.select_related("engine").get(pk=started.tenant_id)
    other = make_tenant(slug="lean-other", engine=tenant.engine, admin_email=tenant.admin_email.upper())
    elsewhere = make_tenant(slug="lean-elsewhere", admin_email="someone@else.test")

    def answers():
        return [
            (execution._admin_created_by_moran(t), admin_user_created_by_moran(t)) for t in (tenant, other, elsewhere)
        ]

    assert answers() == [(False, False)] * 3
    steps = other.onboarding.provisioning_steps
    steps["step_7_admin_user"] = {**steps.get("step_7_admin_user", {}), "result": {"created_by_moran": False}}
    Onboarding.objects.filter(pk=other.onboarding.pk).update(provisioning_steps=steps)
    assert answers() == [(False, False)] * 3
    steps["step_7_admin_user"]["result"] = {"created_by_moran": True}
    Onboarding.objects.filter(pk=other.onboarding.pk).update(provisioning_steps=steps)
    assert answers() == [(True, True), (True, True), (False, False)]  # the same address, any case, same engine


@postgres_only
def test_a_delivery_that_finds_the_lease_held_is_dropped_and_keeps_no_slot(started):
    """Through the step's first read (which tries the lease and a slot in one statement): another session holds the
    lease, so this delivery begins nothing, says so, and gives back the slot its read took."""
    from django.db import connections

    engine = Tenant.objects.select_related("engine").get(pk=started.tenant_id).engine
    name = STEP_NAMES[3]
    holder = connections.create_connection("default")
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [step_lease_key(started.run_id, name)])
        assert deliver(started, name).kind == execution.StepOutcome.DUPLICATE
        assert engine_slots_in_use([engine]) == {engine.pk: 0}
    finally:
        holder.close()
    started.refresh_from_db()
    assert started.provisioning_steps[name]["status"] == "pending" and started.provisioning_steps[name]["attempts"] == 0
    dropped = StepLog.objects.filter(onboarding=started, step=name, message__startswith="a second delivery")
    assert dropped.count() == 1


@postgres_only
def test_a_compare_and_swap_write_sends_only_the_entries_it_changed(started):
    """The stored document gets the changed entry merged in: the same document as a whole write would store."""
    read = Onboarding.objects.get(pk=started.pk)
    before = read.provisioning_steps
    with CaptureQueriesContext(connection) as queries:
        written = onboarding_write(started.pk, run_id=started.run_id, change=_count_attempts, read=read)
    (sql,) = [q["sql"] for q in queries.captured_queries]  # one statement: no lock, no fallback
    assert "||" in sql and STEP_NAMES[0] in sql
    assert not any(name in sql for name in STEP_NAMES[1:])  # the unchanged entries are not sent
    started.refresh_from_db()
    assert started.provisioning_steps == written.onboarding.provisioning_steps
    assert started.provisioning_steps[STEP_NAMES[0]] == {**before[STEP_NAMES[0]], "attempts": 1}
    assert {n: e for n, e in started.provisioning_steps.items() if n != STEP_NAMES[0]} == {
        n: e for n, e in before.items() if n != STEP_NAMES[0]
    }


@postgres_only
@pytest.mark.parametrize("damage", ["extra step", "entry missing a key", "step missing"])
def test_a_stored_document_that_is_not_normalised_is_written_whole(started, damage):
    """Merging into a hand-edited or older document would keep what a whole write drops or fills in."""
    steps = {name: dict(entry) for name, entry in started.provisioning_steps.items()}
    if damage == "extra step":
        steps["step_99_gone"] = {"status": "completed"}
    elif damage == "entry missing a key":
        del steps[STEP_NAMES[4]]["result"]
    else:
        del steps[STEP_NAMES[4]]
    Onboarding.objects.filter(pk=started.pk).update(provisioning_steps=steps)
    read = Onboarding.objects.get(pk=started.pk)
    with CaptureQueriesContext(connection) as queries:
        written = onboarding_write(started.pk, run_id=started.run_id, change=_count_attempts, read=read)
    (sql,) = [q["sql"] for q in queries.captured_queries]
    assert "||" not in sql and all(name in sql for name in STEP_NAMES)
    started.refresh_from_db()
    assert started.provisioning_steps == written.onboarding.provisioning_steps
    assert set(started.provisioning_steps) == set(STEP_NAMES)
    assert all("result" in entry for entry in started.provisioning_steps.values())
    assert started.provisioning_steps[STEP_NAMES[0]]["attempts"] == 1
