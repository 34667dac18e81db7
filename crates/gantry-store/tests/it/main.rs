//! Storage tests. Every test runs on SQLite and on PostgreSQL.

use gantry_store::Store;
use gantry_store::testing::TestStore;

mod api_keys;
mod inbox;
mod jobs;
mod migrations;
mod runs;
mod spaces;

/// A second, independent handle on the same database (another server).
pub async fn reconnect(db: &TestStore) -> Store {
    Store::connect(&db.url).await.expect("reconnect")
}
