//! The stack lock: tracked runs of a stack start one at a time, in order,
//! and a run waiting for confirmation holds the lock; proposed runs start
//! at once. Also what may and may not move a run.

use gantry_domain::report::Write;
use gantry_domain::run::{Command, Kind, State};
use gantry_store::integrations::{self, Integration, TokenFacts};
use gantry_store::outbox::{self, Outcome};
use gantry_store::runs::{self, Created, NewRun};
use gantry_store::stacks;
use gantry_store::testing::TestStore;
use gantry_store::{Millis, spaces};

use gantry_store::on_both_databases;

on_both_databases!(
    TestStore;
    tracked_runs_take_turns_and_proposed_runs_do_not,
    a_lost_worker_fails_its_run_and_frees_the_stack,
    outbox_leases_hold_a_key_until_finished_or_released,
    outbox_claims_the_newest_write_of_each_key_when_it_may_go,
    a_bad_stored_value_is_an_error_that_names_its_row,
    a_run_held_back_keeps_the_runs_after_it_waiting,
    housekeeping_prunes_what_aged_and_keeps_what_is_live,
    the_tail_of_a_log_is_its_end,
    a_commit_that_records_writes_wakes_every_outbox,
    many_runs_at_once_are_what_one_at_a_time_makes,
);

pub async fn setup(db: &TestStore) {
    let now = Millis::now();
    let mut tx = db.store.begin().await.expect("tx");
    spaces::insert(&mut tx, "root", "root", None, now)
        .await
        .expect("root");
    let integration = Integration {
        id: "main".into(),
        name: "Main".into(),
        space_id: "root".into(),
        is_default: true,
        api_host_url: "https://gitlab.example.com".into(),
        user_facing_host_url: "https://gitlab.example.com".into(),
        labels: Vec::new(),
        description: String::new(),
        token_sealed: "v1:x:y".into(),
        token: TokenFacts {
            scopes: vec!["api".into()],
            expires_at: None,
            user_id: 1,
            username: "bot".into(),
        },
        warnings: Vec::new(),
        webhook_secret_sealed: "v1:x:z".into(),
        previous_secret_sealed: None,
        previous_secret_expires_at: None,
        manage_hooks: true,
        rotate_token_days_before_expiry: None,
        token_checked_at: None,
        token_rotation_started_at: None,
        created_at: now.0,
        updated_at: now.0,
    };
    integrations::insert(&mut tx, &integration)
        .await
        .expect("integration");
    for id in ["net", "dns"] {
        let stack = gantry_store::testing::stack(id, "main", 42, "infra/network", "", now);
        stacks::insert(&mut tx, &stack).await.expect("stack");
    }
    tx.commit().await.expect("commit");
}

async fn create(db: &TestStore, stack: &str, kind: Kind, commit: &str) -> String {
    let mut tx = db.store.begin().await.expect("tx");
    let new = NewRun {
        stack_id: stack,
        kind,
        commit_sha: commit,
        branch: if kind == Kind::Tracked {
            "main"
        } else {
            commit
        },
        merge_request_iid: None,
        trigger: "test",
    };
    let (run, created, _) = runs::create(&mut tx, &new, Millis::now())
        .await
        .expect("create");
    assert_eq!(created, Created::New);
    tx.commit().await.expect("commit");
    run.id
}

async fn next(db: &TestStore) -> Option<String> {
    let mut tx = db.store.begin().await.expect("tx");
    let run = runs::start_next(&mut tx, "worker w1", Millis::now())
        .await
        .expect("start");
    tx.commit().await.expect("commit");
    run.map(|run| run.id)
}

async fn command(db: &TestStore, id: &str, command: Command) {
    let mut tx = db.store.begin().await.expect("tx");
    runs::advance(&mut tx, id, command, "test", false, Millis::now())
        .await
        .expect("apply")
        .unwrap_or_else(|illegal| panic!("{illegal}"));
    tx.commit().await.expect("commit");
}

async fn tracked_runs_take_turns_and_proposed_runs_do_not(db: TestStore) {
    let db = &db;
    setup(db).await;
    let t1 = create(db, "net", Kind::Tracked, "a1").await;
    let t2 = create(db, "net", Kind::Tracked, "a2").await;
    let other = create(db, "dns", Kind::Tracked, "b1").await;
    let p1 = create(db, "net", Kind::Proposed, "c1").await;
    let p2 = create(db, "net", Kind::Proposed, "c2").await;

    assert_eq!(
        next(db).await.as_deref(),
        Some(t1.as_str()),
        "the oldest first"
    );
    // t2 waits for t1; another stack's tracked run and proposed runs do not.
    assert_eq!(next(db).await.as_deref(), Some(other.as_str()));
    assert_eq!(next(db).await.as_deref(), Some(p1.as_str()));
    assert_eq!(next(db).await.as_deref(), Some(p2.as_str()));
    assert_eq!(next(db).await, None, "t2 waits for the lock");

    // Waiting for confirmation still holds the lock.
    command(db, &t1, Command::Plan).await;
    command(db, &t1, Command::Planned { changes: true }).await;
    assert_eq!(next(db).await, None);
    command(db, &t1, Command::Discard).await;
    assert_eq!(
        next(db).await.as_deref(),
        Some(t2.as_str()),
        "released on discard"
    );

    // A terminal run never moves again.
    let mut tx = db.store.begin().await.expect("tx");
    let refused = runs::advance(&mut tx, &t1, Command::Confirm, "late", false, Millis::now())
        .await
        .expect("apply");
    assert!(refused.is_err());
    let transitions = runs::transitions(&mut tx, &t1).await.expect("transitions");
    let states: Vec<&str> = transitions.iter().map(|t| t.state.as_str()).collect();
    assert_eq!(
        states,
        [
            "queued",
            "preparing",
            "planning",
            "unconfirmed",
            "discarded"
        ]
    );
}

async fn a_lost_worker_fails_its_run_and_frees_the_stack(db: TestStore) {
    let db = &db;
    setup(db).await;
    let t1 = create(db, "net", Kind::Tracked, "a1").await;
    let t2 = create(db, "net", Kind::Tracked, "a2").await;
    let now = Millis::now();
    let mut tx = db.store.begin().await.expect("tx");
    let taken = runs::start_next(&mut tx, "worker w1", now)
        .await
        .expect("start")
        .expect("a run");
    assert_eq!(taken.id, t1);
    runs::lease(
        &mut tx,
        &t1,
        "w1",
        now.plus(std::time::Duration::from_secs(30)),
    )
    .await
    .expect("lease");
    tx.commit().await.expect("commit");
    assert_eq!(next(db).await, None, "t1 holds the lock");

    // Heartbeats keep it; before the lease lapses nothing is reaped.
    let mut conn = db.store.conn().await.expect("conn");
    assert!(
        runs::heartbeat(
            &mut conn,
            &t1,
            "w1",
            now.plus(std::time::Duration::from_secs(30))
        )
        .await
        .expect("hb")
    );
    assert!(
        !runs::heartbeat(
            &mut conn,
            &t1,
            "w2",
            now.plus(std::time::Duration::from_secs(30))
        )
        .await
        .expect("hb")
    );
    drop(conn);
    assert!(
        runs::reap_lost(&db.store, now)
            .await
            .expect("reap")
            .is_empty()
    );

    // The worker dies: once the lease lapses the run fails and frees the stack.
    let later = now.plus(std::time::Duration::from_secs(60));
    let lost = runs::reap_lost(&db.store, later).await.expect("reap");
    assert_eq!(lost, [t1.as_str()]);
    let mut conn = db.store.conn().await.expect("conn");
    let failed = runs::get(&mut conn, &t1).await.expect("get").expect("run");
    assert_eq!(failed.state, State::Failed);
    assert!(
        failed
            .reason
            .as_deref()
            .unwrap_or("")
            .starts_with("worker lost"),
        "{failed:?}"
    );
    drop(conn);
    assert_eq!(next(db).await.as_deref(), Some(t2.as_str()));
}

/// A run's GitLab writes are leased per key: another server gets none of
/// them while the lease holds, the newest one once it is released, and
/// nothing more once it is delivered.
async fn outbox_leases_hold_a_key_until_finished_or_released(db: TestStore) {
    let db = &db;
    setup(db).await;
    let run = create(db, "net", Kind::Tracked, "c1").await;
    next(db).await.expect("started");
    let until = Millis::now().plus(std::time::Duration::from_secs(60));
    let a = outbox::claim(&db.store, "server a", until, 10, Millis::now())
        .await
        .expect("claim");
    // `queued` was superseded by `preparing`: one status write for the key.
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(
        (a[0].run_id.as_str(), a[0].state.as_str()),
        (run.as_str(), "preparing")
    );
    let b = outbox::claim(&db.store, "server b", until, 10, Millis::now())
        .await
        .expect("claim");
    assert!(b.is_empty(), "leased by a: {b:?}");
    // Only the holder renews its lease (while GitLab is slow to answer).
    let mut renewing = db.store.conn().await.expect("conn");
    assert!(
        !outbox::renew(&mut renewing, a[0].id, "server b", until)
            .await
            .expect("renew")
    );
    assert!(
        outbox::renew(&mut renewing, a[0].id, "server a", until)
            .await
            .expect("renew")
    );
    drop(renewing);

    let mut conn = db.store.conn().await.expect("conn");
    assert_eq!(
        outbox::release(&mut conn, "server a")
            .await
            .expect("release"),
        1
    );
    let b = outbox::claim(&db.store, "server b", until, 10, Millis::now())
        .await
        .expect("claim");
    assert_eq!(b.len(), 1, "released by a: {b:?}");
    // A stale owner cannot record an outcome; the lease holder can.
    outbox::finish(
        &mut conn,
        b[0].id,
        "server a",
        &Outcome::Delivered,
        Millis::now(),
    )
    .await
    .expect("finish");
    assert_eq!(
        outbox::release(&mut conn, "server b")
            .await
            .expect("release"),
        1
    );
    let b = outbox::claim(&db.store, "server b", until, 10, Millis::now())
        .await
        .expect("claim");
    outbox::finish(
        &mut conn,
        b[0].id,
        "server b",
        &Outcome::Delivered,
        Millis::now(),
    )
    .await
    .expect("finish");
    let again = outbox::claim(&db.store, "server c", until, 10, Millis::now())
        .await
        .expect("claim");
    assert!(again.is_empty(), "delivered once: {again:?}");
}

async fn claim_all(db: &TestStore, owner: &str) -> Vec<outbox::Entry> {
    let until = Millis::now().plus(std::time::Duration::from_secs(60));
    outbox::claim(&db.store, owner, until, 10, Millis::now())
        .await
        .expect("claim")
}

async fn finish(db: &TestStore, entry: &outbox::Entry, owner: &str, outcome: Outcome) {
    let mut conn = db.store.conn().await.expect("conn");
    outbox::finish(&mut conn, entry.id, owner, &outcome, Millis::now())
        .await
        .expect("finish");
}

async fn outbox_claims_the_newest_write_of_each_key_when_it_may_go(db: TestStore) {
    let db = &db;
    setup(db).await;
    let net = create(db, "net", Kind::Tracked, "c1").await;
    let dns = create(db, "dns", Kind::Tracked, "c1").await;
    next(db).await.expect("net starts");
    next(db).await.expect("dns starts");

    // Four pending status writes on two keys: the newest of each goes, the
    // older ones are superseded.
    let mut claimed = claim_all(db, "a").await;
    claimed.sort_by(|x, y| x.run_id.cmp(&y.run_id));
    let mut expected = vec![net.clone(), dns.clone()];
    expected.sort();
    let got: Vec<&str> = claimed.iter().map(|entry| entry.run_id.as_str()).collect();
    assert_eq!(got, expected);
    assert!(claimed.iter().all(|entry| entry.state == State::Preparing));
    assert!(claimed.iter().all(|entry| entry.kind == Write::Status));
    for entry in &claimed {
        finish(db, entry, "a", Outcome::Delivered).await;
    }
    assert!(claim_all(db, "a").await.is_empty(), "nothing is sent twice");

    // A write waiting for its retry holds the newer writes of its key.
    command(db, &net, Command::Plan).await;
    let planning = claim_all(db, "a").await;
    assert_eq!(planning.len(), 1, "{planning:?}");
    assert_eq!(planning[0].state, State::Planning);
    let later = Millis::now().plus(std::time::Duration::from_secs(600));
    let retry = Outcome::Retry {
        at: later,
        error: "GitLab is slow".into(),
    };
    finish(db, &planning[0], "a", retry).await;
    command(db, &net, Command::Planned { changes: false }).await;
    assert!(
        claim_all(db, "a").await.is_empty(),
        "the key waits for its retry"
    );

    // A paused integration sends nothing until it is healthy again.
    let mut conn = db.store.conn().await.expect("conn");
    outbox::mark_unhealthy(&mut conn, "main", "401", Millis::now())
        .await
        .expect("pause");
    command(db, &dns, Command::Plan).await;
    assert!(claim_all(db, "a").await.is_empty(), "paused");
    outbox::mark_healthy(&mut conn, "main")
        .await
        .expect("resume");
    let resumed = claim_all(db, "a").await;
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(
        (resumed[0].run_id.as_str(), resumed[0].state),
        (dns.as_str(), State::Planning)
    );
}

async fn a_bad_stored_value_is_an_error_that_names_its_row(db: TestStore) {
    let db = &db;
    setup(db).await;
    let run = create(db, "net", Kind::Tracked, "c1").await;
    let mut conn = db.store.conn().await.expect("conn");
    for (sql, id, expected) in [
        (
            "UPDATE stacks SET labels = 'not json' WHERE id = 'net'",
            "net",
            "stacks row \"net\" holds a bad `labels`",
        ),
        (
            "UPDATE stacks SET labels = '[]', additional_project_globs = '[\"a/[b\"]' WHERE id = 'net'",
            "net",
            "stacks row \"net\" holds a bad `additional_project_globs`",
        ),
        (
            "UPDATE stacks SET additional_project_globs = '[]', vendor = '{\"kind\":\"ansible\"}' WHERE id = 'net'",
            "net",
            "stacks row \"net\" holds a bad `vendor`",
        ),
    ] {
        sqlx::query(sql).execute(&mut *conn).await.expect("plant");
        let error = stacks::get(&mut conn, id).await.expect_err("refused");
        assert!(error.to_string().contains(expected), "{error}");
    }
    sqlx::query("UPDATE runs SET state = 'exploded' WHERE id = $1")
        .bind(&run)
        .execute(&mut *conn)
        .await
        .expect("plant");
    let error = runs::get(&mut conn, &run).await.expect_err("refused");
    assert_eq!(
        error.to_string(),
        format!("runs row {run:?} holds a bad `state`: \"exploded\" is not a known value")
    );
    // Nothing was changed by reading: the row is as planted.
    let (state,): (String,) = sqlx::query_as("SELECT state FROM runs WHERE id = $1")
        .bind(&run)
        .fetch_one(&mut *conn)
        .await
        .expect("read");
    assert_eq!(state, "exploded");
}

/// A run handed back until later is not taken before then, and the
/// tracked runs of its stack queued after it wait too.
async fn a_run_held_back_keeps_the_runs_after_it_waiting(db: TestStore) {
    let db = &db;
    setup(db).await;
    let t1 = create(db, "net", Kind::Tracked, "a1").await;
    let t2 = create(db, "net", Kind::Tracked, "a2").await;
    assert_eq!(next(db).await.as_deref(), Some(t1.as_str()));
    command(db, &t1, Command::HandBack).await;
    let mut conn = db.store.conn().await.expect("conn");
    let hour = std::time::Duration::from_secs(3600);
    runs::set_not_before(&mut conn, &t1, Millis::now().plus(hour))
        .await
        .expect("hold");
    assert_eq!(next(db).await, None, "t1 is held back, t2 keeps its turn");
    runs::set_not_before(&mut conn, &t1, Millis(Millis::now().0 - 1))
        .await
        .expect("release");
    drop(conn);
    assert_eq!(next(db).await.as_deref(), Some(t1.as_str()));
    command(db, &t1, Command::Fail).await;
    assert_eq!(next(db).await.as_deref(), Some(t2.as_str()));
}

async fn housekeeping_prunes_what_aged_and_keeps_what_is_live(db: TestStore) {
    use gantry_store::housekeeping::{self, Retention};
    let db = &db;
    setup(db).await;
    let ended = create(db, "net", Kind::Tracked, "a1").await;
    let live = create(db, "dns", Kind::Tracked, "b1").await;
    next(db).await.expect("start");
    next(db).await.expect("start");
    let mut conn = db.store.conn().await.expect("conn");
    let until = Millis::now().plus(std::time::Duration::from_secs(60));
    for run in [&ended, &live] {
        runs::lease(&mut conn, run, "w1", until)
            .await
            .expect("lease");
        runs::append_log(&mut conn, run, "w1", "output\n", Millis::now())
            .await
            .expect("log");
    }
    command(db, &ended, Command::Fail).await;
    // The newest write of each key is sent; older ones are superseded.
    for entry in claim_all(db, "a").await {
        finish(db, &entry, "a", Outcome::Delivered).await;
    }
    command(db, &live, Command::Plan).await;
    sqlx::query(
        "INSERT INTO jobs (kind, payload, state, max_attempts, run_at, created_at, updated_at) \
         VALUES ('x', '{}', 'done', 1, 0, $1, $1), ('x', '{}', 'dead', 1, 0, $1, $1)",
    )
    .bind(Millis::now().0)
    .execute(&mut *conn)
    .await
    .expect("jobs");

    let day = std::time::Duration::from_secs(24 * 3600);
    let retention = Retention {
        deliveries: day * 7,
        run_logs: day * 90,
    };
    let soon = housekeeping::prune(&db.store, retention, Millis::now())
        .await
        .expect("prune");
    assert!(soon.is_empty(), "{soon:?}");
    let later = Millis::now().plus(day * 100);
    let pruned = housekeeping::prune(&db.store, retention, later)
        .await
        .expect("prune");
    assert_eq!((pruned.run_logs, pruned.jobs), (1, 1), "{pruned:?}");
    assert!(pruned.outbox_writes >= 2, "{pruned:?}");
    assert_eq!(runs::log(&mut conn, &ended).await.expect("log"), "");
    assert_eq!(runs::log(&mut conn, &live).await.expect("log"), "output\n");
    // The live run's newest write is still pending, and still goes.
    let pending = claim_all(db, "a").await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        (pending[0].run_id.as_str(), pending[0].state),
        (live.as_str(), State::Planning)
    );
    let (dead,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE state = 'dead'")
        .fetch_one(&mut *conn)
        .await
        .expect("count");
    assert_eq!(dead, 1, "dead jobs stay for the operator");
}

async fn the_tail_of_a_log_is_its_end(db: TestStore) {
    let db = &db;
    setup(db).await;
    let run = create(db, "net", Kind::Tracked, "a1").await;
    next(db).await.expect("start");
    let mut conn = db.store.conn().await.expect("conn");
    let until = Millis::now().plus(std::time::Duration::from_secs(60));
    runs::lease(&mut conn, &run, "w1", until)
        .await
        .expect("lease");
    assert_eq!(
        runs::log_tail(&mut conn, &run, 100).await.expect("tail"),
        (String::new(), -1, false)
    );
    let mut whole = String::new();
    for n in 0..30 {
        let chunk = format!("line {n:02} é\n");
        runs::append_log(&mut conn, &run, "w1", &chunk, Millis::now())
            .await
            .expect("log");
        whole.push_str(&chunk);
    }
    let (all, last, cut) = runs::log_tail(&mut conn, &run, 10_000).await.expect("tail");
    assert_eq!((all.as_str(), last, cut), (whole.as_str(), 29, false));
    let (end, last, cut) = runs::log_tail(&mut conn, &run, 25).await.expect("tail");
    assert!(
        whole.ends_with(&end) && end.len() <= 25 && end.len() >= 22,
        "{end:?}"
    );
    assert_eq!((last, cut), (29, true));
}

/// A run's writes to GitLab wake the outbox of this process and, on
/// PostgreSQL, of every other process on the database.
async fn a_commit_that_records_writes_wakes_every_outbox(db: TestStore) {
    let db = &db;
    setup(db).await;
    let other = gantry_store::Store::connect(&db.url)
        .await
        .expect("second store");
    let stores = if db.store.backend() == gantry_store::Backend::Postgres {
        vec![&db.store, &other]
    } else {
        vec![&db.store]
    };
    for woken in stores {
        let notified = woken.outbox_signal().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Let the other store's listener settle before the commit.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        create(db, "net", Kind::Proposed, &format!("{:p}", woken)).await;
        tokio::time::timeout(std::time::Duration::from_secs(5), notified)
            .await
            .expect("the outbox is woken");
    }
}

fn new_run<'a>(
    stack: &'a str,
    kind: Kind,
    commit: &'a str,
    branch: &'a str,
    iid: Option<u64>,
) -> NewRun<'a> {
    NewRun {
        stack_id: stack,
        kind,
        commit_sha: commit,
        branch,
        merge_request_iid: iid,
        trigger: "test",
    }
}

async fn writes_of(db: &TestStore, run: &str) -> Vec<String> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, key FROM outbox WHERE run_id = $1 ORDER BY kind")
            .bind(run)
            .fetch_all(db.store.pool())
            .await
            .expect("outbox");
    rows.into_iter()
        .map(|(kind, key)| format!("{kind} {key}"))
        .collect()
}

async fn many_runs_at_once_are_what_one_at_a_time_makes(db: TestStore) {
    let db = &db;
    setup(db).await;
    let older = create(db, "net", Kind::Proposed, "c1").await;
    let now = Millis::now();
    let mut tx = db.store.begin().await.expect("tx");
    let made = runs::create_all(
        &mut tx,
        &[
            new_run("net", Kind::Tracked, "a1", "main", None),
            new_run("dns", Kind::Tracked, "a1", "main", None),
            new_run("net", Kind::Proposed, "c2", "c1", Some(7)),
        ],
        now,
    )
    .await
    .expect("create all");
    tx.commit().await.expect("commit");
    assert_eq!(made.len(), 3);
    let ids: Vec<String> = made.iter().map(|(run, _, _)| run.id.clone()).collect();
    for ((run, created, _), (stack, commit)) in
        made.iter()
            .zip([("net", "a1"), ("dns", "a1"), ("net", "c2")])
    {
        assert_eq!(*created, Created::New);
        assert_eq!(
            (run.stack_id.as_str(), run.commit_sha.as_str()),
            (stack, commit)
        );
        let mut conn = db.store.conn().await.expect("conn");
        let stored = runs::get(&mut conn, &run.id)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(&stored, run, "what it answers is what it stored");
        let transitions = runs::transitions(&mut conn, &run.id)
            .await
            .expect("transitions");
        assert_eq!(transitions.len(), 1);
        assert_eq!(transitions[0].state, State::Queued);
    }
    assert_eq!(
        made[2].2,
        [older],
        "the new proposed run supersedes the older one"
    );
    assert_eq!(
        writes_of(db, &ids[0]).await,
        ["status status:42:a1:main:net"]
    );
    assert_eq!(
        writes_of(db, &ids[2]).await,
        ["note note:42:7:net", "status status:42:c2:c1:net"]
    );

    // Existing runs come back as they are, new ones are made, in order,
    // also when the same run is asked for twice.
    let mut tx = db.store.begin().await.expect("tx");
    let again = runs::create_all(
        &mut tx,
        &[
            new_run("dns", Kind::Tracked, "a1", "main", None),
            new_run("net", Kind::Tracked, "a2", "main", None),
            new_run("net", Kind::Tracked, "a2", "main", None),
        ],
        Millis::now(),
    )
    .await
    .expect("create all");
    tx.commit().await.expect("commit");
    let summary: Vec<(Created, &str)> = again
        .iter()
        .map(|(run, how, _)| (*how, run.commit_sha.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (Created::Existing, "a1"),
            (Created::New, "a2"),
            (Created::Existing, "a2")
        ]
    );
    assert_eq!(again[0].0.id, ids[1]);
    assert_eq!(again[1].0.id, again[2].0.id);
    let mut tx = db.store.begin().await.expect("tx");
    let mixed = runs::create_all(
        &mut tx,
        &[
            new_run("dns", Kind::Tracked, "a1", "main", None),
            new_run("dns", Kind::Tracked, "a3", "main", None),
        ],
        Millis::now(),
    )
    .await
    .expect("create all");
    tx.commit().await.expect("commit");
    assert_eq!(mixed[0].1, Created::Existing);
    assert_eq!(mixed[0].0.id, ids[1]);
    assert_eq!(mixed[1].1, Created::New);
    assert_eq!(
        writes_of(db, &ids[1]).await.len(),
        1,
        "an existing run writes nothing again"
    );
}
