use gantry_store::spaces::{self, CreateSpaceError};
use gantry_store::testing::TestStore;
use gantry_store::{Millis, Page};

use gantry_store::on_both_databases;

on_both_databases!(
    TestStore;
    spaces_form_a_tree,
    space_conflicts_and_unknown_parents,
    space_lists_page_newest_first,
);

async fn spaces_form_a_tree(db: TestStore) {
    let db = &db;
    let mut conn = db.store.conn().await.expect("conn");
    let now = Millis::now();
    spaces::insert(&mut conn, "root", "root", None, now)
        .await
        .expect("root");
    spaces::insert(&mut conn, "team", "Team", Some("root"), now)
        .await
        .expect("team");
    spaces::insert(&mut conn, "team-dev", "Team dev", Some("team"), now)
        .await
        .expect("dev");
    assert_eq!(
        spaces::ancestry(&mut conn, "team-dev")
            .await
            .expect("ancestry"),
        ["team-dev", "team", "root"]
    );
    assert_eq!(
        spaces::ancestry(&mut conn, "root").await.expect("ancestry"),
        ["root"]
    );
    assert!(
        spaces::ancestry(&mut conn, "nope")
            .await
            .expect("ancestry")
            .is_empty()
    );
}

async fn space_conflicts_and_unknown_parents(db: TestStore) {
    let db = &db;
    let mut conn = db.store.conn().await.expect("conn");
    let now = Millis::now();
    spaces::insert(&mut conn, "root", "root", None, now)
        .await
        .expect("root");
    spaces::insert(&mut conn, "a", "A", Some("root"), now)
        .await
        .expect("a");
    let err = spaces::insert(&mut conn, "x", "X", Some("missing"), now)
        .await
        .expect_err("unknown parent");
    assert!(
        matches!(err, CreateSpaceError::ParentNotFound(ref p) if p == "missing"),
        "{err}"
    );
    let err = spaces::insert(&mut conn, "a2", "A", Some("root"), now)
        .await
        .expect_err("same name, same parent");
    assert!(matches!(err, CreateSpaceError::NameTaken { .. }), "{err}");
    spaces::insert(&mut conn, "b", "B", Some("root"), now)
        .await
        .expect("b");
    let err = spaces::insert(&mut conn, "a", "Other", Some("b"), now)
        .await
        .expect_err("taken id");
    assert!(
        matches!(err, CreateSpaceError::IdTaken(ref id) if id == "a"),
        "{err}"
    );
    spaces::insert(&mut conn, "b-a", "A", Some("b"), now)
        .await
        .expect("same name under another parent");
    assert_eq!(spaces::count(&mut conn).await.expect("count"), 4);
}

async fn space_lists_page_newest_first(db: TestStore) {
    let db = &db;
    let mut conn = db.store.conn().await.expect("conn");
    spaces::insert(&mut conn, "root", "root", None, Millis(1))
        .await
        .expect("root");
    for i in 0..5 {
        spaces::insert(
            &mut conn,
            &format!("s{i}"),
            &format!("S{i}"),
            Some("root"),
            Millis(10 + i),
        )
        .await
        .expect("space");
    }
    // A key with `read` on root reads them all.
    let (key, _) = gantry_store::api_keys::insert(
        &mut conn,
        "reader",
        "reader",
        &[gantry_domain::Grant {
            space: "root".into(),
            role: gantry_domain::Role::Read,
        }],
        None,
        Millis(1),
    )
    .await
    .expect("key");
    let mut seen = Vec::new();
    let mut page = Page::new(None, Some(2));
    loop {
        let (items, next) = spaces::list_readable(&mut conn, &key.id, &page)
            .await
            .expect("list");
        seen.extend(items.into_iter().map(|s| s.id));
        match next {
            Some(cursor) => page = Page::new(Some(cursor), Some(2)),
            None => break,
        }
    }
    assert_eq!(seen, ["s4", "s3", "s2", "s1", "s0", "root"]);
}
