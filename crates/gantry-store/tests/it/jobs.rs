use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use gantry_store::jobs::{self, EnqueueError, Failed, NewJob};
use gantry_store::testing::TestStore;
use gantry_store::{Millis, Store};
use serde_json::json;

use crate::reconnect;
use gantry_store::on_both_databases;

on_both_databases!(
    TestStore;
    eight_concurrent_claimers_never_share_a_job,
    a_lapsed_lease_is_requeued_and_the_old_lease_is_void,
    failed_jobs_retry_with_backoff_then_die,
    duplicate_idempotency_keys_are_refused,
    jobs_enqueued_in_a_rolled_back_transaction_vanish,
    a_waiting_claimer_wakes_on_commit_from_another_server,
    a_batch_completes_together_or_not_at_all,
);

const LEASE: Duration = Duration::from_secs(30);

/// The oldest due job, as a worker of batches of one takes it.
async fn claim(
    store: &Store,
    kinds: &[&str],
    owner: &str,
    lease_for: Duration,
    now: Millis,
) -> Result<Option<jobs::ClaimedJob>, gantry_store::StoreError> {
    Ok(jobs::claim_many(store, kinds, owner, lease_for, now, 1)
        .await?
        .pop())
}

async fn claim_or_wait(
    store: &Store,
    kinds: &[&str],
    owner: &str,
    lease_for: Duration,
    max_wait: Duration,
) -> Result<Option<jobs::ClaimedJob>, gantry_store::StoreError> {
    Ok(
        jobs::claim_many_or_wait(store, kinds, owner, lease_for, max_wait, 1)
            .await?
            .pop(),
    )
}

/// Completes a job on its own, outside any other change.
async fn complete(store: &Store, lease: &jobs::Lease, now: Millis) -> Result<(), jobs::LeaseError> {
    let mut conn = store.conn().await?;
    jobs::complete_in(&mut conn, lease, now).await
}

async fn enqueue(store: &Store, kind: &str, n: usize) {
    let mut tx = store.begin().await.expect("begin");
    for i in 0..n {
        jobs::enqueue(
            &mut tx,
            &NewJob::new(kind, json!({ "n": i })),
            Millis::now(),
        )
        .await
        .expect("enqueue");
    }
    tx.commit().await.expect("commit");
}

async fn eight_concurrent_claimers_never_share_a_job(db: TestStore) {
    let db = &db;
    enqueue(&db.store, "work", 200).await;
    let mut claimers = Vec::new();
    for worker in 0..8 {
        // Separate pools, as separate servers would have.
        let store = reconnect(db).await;
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(job) = claim(
                &store,
                &["work"],
                &format!("w{worker}"),
                LEASE,
                Millis::now(),
            )
            .await
            .expect("claim")
            {
                mine.push(job.lease.job_id);
                complete(&store, &job.lease, Millis::now())
                    .await
                    .expect("complete");
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.expect("claimer"));
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 200, "every job claimed exactly once");
    assert_eq!(unique.len(), 200);
}

async fn a_lapsed_lease_is_requeued_and_the_old_lease_is_void(db: TestStore) {
    let db = &db;
    enqueue(&db.store, "work", 1).await;
    let t0 = Millis::now();
    let first = claim(&db.store, &["work"], "w1", LEASE, t0)
        .await
        .expect("claim")
        .expect("a job");
    assert!(
        claim(&db.store, &["work"], "w2", LEASE, t0)
            .await
            .expect("claim")
            .is_none(),
        "leased"
    );

    // Heartbeats keep it; before the lease lapses the reaper leaves it alone.
    jobs::heartbeat(
        &db.store,
        &first.lease,
        LEASE,
        t0.plus(Duration::from_secs(10)),
    )
    .await
    .expect("heartbeat");
    assert_eq!(
        jobs::reap(&db.store, t0.plus(Duration::from_secs(35)))
            .await
            .expect("reap"),
        0
    );

    let lapsed = t0.plus(Duration::from_secs(41));
    assert_eq!(jobs::reap(&db.store, lapsed).await.expect("reap"), 1);
    let second = claim(&db.store, &["work"], "w2", LEASE, lapsed)
        .await
        .expect("claim")
        .expect("requeued");
    assert_eq!(second.lease.job_id, first.lease.job_id);
    assert_eq!(second.lease.attempt, 2);

    // The first claimer can no longer touch it.
    assert!(complete(&db.store, &first.lease, lapsed).await.is_err());
    assert!(
        jobs::heartbeat(&db.store, &first.lease, LEASE, lapsed)
            .await
            .is_err()
    );
    complete(&db.store, &second.lease, lapsed)
        .await
        .expect("complete");
    let row = jobs::get(
        &mut db.store.conn().await.expect("conn"),
        first.lease.job_id,
    )
    .await
    .expect("get")
    .expect("row");
    assert_eq!(row.state, "done");
}

async fn failed_jobs_retry_with_backoff_then_die(db: TestStore) {
    let db = &db;
    let mut tx = db.store.begin().await.expect("begin");
    let job = NewJob {
        max_attempts: 3,
        ..NewJob::new("flaky", json!({}))
    };
    let id = jobs::enqueue(&mut tx, &job, Millis::now())
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    let mut now = Millis::now();
    for attempt in 1..=3u32 {
        let claimed = claim(&db.store, &["flaky"], "w", LEASE, now)
            .await
            .expect("claim")
            .expect("due");
        assert_eq!(claimed.lease.attempt, attempt);
        let outcome = jobs::fail(&db.store, &claimed.lease, "boom", now)
            .await
            .expect("fail");
        if attempt < 3 {
            let due = now.plus(jobs::backoff(attempt));
            assert_eq!(outcome, Failed::Retry(due));
            // Not due before its backoff has passed.
            assert!(
                claim(&db.store, &["flaky"], "w", LEASE, Millis(due.0 - 1))
                    .await
                    .expect("claim")
                    .is_none()
            );
            now = due;
        } else {
            assert_eq!(outcome, Failed::Dead);
        }
    }
    let row = jobs::get(&mut db.store.conn().await.expect("conn"), id)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(
        (row.state.as_str(), row.attempts, row.last_error.as_deref()),
        ("dead", 3, Some("boom"))
    );
    assert!(
        claim(&db.store, &["flaky"], "w", LEASE, now.plus(LEASE * 100))
            .await
            .expect("claim")
            .is_none()
    );
}

async fn duplicate_idempotency_keys_are_refused(db: TestStore) {
    let db = &db;
    let job = NewJob {
        idempotency_key: Some("delivery:1"),
        ..NewJob::new("work", json!({}))
    };
    let mut tx = db.store.begin().await.expect("begin");
    jobs::enqueue(&mut tx, &job, Millis::now())
        .await
        .expect("first");
    tx.commit().await.expect("commit");

    let mut tx = db.store.begin().await.expect("begin");
    let err = jobs::enqueue(&mut tx, &job, Millis::now())
        .await
        .expect_err("duplicate");
    assert!(
        matches!(err, EnqueueError::Duplicate(ref key) if key == "delivery:1"),
        "{err}"
    );
    // The transaction is still usable after the refusal.
    jobs::enqueue(&mut tx, &NewJob::new("work", json!({})), Millis::now())
        .await
        .expect("other job");
    tx.commit().await.expect("commit");
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM jobs")
        .fetch_one(db.store.pool())
        .await
        .expect("count");
    assert_eq!(n, 2);
}

async fn jobs_enqueued_in_a_rolled_back_transaction_vanish(db: TestStore) {
    let db = &db;
    let mut tx = db.store.begin().await.expect("begin");
    jobs::enqueue(&mut tx, &NewJob::new("work", json!({})), Millis::now())
        .await
        .expect("enqueue");
    drop(tx);
    assert!(
        claim(&db.store, &["work"], "w", LEASE, Millis::now())
            .await
            .expect("claim")
            .is_none()
    );
}

async fn a_waiting_claimer_wakes_on_commit_from_another_server(db: TestStore) {
    let db = &db;
    let waiter = Arc::new(reconnect(db).await);
    let claimer = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            claim_or_wait(&waiter, &["work"], "w", LEASE, Duration::from_secs(3600))
                .await
                .expect("wait")
        })
    };
    // On SQLite the second handle stands for a second task of one server;
    // on PostgreSQL the wake-up crosses connections by NOTIFY.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = if db.store.backend() == gantry_store::Backend::Sqlite {
        (*waiter).clone()
    } else {
        reconnect(db).await
    };
    enqueue(&other, "work", 1).await;
    // A guard against hanging, far below the hour the claimer would sleep.
    let job = tokio::time::timeout(Duration::from_secs(60), claimer)
        .await
        .expect("woken by the commit")
        .expect("task");
    assert!(job.is_some());
}

async fn state_of(store: &Store, id: i64) -> String {
    let (state,): (String,) = sqlx::query_as("SELECT state FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(store.pool())
        .await
        .expect("state");
    state
}

async fn a_batch_completes_together_or_not_at_all(db: TestStore) {
    let store = &db.store;
    enqueue(store, "work", 3).await;
    let t0 = Millis::now();
    let batch = jobs::claim_many(store, &["work"], "w1", LEASE, t0, 3)
        .await
        .expect("claim");
    assert_eq!(batch.len(), 3);
    let leases: Vec<&jobs::Lease> = batch.iter().map(|job| &job.lease).collect();

    // One lease lapsed and went to another worker: nothing is completed.
    sqlx::query("UPDATE jobs SET lease_token = 'someone else' WHERE id = $1")
        .bind(leases[1].job_id)
        .execute(store.pool())
        .await
        .expect("take over");
    let mut tx = store.begin().await.expect("tx");
    assert!(
        !jobs::complete_all_in(&mut tx, &leases, t0)
            .await
            .expect("complete")
    );
    tx.commit().await.expect("commit");
    for lease in &leases {
        assert_eq!(state_of(store, lease.job_id).await, "running");
    }

    let held = [leases[0], leases[2]];
    let mut tx = store.begin().await.expect("tx");
    assert!(
        jobs::complete_all_in(&mut tx, &held, t0)
            .await
            .expect("complete")
    );
    tx.commit().await.expect("commit");
    for lease in held {
        assert_eq!(state_of(store, lease.job_id).await, "done");
    }
    assert_eq!(state_of(store, leases[1].job_id).await, "running");
    // Completed leases are spent.
    let mut tx = store.begin().await.expect("tx");
    assert!(
        !jobs::complete_all_in(&mut tx, &leases[..1], t0)
            .await
            .expect("complete")
    );
}
