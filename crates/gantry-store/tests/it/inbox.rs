//! The inbox's group commit: deliveries sent at once are written together
//! (on SQLite as a few multi-row statements) and decided as one by one:
//! a repeat within the batch is a duplicate of the one before it, as a
//! repeat of an older delivery is, and each accepted delivery has exactly
//! one processing job.

use gantry_store::Millis;
use gantry_store::deliveries::{Inbox, NewDelivery, Status, Verdict};
use gantry_store::testing::TestStore;

use gantry_store::on_both_databases;

on_both_databases!(
    TestStore;
    a_group_commit_decides_as_one_by_one,
    a_delivery_for_a_missing_integration_is_refused_alone,
    a_batch_is_finished_only_while_all_its_leases_are_held,
    finishing_sets_a_status_only_where_it_changes,
);

fn delivery(key: Option<&str>, body: &str, verdict: Verdict) -> NewDelivery {
    NewDelivery {
        integration_id: "main".into(),
        event: "Push Hook".into(),
        verdict,
        body: body.as_bytes().to_vec(),
        idempotency_key: key.map(str::to_owned),
        event_uuid: None,
        webhook_uuid: None,
        instance: None,
        user_agent: None,
        received_at: Millis::now(),
    }
}

async fn row(db: &TestStore, id: &str) -> (String, Option<String>) {
    sqlx::query_as("SELECT status, duplicate_of FROM deliveries WHERE id = $1")
        .bind(id)
        .fetch_one(db.store.pool())
        .await
        .expect("row")
}

async fn jobs_of(db: &TestStore, id: &str) -> i64 {
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE idempotency_key = $1")
        .bind(format!("process_delivery:{id}"))
        .fetch_one(db.store.pool())
        .await
        .expect("jobs");
    count
}

/// Sends the deliveries at once, so they wait for the writer together.
async fn at_once(
    inbox: &Inbox,
    sent: impl IntoIterator<Item = NewDelivery>,
) -> Vec<Result<(String, Status), gantry_store::StoreError>> {
    let waiting: Vec<_> = sent
        .into_iter()
        .map(|new| {
            let inbox = inbox.clone();
            tokio::spawn(async move { inbox.receive(new).await })
        })
        .collect();
    let mut answers = Vec::new();
    for waiting in waiting {
        answers.push(waiting.await.expect("joined"));
    }
    answers
}

async fn a_group_commit_decides_as_one_by_one(db: TestStore) {
    crate::runs::setup(&db).await;
    let inbox = Inbox::spawn(db.store.clone());
    let sent = [
        delivery(Some("k1"), "body x", Verdict::Supported),
        delivery(Some("k1"), "body y", Verdict::Supported),
        delivery(None, "body x", Verdict::Supported),
        delivery(Some("k2"), "body z", Verdict::Supported),
        delivery(
            None,
            "body i",
            Verdict::Ignored {
                outcome: "not for us".into(),
            },
        ),
        delivery(
            None,
            "body r",
            Verdict::Rejected {
                error: "bad".into(),
            },
        ),
    ];
    let answers: Vec<(String, Status)> = at_once(&inbox, sent)
        .await
        .into_iter()
        .map(|answer| answer.expect("stored"))
        .collect();
    let statuses: Vec<Status> = answers.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses[3], Status::Accepted);
    assert_eq!(statuses[4], Status::Ignored);
    assert_eq!(statuses[5], Status::Rejected);
    // Of the two with key k1 one is accepted and the other repeats it; the
    // repeat of body x repeats an accepted delivery.
    let k1: Vec<usize> = (0..2)
        .filter(|&i| statuses[i] == Status::Accepted)
        .collect();
    assert_eq!(k1.len(), 1, "{statuses:?}");
    let (original, repeat) = (k1[0], 1 - k1[0]);
    // It repeats the other (same key), or, when the body-x twin was written
    // first, that one (same body): whichever was accepted before it.
    let (status, of) = row(&db, &answers[repeat].0).await;
    assert_eq!(status, "duplicate");
    let of_same_body = if repeat == 0 {
        Some(answers[2].0.clone())
    } else {
        None
    };
    assert!(
        of == Some(answers[original].0.clone()) || (of.is_some() && of == of_same_body),
        "{of:?} {statuses:?}"
    );
    if of == of_same_body {
        assert_eq!(statuses[2], Status::Accepted);
    }
    if statuses[2] == Status::Duplicate {
        let (_, of) = row(&db, &answers[2].0).await;
        assert_eq!(
            of.as_deref(),
            Some(answers[0].0.as_str()),
            "body x was accepted as the first"
        );
        assert_eq!(original, 0);
    } else {
        assert_eq!(
            original, 1,
            "body x is new only when its k1 twin was the duplicate"
        );
    }
    for (id, status) in &answers {
        let expected = i64::from(*status == Status::Accepted);
        assert_eq!(jobs_of(&db, id).await, expected, "{id} {status:?}");
    }
    // Later deliveries repeat the stored ones, by key and by body.
    let again = inbox
        .receive(delivery(Some("k2"), "other", Verdict::Supported))
        .await
        .expect("stored");
    assert_eq!(
        row(&db, &again.0).await,
        ("duplicate".to_owned(), Some(answers[3].0.clone()))
    );
    let same_body = inbox
        .receive(delivery(None, "body z", Verdict::Supported))
        .await
        .expect("stored");
    assert_eq!(row(&db, &same_body.0).await.1, Some(answers[3].0.clone()));
    let fresh = inbox
        .receive(delivery(Some("k3"), "body new", Verdict::Supported))
        .await
        .expect("stored");
    assert_eq!(fresh.1, Status::Accepted);
}

/// The webhook handler checks secrets from memory, so a delivery can reach
/// the inbox after its integration was deleted: it is refused as not
/// found, and the rest of its group commit is stored.
async fn a_delivery_for_a_missing_integration_is_refused_alone(db: TestStore) {
    crate::runs::setup(&db).await;
    let inbox = Inbox::spawn(db.store.clone());
    let mut gone = delivery(Some("g1"), "body g", Verdict::Supported);
    gone.integration_id = "deleted".into();
    let sent = [
        delivery(Some("m1"), "body m", Verdict::Supported),
        gone,
        delivery(Some("m2"), "body n", Verdict::Supported),
    ];
    let answers = at_once(&inbox, sent).await;
    assert!(
        matches!(&answers[1], Err(gantry_store::StoreError::NotFound { id, .. }) if id == "deleted"),
        "{:?}",
        answers[1]
    );
    for answer in [&answers[0], &answers[2]] {
        let (id, status) = answer.as_ref().expect("stored");
        assert_eq!(*status, Status::Accepted);
        assert_eq!(jobs_of(&db, id).await, 1);
    }
    let (stored,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM deliveries WHERE integration_id = 'deleted'")
            .fetch_one(db.store.pool())
            .await
            .expect("count");
    assert_eq!(stored, 0);
}

/// Processing records a batch's outcomes with its jobs' completion, and
/// only while it holds every job: a job another worker took over makes it
/// change nothing (the caller then goes one job at a time).
async fn a_batch_is_finished_only_while_all_its_leases_are_held(db: TestStore) {
    use gantry_store::deliveries::{self, Processed};
    use gantry_store::jobs;
    use std::time::Duration;

    crate::runs::setup(&db).await;
    let inbox = Inbox::spawn(db.store.clone());
    let ids: Vec<String> = at_once(
        &inbox,
        [
            delivery(Some("a"), "body a", Verdict::Supported),
            delivery(Some("b"), "body b", Verdict::Supported),
        ],
    )
    .await
    .into_iter()
    .map(|answer| answer.expect("stored").0)
    .collect();
    let lease = Duration::from_secs(30);
    let t0 = Millis::now();
    let claimed = jobs::claim_many(&db.store, &[deliveries::PROCESS_JOB], "w1", lease, t0, 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    let outcomes: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.clone(), "nothing to do".to_owned()))
        .collect();
    // The second is found unreadable: its status changes too.
    let processed: Vec<(&str, Processed<'_>)> = outcomes
        .iter()
        .enumerate()
        .map(|(index, (id, outcome))| {
            let one = Processed {
                status: if index == 0 {
                    Status::Accepted
                } else {
                    Status::Rejected
                },
                outcome,
                error: (index == 1).then_some("unreadable"),
                runs: &[],
            };
            (id.as_str(), one)
        })
        .collect();
    let processed_at = |id: &str| {
        let id = id.to_owned();
        let pool = db.store.pool().clone();
        async move {
            let (at,): (Option<i64>,) =
                sqlx::query_as("SELECT processed_at FROM deliveries WHERE id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .expect("row");
            at
        }
    };

    // The first job's lease lapses and another worker takes it.
    let lapsed = t0.plus(Duration::from_millis(1));
    sqlx::query("UPDATE jobs SET lease_expires_at = $1 WHERE id = $2")
        .bind(t0.0)
        .bind(claimed[0].lease.job_id)
        .execute(db.store.pool())
        .await
        .expect("lapse");
    assert_eq!(jobs::reap(&db.store, lapsed).await.expect("reap"), 1);
    let retaken = jobs::claim_many(
        &db.store,
        &[deliveries::PROCESS_JOB],
        "w2",
        lease,
        lapsed,
        10,
    )
    .await
    .expect("claim again");
    assert_eq!(retaken.len(), 1);

    let stale: Vec<&jobs::Lease> = claimed.iter().map(|job| &job.lease).collect();
    let done = deliveries::complete_and_finish(&db.store, &stale, &processed, lapsed)
        .await
        .expect("finish");
    assert!(!done, "a lost lease: nothing is recorded");
    for id in &ids {
        assert_eq!(processed_at(id).await, None, "{id} is not recorded");
    }

    // The other worker holds both now (its own and, reclaimed, the rest).
    let mut held: Vec<&jobs::Lease> = vec![&retaken[0].lease, &claimed[1].lease];
    held.sort_by_key(|lease| lease.job_id);
    let done = deliveries::complete_and_finish(&db.store, &held, &processed, lapsed)
        .await
        .expect("finish");
    assert!(done);
    for (id, status) in ids.iter().zip(["accepted", "rejected"]) {
        assert_eq!(processed_at(id).await, Some(lapsed.0));
        assert_eq!(row(&db, id).await.0, status);
    }
    let (running,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE state <> 'done'")
        .fetch_one(db.store.pool())
        .await
        .expect("jobs");
    assert_eq!(running, 0, "both jobs are completed");
}

/// A replayed delivery that was rejected and now reads becomes accepted;
/// one whose status stays keeps it. Both get their outcome, once more.
async fn finishing_sets_a_status_only_where_it_changes(db: TestStore) {
    use gantry_store::deliveries::{self, Processed};

    crate::runs::setup(&db).await;
    let inbox = Inbox::spawn(db.store.clone());
    let ids: Vec<String> = at_once(
        &inbox,
        [
            delivery(
                None,
                "body a",
                Verdict::Rejected {
                    error: "unreadable".into(),
                },
            ),
            delivery(None, "body b", Verdict::Supported),
        ],
    )
    .await
    .into_iter()
    .map(|answer| answer.expect("stored").0)
    .collect();
    assert_eq!(row(&db, &ids[0]).await.0, "rejected");
    let processed: Vec<(&str, Processed<'_>)> = ids
        .iter()
        .map(|id| {
            let one = Processed {
                status: Status::Accepted,
                outcome: "no stack uses the project",
                error: None,
                runs: &[],
            };
            (id.as_str(), one)
        })
        .collect();
    let now = Millis::now();
    let mut tx = db.store.begin().await.expect("begin");
    deliveries::finish_all(&mut tx, &processed, now)
        .await
        .expect("finish");
    tx.commit().await.expect("commit");
    for id in &ids {
        let (status, outcome, error, processed_at, times): (
            String,
            Option<String>,
            Option<String>,
            Option<i64>,
            i64,
        ) = sqlx::query_as(
            "SELECT status, outcome, error, processed_at, times_processed FROM deliveries WHERE id = $1",
        )
        .bind(id)
        .fetch_one(db.store.pool())
        .await
        .expect("row");
        assert_eq!(status, "accepted", "{id}");
        assert_eq!(outcome.as_deref(), Some("no stack uses the project"));
        assert_eq!(error, None);
        assert_eq!(processed_at, Some(now.0));
        assert!(times >= 1, "{id} was processed {times} times");
    }
}
