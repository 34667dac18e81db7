//! Processing stored deliveries: the `process_delivery` job, run by every
//! server, and the same processing on replay.
//!
//! Each delivery is processed in two steps. Deciding reads the delivery,
//! finds the stacks of its project and asks GitLab for the changed files
//! when the payload does not list them all, with no transaction open.
//! Enacting then creates and cancels runs, records the outcome and
//! completes the job in one transaction, so a delivery takes effect once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use gantry_domain::event::Event;
use gantry_domain::rules::{self, ChangedFiles, Decision, StackFacts};
use gantry_domain::stack::Affects;
use gantry_gitlab::{GitLabError, projects, webhook};
use gantry_store::deliveries::{self, Delivery, Processed, Status};
use gantry_store::jobs::{self, ClaimedJob, Lease, LeaseError};
use gantry_store::runs::{self, Created, NewRun};
use gantry_store::stacks::Stack;
use gantry_store::{Millis, Store, StoreError, Tx, housekeeping, integrations, stacks};

use crate::gitlab::{AccessError, GitLabAccess};

/// What processing needs: the database and the way to GitLab.
#[derive(Clone)]
pub struct Processor {
    pub store: Store,
    pub gitlab: GitLabAccess,
    /// Woken after runs are created.
    pub runs_signal: Arc<tokio::sync::Notify>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("delivery {0} does not exist")]
    Missing(String),
    #[error("the body of delivery {0} was pruned by retention; it cannot be processed again")]
    Pruned(String),
    /// GitLab could not be asked now; the job is retried later.
    #[error("{0}")]
    GitLab(GitLabError),
    /// The job's payload names no delivery.
    #[error("job {0} does not name a delivery")]
    BadJob(i64),
    #[error("deciding the delivery took longer than {} s (GitLab is slow)", .0.as_secs())]
    TooSlow(Duration),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What enacting a delivery will do.
struct Decided {
    delivery: String,
    status: Status,
    /// The outcome when there is nothing to decide, or its first words.
    outcome: String,
    error: Option<String>,
    decisions: Vec<Decision>,
    /// What a tag push does to the project's modules.
    modules: Vec<crate::publish::ModuleDecision>,
    /// The integration and project, for the modules' commit statuses.
    integration_id: String,
    project_id: i64,
    trigger: String,
}

impl Processor {
    /// Processes a delivery now and returns it (a replay).
    pub async fn process(&self, id: &str) -> Result<Delivery, ProcessError> {
        let decided = self.decide(id).await?;
        let mut tx = self.store.begin().await?;
        if let Some(finished) = enact(&mut tx, decided, None).await? {
            deliveries::finish_all(&mut tx, &[finished.processed()], Millis::now()).await?;
        }
        tx.commit().await?;
        self.runs_signal.notify_waiters();
        let mut conn = self.store.conn().await?;
        deliveries::by_id(&mut conn, id)
            .await?
            .ok_or_else(|| ProcessError::Missing(id.to_owned()))
    }

    async fn decide(&self, id: &str) -> Result<Option<Decided>, ProcessError> {
        let read = {
            let mut conn = self.store.conn().await?;
            deliveries::with_body(&mut conn, id).await?
        };
        let Some((delivery, body)) = read else {
            return Ok(None);
        };
        self.decide_read(delivery, body, &ProjectStacks::default())
            .await
    }

    /// Decides a delivery already read, with its body; `stacks` keeps the
    /// stacks of each project that a batch's deliveries name.
    async fn decide_read(
        &self,
        delivery: Delivery,
        body: Option<Vec<u8>>,
        stacks: &ProjectStacks,
    ) -> Result<Option<Decided>, ProcessError> {
        let id = delivery.id.as_str();
        let trigger = format!("delivery:{id}");
        let simple = |status, outcome: String, error: Option<String>| Decided {
            delivery: id.to_owned(),
            status,
            outcome,
            error,
            decisions: Vec::new(),
            modules: Vec::new(),
            integration_id: delivery.integration_id.clone(),
            project_id: 0,
            trigger: trigger.clone(),
        };
        if delivery.status == Status::Duplicate {
            // A duplicate causes nothing, however often it is processed.
            let outcome = delivery
                .outcome
                .clone()
                .ok_or_else(|| StoreError::Corrupt {
                    table: "deliveries",
                    id: id.to_owned(),
                    column: "outcome",
                    problem: "a duplicate is stored with its outcome, and this one has none".into(),
                })?;
            return Ok(Some(simple(Status::Duplicate, outcome, None)));
        }
        let body = body.ok_or_else(|| ProcessError::Pruned(id.to_owned()))?;
        let event = match webhook::event_of(&delivery.event, &body) {
            Ok(Some(event)) => event,
            Ok(None) => {
                let outcome = format!("Gantry does not act on {:?} events", delivery.event);
                return Ok(Some(simple(Status::Ignored, outcome, None)));
            }
            Err(error) => {
                let outcome = "the payload could not be read; replay it after a fix".to_owned();
                return Ok(Some(simple(
                    Status::Rejected,
                    outcome,
                    Some(error.to_string()),
                )));
            }
        };
        let project = event.project().clone();
        // GitLab's ids fit a database integer; one that does not matches no stack.
        let found = match i64::try_from(project.id) {
            Ok(project_id) => {
                stacks
                    .for_project(&self.store, &delivery.integration_id, project_id)
                    .await?
            }
            Err(_) => Arc::from([]),
        };
        let path = if project.path.is_empty() {
            String::new()
        } else {
            format!(" ({})", project.path)
        };
        let module_decisions = match &event {
            Event::TagPush(tag) => {
                let mut conn = self.store.conn().await?;
                match crate::publish::decide(&self.gitlab, &mut conn, &delivery.integration_id, tag)
                    .await
                {
                    Ok(decisions) => decisions,
                    Err(crate::publish::DecideError::GitLab(error)) => {
                        return Err(ProcessError::GitLab(error));
                    }
                    Err(crate::publish::DecideError::Store(error)) => return Err(error.into()),
                    Err(crate::publish::DecideError::Other(why)) => {
                        let outcome =
                            format!("{}: modules could not be published", event.describe());
                        return Ok(Some(simple(Status::Accepted, outcome, Some(why))));
                    }
                }
            }
            _ => Vec::new(),
        };
        let project_id = i64::try_from(project.id).unwrap_or(0);
        if !module_decisions.is_empty() {
            return Ok(Some(Decided {
                modules: module_decisions,
                project_id,
                ..simple(Status::Accepted, event.describe(), None)
            }));
        }
        if found.is_empty() {
            let outcome = format!(
                "{}: no stack uses project {}{path}",
                event.describe(),
                project.id
            );
            return Ok(Some(simple(Status::Accepted, outcome, None)));
        }
        let integration = {
            let mut conn = self.store.conn().await?;
            integrations::get(&mut conn, &delivery.integration_id).await?
        };
        let files = match integration {
            Some(integration) => self.changed_files(&integration, &event, &found).await,
            None => Ok(Vec::new()),
        };
        let files = match files {
            Ok(files) => files,
            Err(Unread::GitLab(error)) if error.is_transient() => {
                return Err(ProcessError::GitLab(error));
            }
            Err(error) => {
                let outcome = format!(
                    "{}: the changed files could not be read from GitLab",
                    event.describe()
                );
                return Ok(Some(simple(
                    Status::Accepted,
                    outcome,
                    Some(error.to_string()),
                )));
            }
        };
        let mut affects = Vec::with_capacity(found.len());
        for stack in found.iter() {
            // The store checked the globs when it read the row.
            let matcher = Affects::new(&stack.project_root, &stack.additional_project_globs)
                .map_err(|error| StoreError::Corrupt {
                    table: "stacks",
                    id: stack.id.clone(),
                    column: "additional_project_globs",
                    problem: error.to_string(),
                })?;
            affects.push(matcher);
        }
        let facts: Vec<StackFacts<'_>> = found
            .iter()
            .zip(&affects)
            .map(|(stack, affects)| StackFacts {
                id: &stack.id,
                branch: &stack.branch,
                affects,
                allow_forks: stack.allow_forks,
            })
            .collect();
        let decisions = rules::decide(&event, &facts, &files);
        Ok(Some(Decided {
            decisions,
            project_id,
            ..simple(Status::Accepted, event.describe(), None)
        }))
    }

    async fn changed_files(
        &self,
        integration: &integrations::Integration,
        event: &Event,
        stacks: &[Stack],
    ) -> Result<Vec<String>, Unread> {
        let needs_default =
            matches!(event, Event::Push(push) if push.creates_branch() && !push.deletes_branch());
        let quick = rules::changed_files(event, "");
        if matches!(quick, ChangedFiles::NotNeeded | ChangedFiles::Listed(_)) {
            return Ok(match quick {
                ChangedFiles::Listed(files) => files,
                _ => Vec::new(),
            });
        }
        let client = self.gitlab.client(integration)?;
        let project_id = event.project().id;
        let default_branch = match needs_default {
            true => {
                let project = projects::find(&client, &project_id.to_string()).await?;
                // A project without a default branch: compare from the
                // tracked branch of its first stack.
                match (project.default_branch, stacks.first()) {
                    (Some(branch), _) => branch,
                    (None, Some(stack)) => stack.branch.clone(),
                    (None, None) => String::new(),
                }
            }
            false => String::new(),
        };
        Ok(match rules::changed_files(event, &default_branch) {
            ChangedFiles::Compare { from, to } => {
                projects::changed_files(&client, project_id, &from, &to).await?
            }
            ChangedFiles::Listed(files) => files,
            ChangedFiles::NotNeeded => Vec::new(),
        })
    }
}

/// Why the changed files could not be read.
#[derive(Debug, thiserror::Error)]
enum Unread {
    #[error(transparent)]
    GitLab(#[from] GitLabError),
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// What processing records of a delivery, once its effects are enacted.
struct Finished {
    delivery: String,
    status: Status,
    outcome: String,
    error: Option<String>,
    runs: Vec<String>,
}

impl Finished {
    fn processed(&self) -> (&str, Processed<'_>) {
        let processed = Processed {
            status: self.status,
            outcome: &self.outcome,
            error: self.error.as_deref(),
            runs: &self.runs,
        };
        (&self.delivery, processed)
    }
}

/// Enacts what was decided of a delivery (its job completed first when
/// `lease` is given) and says what to record of it.
async fn enact(
    tx: &mut Tx,
    decided: Option<Decided>,
    lease: Option<&Lease>,
) -> Result<Option<Finished>, ProcessError> {
    let now = Millis::now();
    // The lease first: a job another worker took over changes nothing here.
    if let Some(lease) = lease {
        jobs::complete_in(tx, lease, now).await?;
    }
    // Deleted with its integration: nothing left to do.
    let Some(decided) = decided else {
        return Ok(None);
    };
    let mut created = Vec::new();
    let mut runs_of_delivery = Vec::new();
    let mut canceled = Vec::new();
    // The runs are created together (a push to a repository of many
    // stacks makes many), in the order of the decisions around them.
    let mut pending: Vec<NewRun<'_>> = Vec::new();
    for decision in decided.decisions.iter().map(Some).chain([None]) {
        if let Some(Decision::Run {
            stack,
            kind,
            commit,
            branch,
            merge_request_iid,
        }) = decision
        {
            pending.push(NewRun {
                stack_id: stack,
                kind: *kind,
                commit_sha: commit,
                branch,
                merge_request_iid: *merge_request_iid,
                trigger: &decided.trigger,
            });
            continue;
        }
        if let Some(Decision::Nothing { .. }) = decision {
            // Touches nothing: no need to create the runs before it.
            continue;
        }
        for (run, how, superseded) in runs::create_all(tx, &pending, now).await? {
            if how == Created::New {
                let kind = run.kind.as_str();
                created.push(format!("{kind} run {} for {}", run.id, run.stack_id));
            }
            runs_of_delivery.push(run.id);
            canceled.extend(superseded);
        }
        pending.clear();
        match decision {
            None | Some(Decision::Run { .. } | Decision::Nothing { .. }) => {}
            Some(Decision::CancelBranch { stack, branch }) => {
                let cause = format!("branch {branch} was deleted");
                canceled.extend(
                    runs::cancel_queued_proposed(tx, stack, Some(branch), None, &cause, now)
                        .await?,
                );
            }
            Some(Decision::CancelMergeRequest { stack, iid }) => {
                let cause = format!("merge request !{iid} was closed");
                canceled.extend(
                    runs::cancel_queued_proposed(tx, stack, None, Some(*iid), &cause, now).await?,
                );
            }
        }
    }
    let published = crate::publish::enact(
        tx,
        &decided.integration_id,
        decided.project_id,
        &decided.modules,
        now,
    )
    .await?;
    Ok(Some(decided.finished(Effects {
        created,
        runs: runs_of_delivery,
        canceled,
        published,
    })))
}

/// What enacting a delivery did: the runs it created (described) and
/// those it found for the same commit, the queued runs it canceled, the
/// modules it published.
#[derive(Default)]
struct Effects {
    created: Vec<String>,
    runs: Vec<String>,
    canceled: Vec<String>,
    published: Vec<String>,
}

impl Decided {
    /// Whether enacting it only records its outcome: no run to create or
    /// cancel, no module to publish.
    fn records_only(&self) -> bool {
        self.modules.is_empty()
            && self
                .decisions
                .iter()
                .all(|decision| matches!(decision, Decision::Nothing { .. }))
    }

    /// What is recorded of the delivery once `effects` are enacted.
    fn finished(&self, effects: Effects) -> Finished {
        let mut outcome = self.outcome.clone();
        if !effects.published.is_empty() {
            outcome = format!("{outcome}: {}", effects.published.join("; "));
        }
        if !self.decisions.is_empty() {
            let skipped: Vec<String> = self
                .decisions
                .iter()
                .filter_map(|decision| match decision {
                    Decision::Nothing { stack, why } => Some(format!("{stack}: {why}")),
                    _ => None,
                })
                .collect();
            let mut parts = Vec::new();
            if !effects.created.is_empty() {
                parts.push(format!("created {}", effects.created.join(", ")));
            }
            let reused = effects.runs.len() - effects.created.len();
            if reused > 0 {
                parts.push(format!(
                    "{reused} run(s) for the same commit already existed"
                ));
            }
            if !effects.canceled.is_empty() {
                parts.push(format!(
                    "canceled queued run(s) {}",
                    effects.canceled.join(", ")
                ));
            }
            if !skipped.is_empty() {
                parts.push(format!("no run for {}", skipped.join("; ")));
            }
            if parts.is_empty() {
                parts.push("nothing to do".to_owned());
            }
            outcome = format!("{outcome}: {}", parts.join("; "));
        }
        tracing::debug!(delivery.id = %self.delivery, outcome, "delivery processed");
        Finished {
            delivery: self.delivery.clone(),
            status: self.status,
            outcome,
            error: self.error.clone(),
            runs: effects.runs,
        }
    }
}

/// The most delivery jobs one worker claims and commits together.
const BATCH: u32 = 64;

/// Claims and processes delivery jobs until the task is dropped: a batch
/// at a time, decided one by one, enacted in one transaction.
pub async fn work(processor: Processor, owner: String, lease_for: Duration) {
    loop {
        let claimed = jobs::claim_many_or_wait(
            &processor.store,
            &[deliveries::PROCESS_JOB],
            &owner,
            lease_for,
            Duration::from_secs(60),
            BATCH,
        )
        .await;
        match claimed {
            Ok(batch) => process_batch(&processor, &batch, lease_for).await,
            Err(error) => {
                tracing::warn!(%error, "cannot claim delivery jobs; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Claims the delivery jobs due now and processes them; how many it took.
pub async fn run_due(
    processor: &Processor,
    owner: &str,
    lease_for: Duration,
) -> Result<usize, StoreError> {
    let batch = jobs::claim_many(
        &processor.store,
        &[deliveries::PROCESS_JOB],
        owner,
        lease_for,
        Millis::now(),
        BATCH,
    )
    .await?;
    process_batch(processor, &batch, lease_for).await;
    Ok(batch.len())
}

/// Delivery jobs due or under way, on any server.
pub async fn outstanding(processor: &Processor) -> Result<i64, StoreError> {
    jobs::outstanding(&processor.store, &[deliveries::PROCESS_JOB], Millis::now()).await
}

/// How many deliveries of a batch are decided at once: one slow GitLab
/// answer does not hold back the others.
const DECIDING_AT_ONCE: usize = 4;
/// The longest one delivery may take to decide (its GitLab calls
/// included); past it the attempt fails and is retried later.
const DECIDE_DEADLINE: Duration = Duration::from_secs(120);

async fn process_batch(processor: &Processor, batch: &[ClaimedJob], lease_for: Duration) {
    if batch.is_empty() {
        return;
    }
    // The batch's leases are renewed while its deliveries are decided, so
    // a slow GitLab never lets them lapse under the worker.
    let renew = async {
        loop {
            tokio::time::sleep((lease_for / 3).max(Duration::from_millis(100))).await;
            for job in batch {
                if let Err(error) =
                    jobs::heartbeat(&processor.store, &job.lease, lease_for, Millis::now()).await
                {
                    tracing::warn!(job.id = job.lease.job_id, %error, "cannot renew a delivery job's lease");
                }
            }
        }
    };
    // The batch's deliveries in one read, and each project's stacks once.
    let ids: Vec<&str> = batch
        .iter()
        .filter_map(|job| delivery_of(job).ok())
        .collect();
    let mut read = match read_all(&processor.store, &ids).await {
        Ok(read) => read,
        Err(error) => {
            // Nothing was done; the leases lapse and the jobs run again.
            tracing::warn!(%error, jobs = batch.len(), "cannot read a batch of deliveries");
            return;
        }
    };
    let stacks = ProjectStacks::default();
    let deciding: Vec<_> = batch
        .iter()
        .map(|job| {
            let delivery = delivery_of(job).ok().and_then(|id| read.remove(id));
            decide_one(processor, job, delivery, &stacks)
        })
        .collect();
    let decide_all = futures_util::stream::iter(deciding)
        .buffered(DECIDING_AT_ONCE)
        .collect::<Vec<_>>();
    let outcomes = tokio::select! {
        outcomes = decide_all => outcomes,
        () = renew => unreachable!("renewing leases never ends"),
    };
    let mut decided = Vec::with_capacity(batch.len());
    for (job, outcome) in outcomes {
        match outcome {
            Ok(one) => decided.push((job, one)),
            Err(error) => fail(&processor.store, job, &error).await,
        }
    }
    match enact_batch(&processor.store, decided).await {
        Ok(Runs::Touched) => processor.runs_signal.notify_waiters(),
        // Workers have nothing new to look at.
        Ok(Runs::Untouched) => {}
        Err(error) => {
            // Nothing was committed; the leases lapse and the reaper queues
            // the jobs again.
            tracing::warn!(%error, jobs = batch.len(), "a batch of deliveries failed to commit");
        }
    }
}

type Read = (Delivery, Option<Vec<u8>>);

async fn read_all(
    store: &Store,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, Read>, StoreError> {
    let mut conn = store.conn().await?;
    Ok(deliveries::with_bodies(&mut conn, ids)
        .await?
        .into_iter()
        .map(|read| (read.0.id.clone(), read))
        .collect())
}

/// Decides one job's delivery, read with its batch (`None`: it does not
/// exist), within [`DECIDE_DEADLINE`].
async fn decide_one<'a>(
    processor: &Processor,
    job: &'a ClaimedJob,
    read: Option<Read>,
    stacks: &ProjectStacks,
) -> (&'a ClaimedJob, Result<Option<Decided>, ProcessError>) {
    let outcome = match (delivery_of(job), read) {
        (Err(error), _) => Err(error),
        (Ok(_), None) => Ok(None),
        (Ok(_), Some((delivery, body))) => tokio::time::timeout(
            DECIDE_DEADLINE,
            processor.decide_read(delivery, body, stacks),
        )
        .await
        .unwrap_or(Err(ProcessError::TooSlow(DECIDE_DEADLINE))),
    };
    (job, outcome)
}

/// Stacks by integration and project id.
type ByProject = std::collections::HashMap<(String, i64), Arc<[Stack]>>;

/// The stacks of each project, read once for a batch of deliveries.
#[derive(Default)]
struct ProjectStacks {
    read: std::sync::Mutex<ByProject>,
}

impl ProjectStacks {
    async fn for_project(
        &self,
        store: &Store,
        integration_id: &str,
        project_id: i64,
    ) -> Result<Arc<[Stack]>, StoreError> {
        let key = (integration_id.to_owned(), project_id);
        if let Some(found) = self.lock().get(&key) {
            return Ok(found.clone());
        }
        let found: Arc<[Stack]> = {
            let mut conn = store.conn().await?;
            stacks::for_project(&mut conn, integration_id, project_id).await?
        }
        .into();
        self.lock().insert(key, found.clone());
        Ok(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ByProject> {
        self.read
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The delivery a `process_delivery` job is for.
fn delivery_of(job: &ClaimedJob) -> Result<&str, ProcessError> {
    job.payload["delivery"]
        .as_str()
        .ok_or(ProcessError::BadJob(job.lease.job_id))
}

/// Records a failed attempt. The job is retried later; after its last
/// attempt the delivery gets an outcome that says so, with the error, and
/// can be replayed: no acknowledged delivery stays without an outcome.
async fn fail(store: &Store, job: &ClaimedJob, error: &ProcessError) {
    let id = delivery_of(job).unwrap_or("?");
    tracing::warn!(delivery.id = %id, job.id = job.lease.job_id, %error, "processing a delivery failed");
    match jobs::fail(store, &job.lease, &error.to_string(), Millis::now()).await {
        Ok(jobs::Failed::Dead) => {
            if let Err(error) = give_up(store, id, job, error).await {
                tracing::warn!(delivery.id = %id, %error, "cannot record that a delivery failed");
            }
        }
        Ok(jobs::Failed::Retry(_)) => {}
        Err(error) => tracing::warn!(delivery.id = %id, %error, "cannot record the failure"),
    }
}

async fn give_up(
    store: &Store,
    id: &str,
    job: &ClaimedJob,
    error: &ProcessError,
) -> Result<(), StoreError> {
    let outcome = format!(
        "processing failed after {} attempts; replay the delivery once the cause is fixed",
        job.lease.attempt
    );
    let processed = Processed {
        status: Status::Accepted,
        outcome: &outcome,
        error: Some(&error.to_string()),
        runs: &[],
    };
    let mut tx = store.begin().await?;
    deliveries::finish(&mut tx, id, &processed, Millis::now()).await?;
    tx.commit().await
}

/// Whether enacting a batch may have created or canceled runs.
enum Runs {
    Touched,
    Untouched,
}

async fn enact_batch(
    store: &Store,
    decided: Vec<(&ClaimedJob, Option<Decided>)>,
) -> Result<Runs, StoreError> {
    if decided.is_empty() {
        return Ok(Runs::Untouched);
    }
    let leases: Vec<&Lease> = decided.iter().map(|(job, _)| &job.lease).collect();
    let records_only = decided
        .iter()
        .all(|(_, one)| one.as_ref().is_none_or(Decided::records_only));
    if records_only {
        // The usual batch of a burst: outcomes to record and nothing else,
        // written in one go (on SQLite on the writer connection).
        let finished: Vec<Finished> = decided
            .iter()
            .filter_map(|(_, one)| one.as_ref().map(|one| one.finished(Effects::default())))
            .collect();
        let processed: Vec<_> = finished.iter().map(Finished::processed).collect();
        if deliveries::complete_and_finish(store, &leases, &processed, Millis::now()).await? {
            return Ok(Runs::Untouched);
        }
        // A lease was lost: each job goes on its own below.
    }
    let mut tx = store.begin().await?;
    // Every job completed in one statement when all leases are held (the
    // usual case); else each on its own, skipping the ones another worker
    // took over.
    let all_held = jobs::complete_all_in(&mut tx, &leases, Millis::now()).await?;
    let mut finished = Vec::with_capacity(decided.len());
    for (job, one) in decided {
        let lease = (!all_held).then_some(&job.lease);
        match enact(&mut tx, one, lease).await {
            Ok(Some(one)) => finished.push(one),
            Ok(None) => {}
            Err(ProcessError::Store(error) | ProcessError::Lease(LeaseError::Store(error))) => {
                return Err(error);
            }
            // A lost lease: another worker has the job now.
            Err(error) => tracing::warn!(%error, "skipped a delivery job"),
        }
    }
    let processed: Vec<_> = finished.iter().map(Finished::processed).collect();
    deliveries::finish_all(&mut tx, &processed, Millis::now()).await?;
    tx.commit().await?;
    // A batch that only records outcomes (here after a lost lease) gives
    // the run workers nothing new to look at.
    Ok(if records_only {
        Runs::Untouched
    } else {
        Runs::Touched
    })
}

/// Once an hour, prunes what has aged past its retention: bodies of
/// processed deliveries, logs of ended runs, sent writes, done jobs.
pub async fn prune(store: Store, retention: housekeeping::Retention) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        match housekeeping::prune(&store, retention, Millis::now()).await {
            Ok(pruned) if pruned.is_empty() => {}
            Ok(pruned) => tracing::info!(
                delivery_bodies = pruned.delivery_bodies,
                run_log_chunks = pruned.run_logs,
                outbox_writes = pruned.outbox_writes,
                jobs = pruned.jobs,
                sessions = pruned.sessions,
                "pruned records past their retention"
            ),
            Err(error) => tracing::warn!(%error, "pruning old records failed"),
        }
    }
}
