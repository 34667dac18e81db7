use gantry_store::testing::TestStore;
use gantry_store::{Millis, spaces};

use crate::reconnect;
use gantry_store::on_both_databases;

on_both_databases!(TestStore; migrations_are_idempotent_and_keep_data);

async fn migrations_are_idempotent_and_keep_data(db: TestStore) {
    let db = &db;
    let mut conn = db.store.conn().await.expect("conn");
    spaces::insert(&mut conn, "root", "root", None, Millis::now())
        .await
        .expect("root");
    drop(conn);
    db.store.migrate().await.expect("second migrate is a no-op");
    let again = reconnect(db).await;
    again.migrate().await.expect("migrate from another handle");
    let mut conn = again.conn().await.expect("conn");
    assert!(spaces::get(&mut conn, "root").await.expect("get").is_some());
    let (applied,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&mut *conn)
        .await
        .expect("count");
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
        .expect("migrations")
        .count();
    assert_eq!(applied as usize, shipped, "each migration applied once");
}
