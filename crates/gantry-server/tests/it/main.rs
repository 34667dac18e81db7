//! Tests of the real server on port 0, each on SQLite and on PostgreSQL.

mod api_keys;
mod bad_input;
mod execution;
mod harness;
mod integrations;
mod reporting;
mod roles;
mod runs;
mod spaces;
mod stacks;
mod startup;
mod webhooks;

/// Runs `$test(db)` once on SQLite and once on PostgreSQL, as two tests.
macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test($crate::harness::Db::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::harness::Db::postgres().await else { return };
                super::$test(db).await;
            }
        }
    )*};
}
pub(crate) use on_both_databases;
