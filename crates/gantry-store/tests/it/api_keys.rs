use gantry_domain::{Grant, Role};
use gantry_store::testing::TestStore;
use gantry_store::{Millis, Page, api_keys, spaces};
use secrecy::ExposeSecret;

use gantry_store::on_both_databases;

on_both_databases!(
    TestStore;
    api_key_secrets_work_until_revoked,
    admins_see_the_keys_of_their_subtree,
    revoking_the_last_two_admin_keys_at_once_leaves_one,
    a_web_session_lasts_while_used_and_ends_after_12_hours_idle,
    rate_slots_are_shared_and_never_overbooked,
);

fn grant(space: &str, role: Role) -> Grant {
    Grant {
        space: space.into(),
        role,
    }
}

async fn api_key_secrets_work_until_revoked(db: TestStore) {
    let db = &db;
    let mut conn = db.store.conn().await.expect("conn");
    spaces::insert(&mut conn, "root", "root", None, Millis::now())
        .await
        .expect("root");
    let (key, secret) = api_keys::insert(
        &mut conn,
        "ci",
        "CI",
        &[grant("root", Role::Write)],
        None,
        Millis::now(),
    )
    .await
    .expect("insert");
    let found = api_keys::authenticate(&mut conn, secret.expose_secret())
        .await
        .expect("auth");
    assert_eq!(found.as_ref().map(|k| k.id.as_str()), Some("ci"));
    assert_eq!(
        found.map(|k| k.roles),
        Some(vec![grant("root", Role::Write)])
    );
    assert!(
        api_keys::authenticate(&mut conn, "gantry_wrong")
            .await
            .expect("auth")
            .is_none()
    );

    // The database holds no plaintext key.
    let stored: Vec<(String,)> = sqlx::query_as("SELECT secret_hash FROM api_keys")
        .fetch_all(&mut *conn)
        .await
        .expect("rows");
    assert!(
        stored
            .iter()
            .all(|(hash,)| !hash.contains(secret.expose_secret()) && hash.len() == 64)
    );

    let revoked = api_keys::revoke(&mut conn, &key.id, Millis::now())
        .await
        .expect("revoke")
        .expect("exists");
    assert!(revoked.revoked_at.is_some());
    assert!(
        api_keys::authenticate(&mut conn, secret.expose_secret())
            .await
            .expect("auth")
            .is_none()
    );
}

async fn admins_see_the_keys_of_their_subtree(db: TestStore) {
    let db = &db;
    let mut conn = db.store.conn().await.expect("conn");
    let now = Millis::now();
    spaces::insert(&mut conn, "root", "root", None, now)
        .await
        .expect("root");
    spaces::insert(&mut conn, "team", "team", Some("root"), now)
        .await
        .expect("team");
    spaces::insert(&mut conn, "dev", "dev", Some("team"), now)
        .await
        .expect("dev");
    let key = |id: &'static str, roles: Vec<Grant>| {
        let id = id.to_owned();
        async move {
            api_keys::insert(
                &mut db.store.conn().await.expect("conn"),
                &id,
                &id,
                &roles,
                None,
                now,
            )
            .await
            .expect("key")
        }
    };
    key("root-admin", vec![grant("root", Role::Admin)]).await;
    key("team-admin", vec![grant("team", Role::Admin)]).await;
    key("dev-reader", vec![grant("dev", Role::Read)]).await;
    key(
        "mixed",
        vec![grant("dev", Role::Read), grant("root", Role::Read)],
    )
    .await;
    let visible = |viewer: &'static str| async move {
        let mut conn = db.store.conn().await.expect("conn");
        let (keys, _) = api_keys::list_manageable(&mut conn, viewer, &Page::new(None, None))
            .await
            .expect("list");
        let mut ids: Vec<String> = keys.into_iter().map(|k| k.id).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        visible("root-admin").await,
        ["dev-reader", "mixed", "root-admin", "team-admin"]
    );
    assert_eq!(visible("team-admin").await, ["dev-reader", "team-admin"]);
    assert_eq!(visible("dev-reader").await, ["dev-reader"]);
}

/// Two transactions each revoke one of the two root admin keys, the
/// second starting while the first is open: the second sees the first's
/// revocation, so the route refuses to revoke the last admin key.
async fn revoking_the_last_two_admin_keys_at_once_leaves_one(db: TestStore) {
    let db = &db;
    let mut conn = db.store.conn().await.expect("conn");
    spaces::insert(&mut conn, "root", "root", None, Millis::now())
        .await
        .expect("root");
    for id in ["a", "b"] {
        api_keys::insert(
            &mut conn,
            id,
            id,
            &[grant("root", Role::Admin)],
            None,
            Millis::now(),
        )
        .await
        .expect("insert");
    }
    drop(conn);
    let mut first = db.store.begin().await.expect("tx");
    let holders = api_keys::active_holders_locked(&mut first, "root", Role::Admin)
        .await
        .expect("holders");
    assert_eq!(holders, ["a", "b"]);
    let store = db.store.clone();
    let second = tokio::spawn(async move {
        let mut tx = store.begin().await.expect("tx");
        api_keys::active_holders_locked(&mut tx, "root", Role::Admin)
            .await
            .expect("holders")
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the second waits for the first");
    api_keys::revoke(&mut first, "a", Millis::now())
        .await
        .expect("revoke");
    first.commit().await.expect("commit");
    assert_eq!(second.await.expect("second"), ["b"]);
}

async fn a_web_session_lasts_while_used_and_ends_after_12_hours_idle(db: TestStore) {
    use gantry_store::sessions;
    let db = &db;
    let mut conn = db.store.conn().await.expect("conn");
    spaces::insert(&mut conn, "root", "root", None, Millis::now())
        .await
        .expect("root");
    api_keys::insert(
        &mut conn,
        "a",
        "a",
        &[grant("root", Role::Read)],
        None,
        Millis::now(),
    )
    .await
    .expect("insert");
    let start = Millis::now();
    let secret = sessions::create(&mut conn, "a", start)
        .await
        .expect("session");
    let secret = secret.expose_secret();
    let hour = std::time::Duration::from_secs(3600);
    let found = |at: Millis| {
        let store = db.store.clone();
        let secret = secret.to_owned();
        async move {
            let mut conn = store.conn().await.expect("conn");
            sessions::authenticate(&mut conn, &secret, at)
                .await
                .expect("auth")
                .map(|key| key.id)
        }
    };
    // Used every 11 hours, it lives on; then 12 hours idle end it.
    assert_eq!(found(start.plus(hour * 11)).await.as_deref(), Some("a"));
    assert_eq!(found(start.plus(hour * 22)).await.as_deref(), Some("a"));
    assert_eq!(found(start.plus(hour * 34)).await, None);
    assert_eq!(
        sessions::prune(&mut conn, start.plus(hour * 34))
            .await
            .expect("prune"),
        1
    );
    assert_eq!(found(start.plus(hour * 11)).await, None, "pruned");
}

/// The MR-note throttle's slots are counted in the database: a limit of
/// one, taken by many at once (as several servers do), is given once.
async fn rate_slots_are_shared_and_never_overbooked(db: TestStore) {
    use gantry_store::cluster::take_rate_slot;
    let db = &db;
    let minute = std::time::Duration::from_secs(60);
    let now = Millis::now();
    for _ in 0..3 {
        assert_eq!(
            take_rate_slot(&db.store, "notes:a", 3, minute, now)
                .await
                .expect("take"),
            Ok(())
        );
    }
    let wait = take_rate_slot(&db.store, "notes:a", 3, minute, now)
        .await
        .expect("take")
        .expect_err("full");
    assert!(
        wait <= minute && wait > std::time::Duration::ZERO,
        "{wait:?}"
    );
    assert_eq!(
        take_rate_slot(&db.store, "notes:b", 3, minute, now)
            .await
            .expect("take"),
        Ok(()),
        "scopes are separate"
    );
    let later = now.plus(minute + std::time::Duration::from_secs(1));
    assert_eq!(
        take_rate_slot(&db.store, "notes:a", 3, minute, later)
            .await
            .expect("take"),
        Ok(())
    );

    let takers = (0..8).map(|_| {
        let store = db.store.clone();
        tokio::spawn(
            async move { take_rate_slot(&store, "notes:c", 1, minute, Millis::now()).await },
        )
    });
    let mut given = 0;
    for taker in takers {
        if taker.await.expect("task").expect("take").is_ok() {
            given += 1;
        }
    }
    assert_eq!(given, 1);
}
