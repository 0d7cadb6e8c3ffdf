"""The sweeper: finds the runs no worker will finish, and resolves them — within seconds, by liveness, not deadlines.

It passes every few seconds (``SWEEP_INTERVAL``) and reads, for all runs in charge at once, the onboarding rows and
the step leases held in ``pg_locks`` (a lease is a PostgreSQL session advisory lock: it ends with its worker's
database session). What it looks for:

* **dead** — a step ``running`` for more than ``SWEEP_LIVENESS_GRACE`` whose lease no live session holds. The lease
  is taken before the attempt is recorded and released after its end is, so the attempt's worker is gone (killed,
  or cut off long enough for its session to end: see the keepalive settings);
* **lost** — the chain's next message never began: the step that ended (the *handoff*) sent it, and either steps
  whose messages were sent after it have since been taken by workers (the queue is first in, first out, so it was
  taken too, by a worker that died before beginning it, or it went with the broker), or no worker has begun any
  step for ``SWEEP_IDLE_GRACE`` while none is executing. A ``retrying`` step is lost the same way once its longest
  countdown (``STEP_RETRY_BACKOFF_MAX``) is over. A message merely queued behind others is never taken for lost:
  nothing sent after it has been taken yet;
* **never enqueued** — the run was committed but its chain never reached the broker (``enqueued_at`` empty past
  ``SWEEP_ENQUEUE_GRACE``);
* the backstops: **stuck** — a step running or retrying past ``SWEEP_STEP_DEADLINE`` (a live but hung worker: past
  its hard time limit; left alone while its lease is held), and **stalled** — no step in flight and no write for
  ``SWEEP_STALL_DEADLINE``.

How it resolves them: it **resumes** the onboarding as a new run from the first step that is not completed or
skipped (fencing discards any late message of the old run, so a message found later — a false alarm — does
nothing). A step found interrupted while running ``SWEEP_MAX_RESUMES`` times since an operator last started a run
is a poison step: the sweeper then **marks** it failed with an ``Interrupted`` error and ends the run, so the
onboarding is PARTIAL or FAILED with the reason, and continue works.

Every decision is taken inside :func:`provisioning.state.onboarding_write` — the one writer — fenced on the run it
diagnosed and diagnosed again on the locked row (its lease probed again), so two sweepers at once (two beat
instances by mistake) never both act, and a run that moved on in the meantime is left alone. What it did is logged
on the onboarding.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from provisioning.attempts import attempt_close
from provisioning.locks import step_lease_free, step_lease_key
from provisioning.models import Onboarding, ProvisioningRun, StepAttempt, StepLog, StepStatus
from provisioning.runs import run_resume
from provisioning.state import (
    ACTIVE,
    DONE,
    Changed,
    Stale,
    normalised,
    now_iso,
    onboarding_write,
    run_end,
    step_log_row,
)
from provisioning.steps import STEP_NAMES

logger = logging.getLogger("moran.provisioning")

#: ``requested_by`` of the runs the sweeper starts.
SWEEPER = "sweeper"
#: how the log line of an attempt the sweeper found interrupted ends (for people; the count reads attempt rows).
FOUND_BY_SWEEPER = "(found by the sweeper)"


@dataclass(frozen=True)
class Problem:
    kind: str  # "never_enqueued" | "dead" | "lost" | "stuck" | "stalled"
    step: str | None
    detail: str


@dataclass(frozen=True)
class SweepAction:
    tenant: str
    action: str  # "resumed" | "marked" | "left" | "ended"
    problem: str
    detail: str

    def __str__(self):
        return f"{self.tenant}: {self.action} ({self.problem}) {self.detail}"


class _Moved(Exception):
    """Under the lock, the problem is no longer there (a worker or another sweeper got there first)."""


def _stamp(value) -> dt.datetime | None:
    return parse_datetime(value) if isinstance(value, str) and value else value or None


def _since(entry: dict) -> dt.datetime | None:
    if entry["status"] == StepStatus.WAITING:  # like a retry: its next delivery is a message in the queue
        return _stamp(entry.get("waiting_since") or "")
    stamp = (
        entry["started_at"] if entry["status"] == StepStatus.RUNNING else entry["finished_at"] or entry["started_at"]
    )
    return _stamp(stamp)


@dataclass(frozen=True)
class Flow:
    """Where a run's chain stands, read from its step states: the step in flight (running or waiting for a retry),
    or the time the chain last moved on (the *handoff*: the last step of this run ended, or the run was enqueued)
    and the step whose message it sent; and, for the FIFO evidence, the latest step this run began and the handoff
    that sent it."""

    active: str | None
    handoff: dt.datetime | None
    waiting: str | None
    began_at: dt.datetime | None
    began_handoff: dt.datetime | None
    #: the step in flight is running (not waiting for a retry or for capacity)
    active_running: bool = False


def run_flow(steps: dict, run: ProvisioningRun) -> Flow:
    run_id, sent = str(run.id), run.enqueued_at or run.created_at
    active = next((n for n, e in steps.items() if e["status"] in ACTIVE and e.get("run_id") == run_id), None)
    handoff, began_at, began_handoff = sent, None, None
    previous_end = sent
    for name in STEP_NAMES:
        entry = steps[name]
        if entry.get("run_id") != run_id:
            continue
        started = _stamp(entry["started_at"])
        if started and (began_at is None or started >= began_at):
            # A step's message was sent when the step before it in this run ended (or when the run was enqueued).
            began_at, began_handoff = started, previous_end
        if entry["status"] in DONE and entry["finished_at"]:
            handoff = previous_end = _stamp(entry["finished_at"])
    waiting = next((n for n in STEP_NAMES if steps[n]["status"] not in DONE), None)
    running = active is not None and steps[active]["status"] == StepStatus.RUNNING
    return Flow(active, handoff, waiting, began_at, began_handoff, running)


@dataclass(frozen=True)
class Liveness:
    """What one pass of the sweeper knows about every active run at once (two queries, whatever the number of runs).

    ``held``: the step leases a live database session holds (``pg_locks``). ``delivered_before``: every step message
    sent before this moment has been delivered to a worker at least ``SWEEP_PICKUP_GRACE`` ago — the queue is
    FIFO, and a message sent after it was taken and begun by then. ``busy``: some step holds its lease (a worker is
    executing). ``last_begin``: the latest step begun in any active run."""

    held: frozenset
    delivered_before: dt.datetime | None = None
    busy: bool = False
    last_begin: dt.datetime | None = None
    #: False without PostgreSQL (the embedded mode runs steps in-process, with no lease): deadlines alone decide.
    known: bool = True

    def with_probe(self, run_id, step: str | None) -> Liveness:
        """The same, with one lease probed again now (under the row lock, before acting)."""
        if step is None:
            return self
        key = step_lease_key(run_id, step)
        held = self.held - {key} if step_lease_free(run_id, step) else self.held | {key}
        return Liveness(held, self.delivered_before, self.busy, self.last_begin, self.known)


def held_lease_keys() -> frozenset:
    """Every advisory lock a live session holds in this database, as the 64-bit keys :func:`step_lease_key` makes:
    one read of ``pg_locks`` for all runs (a bigint advisory lock shows as its high and low 32 bits)."""
    if connection.vendor != "postgresql":
        return frozenset()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT classid::oid::bigint, objid::oid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND objsubid = 1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        keys = ((high << 32) | low for high, low in cursor.fetchall())
        return frozenset(key - (1 << 64) if key >= 1 << 63 else key for key in keys)


def liveness(pairs, *, now: dt.datetime) -> Liveness:
    """``pairs``: (onboarding, run) of every active run. Read the rows first, then the locks: a lease taken after
    the rows were read belongs to an attempt the rows do not show yet, and is re-probed before acting anyway."""
    flows = [(run.id, run_flow(normalised(onboarding.provisioning_steps), run)) for onboarding, run in pairs]
    return _liveness_of(flows, held_lease_keys(), now=now)


def _liveness_of(flows, held: frozenset, *, now: dt.datetime) -> Liveness:
    """``flows``: (run id, :class:`Flow`) of every active run."""
    grace = dt.timedelta(seconds=settings.SWEEP_PICKUP_GRACE)
    delivered_before = last_begin = None
    busy = False
    for run_id, flow in flows:
        if flow.active_running:
            busy = busy or step_lease_key(run_id, flow.active) in held
        if flow.began_at is None:
            continue
        last_begin = max(last_begin or flow.began_at, flow.began_at)
        if flow.began_at <= now - grace and flow.began_handoff:
            delivered_before = max(delivered_before or flow.began_handoff, flow.began_handoff)
    if delivered_before is not None:
        # Clock skew between hosts, and the moment between a step's end being written and its next message sent.
        delivered_before -= dt.timedelta(seconds=settings.SWEEP_FIFO_MARGIN)
    return Liveness(held, delivered_before, busy, last_begin, connection.vendor == "postgresql")


@dataclass(frozen=True)
class RunFacts:
    """What a diagnosis reads of one run in charge: from its row (:func:`run_facts`), or computed by the database
    for every run at once (:func:`active_run_facts`)."""

    onboarding_id: int
    run_id: object
    created_at: dt.datetime
    enqueued_at: dt.datetime | None
    updated_at: dt.datetime
    #: a step of this run began (the run reached an executor)
    began: bool
    #: the first step in flight, of any run: name, status, since (see ``_since``), attempts
    in_flight: tuple | None
    flow: Flow


def run_facts(onboarding: Onboarding, run: ProvisioningRun) -> RunFacts:
    steps = normalised(onboarding.provisioning_steps)
    in_flight = next(
        ((n, e["status"], _since(e), e["attempts"]) for n, e in steps.items() if e["status"] in ACTIVE), None
    )
    return RunFacts(
        onboarding.pk,
        run.id,
        run.created_at,
        run.enqueued_at,
        onboarding.updated_at,
        any(entry.get("run_id") == str(run.id) for entry in steps.values()),
        in_flight,
        run_flow(steps, run),
    )


def diagnose(
    onboarding: Onboarding, run: ProvisioningRun, *, now: dt.datetime, live: Liveness | None = None
) -> Problem | None:
    """What is wrong with the run in charge, or None. Reads only."""
    if run.outcome != ProvisioningRun.Outcome.ACTIVE or onboarding.run_id != run.id:
        return None
    if live is None:
        live = liveness([(onboarding, run)], now=now)
    return _decide(
        run_facts(onboarding, run), now=now, live=live, idle_backoff=lambda lost: _idle_backoff(onboarding, run, lost)
    )


def _decide(facts: RunFacts, *, now, live: Liveness, idle_backoff) -> Problem | None:
    # A step that began in this run proves the run reached an executor, whatever enqueued_at says (the embedded mode
    # sets it only after the whole chain ran in-process; a lost connection may have missed setting it).
    if facts.enqueued_at is None and not facts.began:
        age = (now - facts.created_at).total_seconds()
        if age >= settings.SWEEP_ENQUEUE_GRACE:
            return Problem(
                "never_enqueued", None, f"the run was committed {age:.0f} s ago and never reached the broker"
            )
        return None
    if facts.in_flight is not None:
        return _diagnose_active(*facts.in_flight, facts.run_id, now=now, live=live)
    return _diagnose_idle(facts, now=now, live=live, idle_backoff=idle_backoff)


def _diagnose_active(name: str, status: str, since, attempts: int, run_id, *, now, live: Liveness) -> Problem | None:
    age = (now - since).total_seconds() if since else float("inf")
    running = status == StepStatus.RUNNING
    verb = {StepStatus.RUNNING: "running", StepStatus.WAITING: "waiting for engine capacity"}.get(
        status, "waiting for a retry"
    )
    if age >= settings.SWEEP_STEP_DEADLINE:
        # The backstop: a live worker hung past every time limit (or one no liveness evidence exposed).
        return Problem(
            "stuck",
            name,
            f"{name} has been {verb} for {age:.0f} s (attempt {attempts}; deadline {settings.SWEEP_STEP_DEADLINE} s)",
        )
    if not live.known or step_lease_key(run_id, name) in live.held:
        return None  # a live session is executing it
    if running and age >= settings.SWEEP_LIVENESS_GRACE:
        # The lease is taken before the attempt is recorded and released after its end is: a running attempt whose
        # lease no session holds has lost its worker (killed, or cut off and its session ended).
        return Problem(
            "dead",
            name,
            f"{name} has been running for {age:.0f} s (attempt {attempts}) and no live worker holds it",
        )
    if not running and age >= settings.STEP_RETRY_BACKOFF_MAX + settings.SWEEP_LIVENESS_GRACE:
        lost = _message_lost(since, now=now, live=live)
        if lost:
            return Problem("lost", name, f"{name} has been waiting for a retry for {age:.0f} s; {lost}")
    return None


def _message_lost(handoff: dt.datetime, *, now, live: Liveness) -> str | None:
    """Why the message sent at ``handoff`` is lost, or None while it may still be on its way."""
    if live.delivered_before is not None and handoff < live.delivered_before:
        return "messages sent after its own have been taken by workers (its worker died, or the broker lost it)"
    idle = (now - max(handoff, live.last_begin or handoff)).total_seconds()
    if not live.busy and idle >= settings.SWEEP_IDLE_GRACE:
        return f"no worker has begun a step for {idle:.0f} s and none is executing one"
    return None


def _diagnose_idle(facts: RunFacts, *, now, live: Liveness, idle_backoff) -> Problem | None:
    flow = facts.flow
    if flow.waiting is None or step_lease_key(facts.run_id, flow.waiting) in live.held:
        return None  # every step done (the last write ends the run), or a worker is taking the next one right now
    idle = (now - max(facts.updated_at, flow.handoff)).total_seconds()
    if idle >= settings.SWEEP_STALL_DEADLINE:
        return Problem(
            "stalled", flow.waiting, f"no step in flight and no progress for {idle:.0f} s (its next message was lost)"
        )
    lost = live.known and _message_lost(flow.handoff, now=now, live=live)
    if lost and idle >= idle_backoff(lost):
        return Problem(
            "lost", flow.waiting, f"{flow.waiting} has not begun {idle:.0f} s after the chain moved on: {lost}"
        )
    return None


def _idle_backoff(onboarding, run, reason: str) -> float:
    """With no worker consuming at all (every worker down), resuming cannot help: each resume the sweeper already
    made from the same step in a row doubles the wait, up to the stall deadline. FIFO evidence acts at once."""
    if not reason.startswith("no worker"):
        return 0.0
    recent = ProvisioningRun.objects.filter(onboarding_id=onboarding.pk).order_by("-created_at")
    in_a_row = 0
    for requested_by, start_index in recent.values_list("requested_by", "start_index")[:10]:
        if requested_by != SWEEPER or start_index != run.start_index:
            break
        in_a_row += 1
    return min(settings.SWEEP_IDLE_GRACE * 2**in_a_row, settings.SWEEP_STALL_DEADLINE)


def _interrupted_in_a_row(onboarding_id, step: str) -> int:
    """How many attempts of this step the sweeper found interrupted since an operator last started a run."""
    since = (
        ProvisioningRun.objects.filter(onboarding_id=onboarding_id)
        .exclude(requested_by=SWEEPER)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    found = StepAttempt.objects.filter(
        onboarding_id=onboarding_id,
        step=step,
        outcome=StepAttempt.Outcome.INTERRUPTED,
        ended_by=StepAttempt.EndedBy.SWEEPER,
    )
    return (found.filter(started_at__gte=since) if since else found).count()


def active_runs(*, onboarding_ids=None):
    """(onboarding, run) of every onboarding with a run in charge (or of those named): two queries, served by the
    partial index on the active rows whatever the number of tenants."""
    # Only what a diagnosis reads: building a thousand full rows (and their tenants) would cost more than the queries.
    # The tenant's slug is read only for an onboarding the sweeper acts on.
    active = Onboarding.objects.filter(run_id__isnull=False).order_by("id")
    if onboarding_ids is not None:
        active = active.filter(pk__in=onboarding_ids)
    onboardings = list(active.only("id", "tenant_id", "run_id", "provisioning_steps", "updated_at"))
    runs = ProvisioningRun.objects.only("id", "outcome", "start_index", "created_at", "enqueued_at").in_bulk(
        [ob.run_id for ob in onboardings]
    )
    return [(ob, runs[ob.run_id]) for ob in onboardings if ob.run_id in runs]


#: an aware ISO 8601 timestamp, as the writer stamps them; anything else is read as no time, as ``_stamp`` reads it
#: (the cast is only tried on what matches, so one odd value cannot fail the whole pass's query)
_ISO_AWARE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)$"


def _ts(column: str) -> str:
    return f"CASE WHEN {column} ~ %(iso)s THEN ({column})::timestamptz END"


# run_facts() and run_flow(), over every run in charge at once: one row per run, computed from the step states by the
# database (a thousand JSON documents are neither sent nor parsed), with the same rules. A test holds the two equal.
# What costs is the work per step entry (ten per run): each is read once (jsonb_each) and reduced to its index and a
# few flags, aggregated per run into step indices and bit masks (bit i-1 for the step at index i: the steps done, and
# the steps of this run that ended). The few entries the decision then reads are looked up by name, and only their
# timestamps matched and cast. The OFFSET 0s keep each level computed once, not inlined into every reference.
#
# The latest start of the run's steps needs all of them compared, and matching the pattern costs more than the rest of
# an entry: when every start has the writer's own form (UTC, microseconds: fixed width, so the latest is the greatest
# string), the greatest is matched alone; otherwise (or if it is not a time after all) every start is matched and cast.
# Either way the latest is carried as a fixed-width UTC string with the step's index appended (later step on a tie, as
# run_flow reads them in order).
_WRITER_STAMP = "____-__-__T__:__:__.______Z"


def _latest_start(e: str) -> str:
    return f"""MAX(to_char({_ts(f"{e}.started_raw")} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                  || chr(64 + {e}.i) COLLATE "C")"""


_ENTRIES = """
        SELECT array_position(%(names)s::text[], j.key) AS i,
               COALESCE(j.value ->> 'run_id' = run.id::text, false) AS mine,
               COALESCE(j.value ->> 'status', %(pending)s) AS status,
               NULLIF(j.value ->> 'finished_at', '') IS NOT NULL AS has_end,
               NULLIF(j.value ->> 'started_at', '') AS started_raw
        FROM jsonb_each(CASE jsonb_typeof(o.provisioning_steps) WHEN 'object' THEN o.provisioning_steps
          ELSE '{}'::jsonb END) AS j
        -- anything but an object reads as a pending entry, as normalised() reads it: none of its flags count
        WHERE jsonb_typeof(j.value) = 'object'
"""

_FACTS_SQL = f"""
SELECT o.id, run.id, run.created_at, run.enqueued_at, o.updated_at, COALESCE(f.began, false),
       f.in_flight_i IS NOT NULL,
       (%(names)s::text[])[f.in_flight_i], g.in_flight ->> 'status',
       -- a running step's start is most often the run's latest, already cast
       CASE WHEN g.since_raw = left(f.latest, -1) THEN f.began_at ELSE {_ts("g.since_raw")} END,
       CASE WHEN jsonb_typeof(g.in_flight -> 'attempts') = 'number' THEN (g.in_flight ->> 'attempts')::numeric END,
       (%(names)s::text[])[f.active_i],
       CASE WHEN f.active_i = f.in_flight_i THEN g.in_flight ->> 'status' ELSE g.active_status END,
       CASE WHEN f.last_end_i IS NULL THEN COALESCE(run.enqueued_at, run.created_at) ELSE g.handoff END,
       (%(names)s::text[])[f.waiting_i],
       f.began_at,
       CASE WHEN f.began_at IS NULL THEN NULL
         WHEN f.began_end_i IS NULL THEN COALESCE(run.enqueued_at, run.created_at)
         -- most often the same step as the handoff
         WHEN f.began_end_i = f.last_end_i THEN g.handoff
         ELSE {_ts("g.began_handoff_raw")} END
FROM {Onboarding._meta.db_table} o
JOIN {ProvisioningRun._meta.db_table} run ON run.id = o.run_id
CROSS JOIN LATERAL (
  SELECT b.*,
         -- the first step not done (an absent entry is pending): the lowest bit not set in done_mask
         NULLIF(strpos(reverse(COALESCE(b.done_mask, 0)::bit(%(n)s)::text), '0'), 0) AS waiting_i,
         left(b.latest, -1)::timestamptz AS began_at,
         -- the last step of this run that ended before the latest one it began: the highest bit below it in ends_mask
         %(n)s + 1 - NULLIF(strpos(
           (COALESCE(b.ends_mask, 0) & ((1 << (ascii(right(b.latest, 1)) - 65)) - 1))::bit(%(n)s)::text, '1'), 0)
           AS began_end_i
  FROM (
    SELECT a.*,
           CASE WHEN NOT a.writer_stamps OR left(a.greatest_start, -1) !~ %(iso)s
             THEN (SELECT {_latest_start("r")} FROM ({_ENTRIES}) r WHERE r.mine AND r.i IS NOT NULL)
             ELSE a.greatest_start END AS latest
    FROM (
      SELECT bool_or(mine) AS began,
             MIN(i) FILTER (WHERE in_flight) AS in_flight_i,
             MIN(i) FILTER (WHERE in_flight AND mine) AS active_i,
             MAX(i) FILTER (WHERE ends) AS last_end_i,
             BIT_OR(1 << (i - 1)) FILTER (WHERE ends) AS ends_mask,
             BIT_OR(1 << (i - 1)) FILTER (WHERE done) AS done_mask,
             COALESCE(bool_and(writer_stamp) FILTER (WHERE mine AND started_raw IS NOT NULL), true) AS writer_stamps,
             MAX(started_raw || chr(64 + i) COLLATE "C") FILTER (WHERE mine AND writer_stamp) AS greatest_start
      FROM (
        SELECT i, mine, started_raw, status = ANY(%(active_states)s) AS in_flight, status = ANY(%(done_states)s) AS done,
               mine AND status = ANY(%(done_states)s) AND has_end AS ends, started_raw LIKE %(writer_stamp)s AS writer_stamp
        FROM ({_ENTRIES} OFFSET 0) e
        WHERE i IS NOT NULL
        OFFSET 0
      ) s
    ) a
    OFFSET 0
  ) b
  OFFSET 0
) f
CROSS JOIN LATERAL (
  SELECT h.*,
         CASE h.in_flight ->> 'status'
           WHEN %(waiting)s THEN NULLIF(h.in_flight ->> 'waiting_since', '')
           WHEN %(running)s THEN NULLIF(h.in_flight ->> 'started_at', '')
           ELSE COALESCE(NULLIF(h.in_flight ->> 'finished_at', ''), NULLIF(h.in_flight ->> 'started_at', '')) END
           AS since_raw,
         {_ts("h.handoff_raw")} AS handoff
  FROM (
    SELECT o.provisioning_steps -> (%(names)s::text[])[f.in_flight_i] AS in_flight,
           CASE WHEN f.active_i <> f.in_flight_i
             THEN o.provisioning_steps -> (%(names)s::text[])[f.active_i] ->> 'status' END AS active_status,
           NULLIF(o.provisioning_steps -> (%(names)s::text[])[f.last_end_i] ->> 'finished_at', '') AS handoff_raw,
           CASE WHEN f.began_end_i <> f.last_end_i
             THEN NULLIF(o.provisioning_steps -> (%(names)s::text[])[f.began_end_i] ->> 'finished_at', '') END
             AS began_handoff_raw
    OFFSET 0
  ) h
  OFFSET 0
) g
WHERE o.run_id IS NOT NULL AND run.outcome = %(active)s
ORDER BY o.id
"""


def active_run_facts() -> list[RunFacts]:
    """:class:`RunFacts` of every run in charge, in one query (PostgreSQL)."""
    params = {
        "active": ProvisioningRun.Outcome.ACTIVE.value,
        "pending": StepStatus.PENDING.value,
        "waiting": StepStatus.WAITING.value,
        "running": StepStatus.RUNNING.value,
        "active_states": sorted(str(s) for s in ACTIVE),
        "done_states": sorted(str(s) for s in DONE),
        "names": list(STEP_NAMES),
        "iso": _ISO_AWARE,
        "n": len(STEP_NAMES),
        "writer_stamp": _WRITER_STAMP,
    }
    with connection.cursor() as cursor:
        cursor.execute(_FACTS_SQL, params)
        rows = cursor.fetchall()
    facts = []
    for row in rows:
        ob_id, run_id, created_at, enqueued_at, updated_at, began, any_in_flight = row[:7]
        name, status, since, attempts, active, active_status, handoff, waiting, began_at, began_handoff = row[7:]
        in_flight = (name, status, since, int(attempts) if attempts is not None else 0) if any_in_flight else None
        flow = Flow(active, handoff, waiting, began_at, began_handoff, active_status == StepStatus.RUNNING)
        facts.append(RunFacts(ob_id, run_id, created_at, enqueued_at, updated_at, began, in_flight, flow))
    return facts


def sweep(*, now: dt.datetime | None = None) -> list[SweepAction]:
    """One pass over every onboarding with a run in charge. Returns what it did (and what it left alone)."""
    now = now or timezone.now()
    if connection.vendor == "postgresql":
        # Every run is diagnosed from the facts the database computed for it; only a run found with a problem is
        # read whole (and diagnosed again from its row, then again under its lock before anything is done). The
        # FIFO evidence needs every run's flow, which the facts carry.
        facts = active_run_facts()
        live = _liveness_of([(f.run_id, f.flow) for f in facts], held_lease_keys(), now=now)
        # A "lost" message waits out the idle backoff, which reads the run's history: taken as zero here, it can only
        # send a run to the full diagnosis, never skip one.
        found = {
            f.onboarding_id: f.run_id for f in facts if _decide(f, now=now, live=live, idle_backoff=lambda lost: 0.0)
        }
        # Only the run found with the problem: one that took its place since (another sweeper resumed it) was not
        # diagnosed in this pass's liveness, and is some other pass's business.
        pairs = (
            [(ob, run) for ob, run in active_runs(onboarding_ids=list(found)) if found[ob.pk] == run.pk]
            if found
            else []
        )
    else:
        pairs = active_runs()
        live = liveness(pairs, now=now)
    actions = []
    for onboarding, run in pairs:
        action = sweep_onboarding(onboarding, run=run, now=now, live=live)
        if action:
            actions.append(action)
    return actions


def sweep_onboarding(
    onboarding: Onboarding,
    *,
    run: ProvisioningRun | None = None,
    now: dt.datetime | None = None,
    live: Liveness | None = None,
) -> SweepAction | None:
    now = now or timezone.now()
    run = run or ProvisioningRun.objects.filter(pk=onboarding.run_id).first()
    if run is None:
        return None
    problem = diagnose(onboarding, run, now=now, live=live)
    if problem is None:
        return None
    live = live or liveness([(onboarding, run)], now=now)
    slug = onboarding.tenant.slug
    stuck_entry = normalised(onboarding.provisioning_steps).get(problem.step or "", {})
    if problem.kind == "stuck" and stuck_entry.get("status") == StepStatus.RUNNING:
        # Outside the write: a session-level probe of the step's lease, held by whoever runs the step.
        if live.with_probe(run.id, problem.step).held & {step_lease_key(run.id, problem.step)}:
            return SweepAction(
                slug, "left", problem.kind, f"{problem.detail}; its lease is still held by a live session"
            )
    # Only a step that keeps dying while it runs (a poison step: it crashes or exhausts its worker every time) is
    # marked. A lost message (never enqueued, stalled, a retry that never came) is always resumed: doing so is safe,
    # and a false alarm under a long queue only costs a message that fencing discards.
    mark = (
        problem.kind in ("stuck", "dead")
        and stuck_entry.get("status") == StepStatus.RUNNING
        and _interrupted_in_a_row(onboarding.pk, problem.step) >= settings.SWEEP_MAX_RESUMES
    )
    try:
        written = onboarding_write(
            onboarding.pk,
            run_id=run.id,
            change=lambda ob, steps: _resolve(ob, steps, run=run, problem=problem, mark=mark, now=now, live=live),
            log_step=problem.step or "",
            log_level=StepLog.Level.WARNING,
        )
    except (Stale, _Moved):
        return None
    action, new_run = written.result
    detail = problem.detail
    if new_run is not None:
        detail += f"; new run {new_run.id} from {STEP_NAMES[new_run.start_index]}"
    logger.warning("sweeper %s %s: %s", action, slug, detail)
    return SweepAction(slug, action, problem.kind, detail)


MESSAGES = {
    "marked": "the sweeper stopped the run: {detail}; continue runs it again",
    "resumed": "the sweeper resumed the onboarding as a new run: {detail}",
    "ended": "the sweeper ended the run: every step is done ({detail})",
}


def _resolve(ob, steps, *, run: ProvisioningRun, problem: Problem, mark: bool, now, live: Liveness) -> Changed:
    """The sweeper's change, under the row lock. Its result: the action taken and the new run (or None)."""
    # The claim: the one writer locked the row and checked that the run is still in charge; the problem must still
    # be there on the locked row, or someone else (a worker, another sweeper) got there first. The step's lease is
    # probed again under the row lock: a worker that took it since the pass began cannot record its attempt before
    # this write ends, and then finds its run superseded.
    again = diagnose(ob, ProvisioningRun.objects.get(pk=run.pk), now=now, live=live.with_probe(run.id, problem.step))
    if again is None or (again.kind, again.step) != (problem.kind, problem.step):
        raise _Moved()
    entry = steps.get(problem.step) if problem.step else None
    error = {"type": "Interrupted", "message": f"interrupted: {again.detail}", "engine_status": None}
    if mark:
        error["message"] += (
            f"; the sweeper already resumed it {settings.SWEEP_MAX_RESUMES} times in a row: look at the workers, then "
            "continue"
        )
    if entry and entry["status"] == StepStatus.RUNNING:
        # The attempt that began never ended: say so, so that every attempt has an end.
        step_log_row(
            ob,
            problem.step,
            entry["attempts"],
            f"attempt {entry['attempts']} interrupted: its worker was lost {FOUND_BY_SWEEPER}",
            StepLog.Level.WARNING,
        )
        attempt_close(
            ob,
            entry,
            step=problem.step,
            outcome=StepAttempt.Outcome.INTERRUPTED,
            ended_by=StepAttempt.EndedBy.SWEEPER,
            error=error,
        )
    if entry is not None and entry["status"] not in DONE:
        steps[problem.step] = {
            **entry,
            "status": StepStatus.FAILED.value if mark else entry["status"],
            "finished_at": now_iso() if entry["status"] in ACTIVE else entry["finished_at"],
            "error": error,
        }
    if mark:
        run_end(ob, ProvisioningRun.Outcome.STOPPED)
        action, new_run = "marked", None
    else:
        new_run = run_resume(ob, steps, requested_by=SWEEPER)
        action = "resumed" if new_run else "ended"
    return Changed(steps, result=(action, new_run), log=MESSAGES[action].format(detail=problem.detail))
