//! Storage tests. Every test runs on SQLite and on PostgreSQL.

use gantry_store::Store;
use gantry_store::testing::{self, TestStore};

mod api_keys;
mod jobs;
mod migrations;
mod runs;
mod spaces;

/// Runs `$test(store)` once on SQLite and once on PostgreSQL, as two tests.
macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::testing::sqlite().await;
                super::$test(&db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::testing::postgres().await else { return };
                super::$test(&db).await;
            }
        }
    )*};
}
pub(crate) use on_both_databases;

/// A second, independent handle on the same database (another server).
pub async fn reconnect(db: &TestStore) -> Store {
    Store::connect(&db.url).await.expect("reconnect")
}
