//! An R1 stream made replicated (`STREAM.UPDATE` raising `num_replicas` of a stream this
//! server holds outside the meta group): assigned to this server alone, its messages and
//! consumers imported through the new group's log, its old files retired, then grown to the
//! asked number of replicas like any replicated stream. A conversion is resumable from any
//! step: what it must finish is kept in `<replica>/convert.json` (the new group, the asked
//! config, the consumers), every step is idempotent and logged, and one task drives it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use natrium_raft::node_id;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::meta::{self, MetaOp, StreamAssignment};
use super::replica::ConsumerRecord;
use super::{replica, JsCluster};
use crate::jetstream::config::StreamConfig;
use crate::jetstream::errors::ApiError;
use crate::jetstream::stream::Stream;
use crate::util::time::unix_nanos;

/// How long the conversion waits for the new group to lead here before it answers (it goes
/// on in the background).
const LEAD_WAIT: Duration = Duration::from_secs(10);

/// How long a meta operation forwarded to the meta leader waits for its answer.
const META_OP_WAIT: Duration = Duration::from_secs(15);

/// First and longest pause between two attempts to finish a conversion.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A retried conversion says at info level why it is not done every this many attempts
/// (the others at debug level).
const SAY_EVERY: u32 = 6;

/// How long a stopping server waits for its conversions to stop at their current step.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// How long a conversion waits for the meta state here to show an operation the meta leader
/// applied.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// What a conversion must finish, kept in the replica's directory until it is done.
const MARKER: &str = "convert.json";

/// Where the R1 stream's files are moved once its messages are imported (one rename: a
/// restart no longer recovers the R1 stream), then removed.
const RETIRED: &str = "r1.retired";

/// The steps of a conversion, in order. A cut at any of them is taken up from the marker:
/// before `Retire` the R1 files are still in the account and are imported again (what the
/// group already stored is recognised), after it the marker and the assignment say the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The marker is written; the assignment to this server alone is proposed.
    Assign,
    /// Assigned: the R1 stream leaves the account (its publishers retry meanwhile).
    Take,
    /// The new group leads here: the R1 messages and consumers go through its log.
    Import,
    /// Half the messages are imported (a point where the test hook can pause).
    ImportHalf,
    /// Imported: the R1 files are moved out of the account and removed.
    Retire,
    /// The replica takes publishes.
    Release,
    /// The stream is grown to the asked number of replicas.
    Grow,
    /// Grown: the marker goes.
    Forget,
}

impl Step {
    const ALL: [Step; 8] = [
        Step::Assign,
        Step::Take,
        Step::Import,
        Step::ImportHalf,
        Step::Retire,
        Step::Release,
        Step::Grow,
        Step::Forget,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Step::Assign => "assign",
            Step::Take => "take",
            Step::Import => "import",
            Step::ImportHalf => "import-half",
            Step::Retire => "retire",
            Step::Release => "release",
            Step::Grow => "grow",
            Step::Forget => "forget",
        }
    }

    /// The step named `name` (as `name` gives it).
    pub(crate) fn parse(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A conversion under way here: its step, and whether the test hook holds it there.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Progress {
    pub(crate) step: Step,
    pub(crate) paused: bool,
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    /// The config asked for (its `num_replicas`).
    config: StreamConfig,
    consumers: Vec<(String, ConsumerRecord)>,
    /// The new group's name: a marker naming another group than the stream's assignment is
    /// left from a conversion whose assignment never committed. Empty in markers written
    /// before it was kept (they match any group).
    #[serde(default)]
    group: String,
}

impl Pending {
    /// The conversion pending in replica directory `dir`, if any.
    pub(super) fn read(dir: &Path) -> Option<Pending> {
        let bytes = std::fs::read(dir.join(MARKER)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!("{}: {e}", dir.join(MARKER).display());
                None
            }
        }
    }

    /// The conversion pending in `dir` for the stream's group `group`, if any.
    pub(super) fn read_for(dir: &Path, group: &str) -> Option<Pending> {
        Pending::read(dir).filter(|p| p.group.is_empty() || p.group == group)
    }

    fn write(&self, dir: &Path) -> std::io::Result<()> {
        crate::util::fs::create_dir_all_durable(dir)?;
        let body = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::util::fs::write_atomic(&dir.join(MARKER), &body)
    }

    fn remove(dir: &Path) {
        if let Err(e) = std::fs::remove_file(dir.join(MARKER)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("{}: {e}", dir.join(MARKER).display());
            }
        }
    }
}

/// The task driving a conversion holds this: its stream is in `converting` until it drops.
pub(super) struct Driving {
    cl: Arc<JsCluster>,
    key: String,
}

impl Drop for Driving {
    fn drop(&mut self) {
        self.cl.converting.lock().remove(&self.key);
    }
}

/// One conversion as its task drives it.
pub(super) struct Run {
    account: String,
    name: String,
    dir: PathBuf,
    pending: Pending,
    /// Started through the API on this server (not taken up after a restart): only these
    /// stop where the test hook says.
    live: bool,
    _driving: Driving,
}

impl Run {
    fn key(&self) -> String {
        meta::key(&self.account, &self.name)
    }
}

/// An error for a conversion stopped by the server's shutdown.
fn stopping() -> ApiError {
    ApiError::cluster_unavailable("server stopping")
}

impl JsCluster {
    /// The assignment of stream `name` once the meta group's state here holds it (waiting a
    /// little for an operation the meta leader applied first).
    async fn applied_assignment(&self, account: &str, name: &str) -> Option<StreamAssignment> {
        let deadline = tokio::time::Instant::now() + APPLY_WAIT;
        loop {
            if let Some(a) = self.assignment(account, name) {
                return Some(a);
            }
            if tokio::time::Instant::now() >= deadline || *self.stop.borrow() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether `name` is an R1 stream of `account` held by this server.
    pub(super) fn holds_local(&self, account: &str, name: &str) -> bool {
        self.assignment(account, name).is_none()
            && self
                .jetstream()
                .and_then(|js| js.catalog(account))
                .is_some_and(|c| c.stream(name).is_ok())
    }

    /// Proposes a meta operation from any server: on the meta leader, or forwarded to it.
    pub(super) async fn propose_meta_anywhere(&self, op: &MetaOp) -> Result<Value, ApiError> {
        if self.is_meta_leader() {
            return self.propose_meta(op).await;
        }
        let leader = self
            .meta_leader()
            .filter(|l| *l != self.name)
            .ok_or_else(|| ApiError::cluster_unavailable("no meta leader"))?;
        let body = serde_json::to_vec(op).map_err(ApiError::invalid_json)?;
        let answer = self
            .request(
                &super::api::forward_subject(node_id(&leader)),
                Some(b"NATS/1.0\r\nNrx-Meta: op\r\n\r\n"),
                &body,
                META_OP_WAIT,
            )
            .await
            .map_err(ApiError::cluster_unavailable)?;
        meta::answer(&answer)
    }

    /// On the meta leader: a meta operation another server forwarded; the answer as
    /// `meta::answer` reads it.
    pub(super) async fn meta_op_forwarded(&self, body: &[u8]) -> Vec<u8> {
        let r = match serde_json::from_slice::<MetaOp>(body) {
            Ok(op) => self.propose_meta(&op).await,
            Err(e) => Err(ApiError::invalid_json(e)),
        };
        match r {
            Ok(v) => v.to_string().into_bytes(),
            Err(e) => json!({ "error": e }).to_string().into_bytes(),
        }
    }

    /// The directory of this server's replica of a stream.
    pub(super) fn replica_dir(&self, account: &str, name: &str) -> std::path::PathBuf {
        self.dir.join("streams").join(account).join(name)
    }

    /// The conversion under way here of stream `name` in `account`, if any.
    pub(crate) fn conversion(&self, account: &str, name: &str) -> Option<Progress> {
        self.converting
            .lock()
            .get(&meta::key(account, name))
            .copied()
    }

    /// Lets conversions the test hook paused go on (and later ones pass their pause).
    pub(crate) fn continue_conversions(&self) {
        self.conversion_go.send_replace(true);
    }

    /// Marks stream `key` as driven by the caller, unless a task drives it already.
    fn drive(self: &Arc<Self>, key: String) -> Option<Driving> {
        let mut map = self.converting.lock();
        if map.contains_key(&key) {
            return None;
        }
        map.insert(
            key.clone(),
            Progress {
                step: Step::Assign,
                paused: false,
            },
        );
        Some(Driving {
            cl: self.clone(),
            key,
        })
    }

    /// Resolves once the server stops.
    async fn stopped(&self) {
        let mut stop = self.stop.subscribe();
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                return;
            }
        }
    }

    /// `f`, unless the server stops first (then a "stopping" error; nothing of `f` runs on).
    async fn until_stop<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        tokio::select! {
            r = f => r,
            _ = self.stopped() => Err(stopping()),
        }
    }

    /// Waits (bounded) until no conversion runs here: each stops at its next step once the
    /// server stops.
    pub(super) async fn conversions_stopped(&self) {
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while !self.converting.lock().is_empty() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("JetStream cluster: a stream conversion did not stop in time");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The conversion reaches `step`: noted for `conversion`; a live conversion stops there
    /// while the test hook (`JetStreamOptions::conversion_pause`) names it, until
    /// `continue_conversions` (or for good once the server stops). Fails once the server stops.
    async fn reach(&self, run: &Run, step: Step) -> Result<(), ApiError> {
        let key = run.key();
        if let Some(p) = self.converting.lock().get_mut(&key) {
            p.step = step;
        }
        if *self.stop.borrow() {
            return Err(stopping());
        }
        let hooked = self
            .jetstream()
            .and_then(|js| js.options().conversion_pause.clone())
            .and_then(|s| Step::parse(&s));
        if !run.live || hooked != Some(step) || *self.conversion_go.borrow() {
            return Ok(());
        }
        tracing::warn!(
            "JetStream cluster: stream '{} > {}': conversion paused before step '{}' (test hook)",
            run.account,
            run.name,
            step.name()
        );
        let set_paused = |paused: bool| {
            if let Some(p) = self.converting.lock().get_mut(&key) {
                p.paused = paused;
            }
        };
        set_paused(true);
        let mut go = self.conversion_go.subscribe();
        let r = self
            .until_stop(async {
                while !*go.borrow_and_update() {
                    if go.changed().await.is_err() {
                        return Err(stopping());
                    }
                }
                Ok(())
            })
            .await;
        set_paused(false);
        r
    }

    /// `STREAM.UPDATE` of an R1 stream held here to `num_replicas > 1`.
    pub(super) async fn convert(
        self: &Arc<Self>,
        account: &str,
        name: &str,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        let cfg = Self::parse_config(name, payload)?;
        let js = self
            .jetstream()
            .ok_or_else(|| ApiError::cluster_unavailable("stopping"))?;
        let catalog = js
            .catalog(account)
            .ok_or_else(ApiError::not_enabled_for_account)?;
        let local = catalog.stream(name)?;
        let old = local.config();
        old.check_update(&StreamConfig {
            num_replicas: old.num_replicas,
            ..cfg.clone()
        })?;
        if old.mirror.is_some() || old.sources.as_ref().is_some_and(|s| !s.is_empty()) {
            // Sourcing runs on R1 streams only here.
            return Err(ApiError::replicas_not_updatable());
        }
        // Placed first: too few servers refuse the update with the R1 stream untouched.
        self.place(
            cfg.num_replicas as usize - 1,
            cfg.placement.as_ref(),
            std::slice::from_ref(&self.name),
        )?;
        let driving = self.drive(meta::key(account, name)).ok_or_else(|| {
            ApiError::cluster_unavailable("a conversion of this stream is under way")
        })?;
        let dir = self.replica_dir(account, name);
        // A marker left by an attempt whose assignment was not confirmed names the group to
        // propose again: if that assignment did commit, this one is the same.
        let group = Pending::read(&dir)
            .map(|p| p.group)
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| format!("S-{account}-{name}-{:08x}", fastrand::u32(..)));
        // First a group of this server alone, which leads it at once.
        let sa = StreamAssignment {
            account: account.to_string(),
            group: group.clone(),
            config: StreamConfig {
                num_replicas: 1,
                ..cfg.clone()
            },
            peers: vec![self.name.clone()],
            created_ns: unix_nanos(local.created),
        };
        let run = Run {
            account: account.to_string(),
            name: name.to_string(),
            dir: dir.clone(),
            pending: Pending {
                config: cfg,
                consumers: replica::consumer_records(&local),
                group,
            },
            live: true,
            _driving: driving,
        };
        run.pending
            .write(&dir)
            .map_err(|e| ApiError::store_failed(e.to_string()))?;
        tracing::info!(
            "JetStream cluster: stream '{account} > {name}': converting to {} replicas: assigning it to this server alone (group {}) to import its {} messages",
            run.pending.config.num_replicas,
            sa.group,
            local.store.state().msgs
        );
        self.reach(&run, Step::Assign).await?;
        let added = self
            .until_stop(self.propose_meta_anywhere(&MetaOp::AddStream { sa: sa.clone() }))
            .await;
        // Ours when it names our group: an equal config already there may be ours (a retry
        // of an attempt that did commit) or another server's stream of that name.
        // Either way, the conversion goes on once the meta state here holds it (a forwarded
        // operation is applied by the meta leader first): each later step reads it.
        let assigned = match &added {
            Ok(_) => match self.applied_assignment(account, name).await {
                Some(a) if a.group == sa.group => Ok(a),
                Some(_) => Err(None),
                None => Err(Some(ApiError::cluster_unavailable(
                    "assignment not applied here in time",
                ))),
            },
            Err(e) => match self
                .assignment(account, name)
                .filter(|a| a.group == sa.group)
            {
                Some(a) => Ok(a),
                None => Err(Some(e.clone())),
            },
        };
        let sa = match assigned {
            Ok(a) => a,
            Err(None) => {
                tracing::warn!(
                    "JetStream cluster: stream '{account} > {name}': another server's stream of that name is replicated; not converted"
                );
                Pending::remove(&dir);
                return Err(ApiError::stream_name_exists());
            }
            Err(Some(e)) => {
                // Perhaps committed later: the marker stays, so the reconciler takes the
                // conversion up if the assignment shows up (and a retry proposes the same).
                tracing::warn!(
                    "JetStream cluster: stream '{account} > {name}': conversion not assigned: {}; kept {} in case it commits",
                    e.description,
                    dir.join(MARKER).display()
                );
                drop(run);
                if let Some(a) = self
                    .assignment(account, name)
                    .filter(|a| a.group == sa.group)
                {
                    self.ensure_replica(&a).await;
                }
                return Err(e);
            }
        };
        self.reach(&run, Step::Take).await?;
        // Assigned: ingest stops here (publishers retry) until the new leader listens.
        let local = match catalog.remove(name) {
            Ok(l) => l,
            Err(e) => {
                // Deleted meanwhile: the conversion goes on without it.
                drop(run);
                self.ensure_replica(&sa).await;
                return Err(e);
            }
        };
        tracing::info!(
            "JetStream cluster: stream '{account} > {name}': assigned; its R1 stream left the account (its files stay until the import is committed); opening its group"
        );
        self.open_replica(&sa, false).await;
        let mut local = Some(local);
        match self.finish_conversion(&run, &mut local, LEAD_WAIT).await {
            Ok(v) => Ok(v),
            Err(e) if *self.stop.borrow() => Err(e),
            Err(e) => {
                tracing::warn!(
                    "JetStream cluster: stream '{account} > {name}': conversion not finished ({}); it goes on once its new group leads here; its R1 files are kept in {}",
                    e.description,
                    catalog.stream_dir(name).display()
                );
                tokio::spawn(self.clone().resume_conversion(run, local));
                Err(e)
            }
        }
    }

    /// Before a replica opens (the reconciler's `ensure_replica`): a conversion left
    /// unfinished (by a restart, or an assignment that committed late) is taken up; its R1
    /// stream, recovered into the account at start, is taken out of it first. A marker
    /// naming another group is stale and goes.
    pub(super) fn pending_conversion(
        self: &Arc<Self>,
        sa: &StreamAssignment,
        dir: &Path,
    ) -> Option<(Run, Option<Arc<Stream>>)> {
        let pending = Pending::read(dir)?;
        if !pending.group.is_empty() && pending.group != sa.group {
            tracing::warn!(
                "JetStream cluster: stream '{} > {}': {} names group {}, not its group {}: removed (a conversion never assigned)",
                sa.account,
                sa.config.name,
                dir.join(MARKER).display(),
                pending.group,
                sa.group
            );
            Pending::remove(dir);
            return None;
        }
        let driving = self.drive(sa.key())?;
        let catalog = self.jetstream().and_then(|js| js.catalog(&sa.account));
        let local = catalog
            .as_ref()
            .and_then(|c| c.remove(&sa.config.name).ok());
        tracing::info!(
            "JetStream cluster: stream '{} > {}': taking up its conversion to {} replicas ({})",
            sa.account,
            sa.config.name,
            pending.config.num_replicas,
            match &local {
                Some(l) => format!("importing its {} R1 messages", l.store.state().msgs),
                None => "its R1 messages imported".into(),
            }
        );
        let run = Run {
            account: sa.account.clone(),
            name: sa.config.name.clone(),
            dir: dir.to_path_buf(),
            pending,
            live: false,
            _driving: driving,
        };
        Some((run, local))
    }

    /// Tries to finish a conversion until it is done, the stream is no longer assigned here,
    /// or the server stops; waits with backoff between attempts.
    pub(super) async fn resume_conversion(
        self: Arc<Self>,
        run: Run,
        mut local: Option<Arc<Stream>>,
    ) {
        let mut wait = RETRY_FIRST;
        let mut attempt = 0u32;
        loop {
            let mine = self
                .assignment(&run.account, &run.name)
                .is_some_and(|sa| sa.peers.contains(&self.name));
            if *self.stop.borrow() {
                return;
            }
            if !mine {
                tracing::warn!(
                    "JetStream cluster: stream '{} > {}': no longer assigned here; its conversion stops",
                    run.account,
                    run.name
                );
                return;
            }
            if let Some(sa) = self
                .assignment(&run.account, &run.name)
                .filter(|_| self.replica(&run.account, &run.name).is_none())
            {
                // Its replica did not open (or was closed): opened again for this conversion.
                self.open_replica_boxed(sa).await;
            }
            match self.finish_conversion(&run, &mut local, wait).await {
                Ok(_) => return,
                Err(_) if *self.stop.borrow() => return,
                Err(e) => {
                    attempt += 1;
                    if attempt % SAY_EVERY == 1 {
                        tracing::info!(
                            "JetStream cluster: stream '{} > {}': conversion not finished yet (attempt {attempt}): {}",
                            run.account,
                            run.name,
                            e.description
                        );
                    } else {
                        tracing::debug!(
                            "JetStream cluster: stream '{} > {}': conversion not finished yet (attempt {attempt}): {}",
                            run.account,
                            run.name,
                            e.description
                        );
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stopped() => return,
            }
            wait = (wait * 2).min(RETRY_MAX);
        }
    }

    /// `open_replica` for a conversion's task (boxed: opening a replica may start that task).
    fn open_replica_boxed(
        self: &Arc<Self>,
        sa: StreamAssignment,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move { self.open_replica(&sa, false).await })
    }

    /// Waits (up to `within`) until the new group leads here; its replica then.
    async fn conversion_leader(
        &self,
        run: &Run,
        within: Duration,
    ) -> Result<Arc<super::Replica>, ApiError> {
        let deadline = tokio::time::Instant::now() + within;
        self.until_stop(async {
            loop {
                match self
                    .replica(&run.account, &run.name)
                    .filter(|r| r.is_leader())
                {
                    Some(r) => return Ok(r),
                    None if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    None => return Err(ApiError::cluster_unavailable("new group has no leader")),
                }
            }
        })
        .await
    }

    /// Takes a conversion from wherever it was cut to its end: once the new group leads here
    /// (waiting up to `within`), imports the R1 stream's messages and consumers (when its
    /// files are still in the account: again from the start after a cut, what the group
    /// already stored is recognised), retires its files, lets the replica take publishes,
    /// grows the stream to the asked replicas, forgets the marker. A stream found grown
    /// already only has its marker to forget. `local` is the R1 stream until it is retired
    /// (an attempt cut after that goes on from there).
    async fn finish_conversion(
        &self,
        run: &Run,
        local: &mut Option<Arc<Stream>>,
        within: Duration,
    ) -> Result<Value, ApiError> {
        let (account, name) = (run.account.as_str(), run.name.as_str());
        let want = run.pending.config.num_replicas;
        let grown = self
            .assignment(account, name)
            .ok_or_else(ApiError::stream_not_found)?
            .config
            .num_replicas
            == want;
        if !grown {
            self.reach(run, Step::Import).await?;
            let r = self.conversion_leader(run, within).await?;
            if let Some(local) = local.as_ref() {
                let msgs = local.store.state().msgs;
                tracing::info!(
                    "JetStream cluster: stream '{account} > {name}': importing {msgs} messages and {} consumers into its new group",
                    run.pending.consumers.len()
                );
                let half = self.reach(run, Step::ImportHalf);
                self.until_stop(r.import(local, run.pending.consumers.clone(), half))
                    .await?;
                tracing::info!(
                    "JetStream cluster: stream '{account} > {name}': {msgs} messages imported and committed"
                );
            } else if let Some(dir) = self.r1_files(account, name) {
                // Its files are there, but its start did not load them: nothing is taken as
                // imported that may not be.
                return Err(ApiError::store_failed(format!(
                    "its R1 files in {} were not loaded",
                    dir.display()
                )));
            }
            self.reach(run, Step::Retire).await?;
            self.retire_r1(run, local.as_ref())?;
            *local = None;
            self.reach(run, Step::Release).await?;
            if !r.ingest_released() {
                tracing::info!(
                    "JetStream cluster: stream '{account} > {name}': its new group takes publishes"
                );
            }
            r.release_ingest();
            self.reach(run, Step::Grow).await?;
            let sa = self
                .assignment(account, name)
                .ok_or_else(ApiError::stream_not_found)?;
            if sa.config.num_replicas != want {
                let extra = self.place(
                    want as usize - 1,
                    run.pending.config.placement.as_ref(),
                    std::slice::from_ref(&self.name),
                )?;
                let mut peers = vec![self.name.clone()];
                peers.extend(extra);
                tracing::info!(
                    "JetStream cluster: stream '{account} > {name}': growing to {want} replicas on {}",
                    peers.join(", ")
                );
                self.until_stop(self.propose_meta_anywhere(&MetaOp::UpdateStream {
                    account: account.to_string(),
                    config: run.pending.config.clone(),
                    peers: Some(peers),
                }))
                .await?;
                // The answer below (and a later attempt) reads the meta state here.
                let deadline = tokio::time::Instant::now() + APPLY_WAIT;
                while self
                    .assignment(account, name)
                    .is_some_and(|a| a.config.num_replicas != want)
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        } else {
            // Grown before a cut: the import was committed and the R1 files retired then.
            self.retire_r1(run, local.as_ref())?;
            *local = None;
            if let Some(r) = self.replica(account, name) {
                r.release_ingest();
            }
        }
        self.reach(run, Step::Forget).await?;
        Pending::remove(&run.dir);
        tracing::info!(
            "JetStream cluster: stream '{account} > {name}': conversion to {want} replicas finished"
        );
        let sa = self
            .assignment(account, name)
            .ok_or_else(ApiError::stream_not_found)?;
        Ok(self.assignment_info(&sa))
    }

    /// The directory of the R1 stream `name` of `account` if it is still on disk.
    fn r1_files(&self, account: &str, name: &str) -> Option<PathBuf> {
        let dir = self.jetstream()?.catalog(account)?.stream_dir(name);
        dir.exists().then_some(dir)
    }

    /// Moves the imported R1 stream's files out of the account (one rename: a restart no
    /// longer finds it there) and removes them; also what an earlier cut left of them.
    fn retire_r1(&self, run: &Run, local: Option<&Arc<Stream>>) -> Result<(), ApiError> {
        if *self.stop.borrow() {
            return Err(stopping());
        }
        let retired = run.dir.join(RETIRED);
        if let Some(local) = local {
            let catalog = self
                .jetstream()
                .and_then(|js| js.catalog(&run.account))
                .ok_or_else(ApiError::not_enabled_for_account)?;
            if retired.exists() {
                std::fs::remove_dir_all(&retired)
                    .map_err(|e| ApiError::delete_failed(e.to_string()))?;
            }
            catalog.retire(local, &retired)?;
            tracing::info!(
                "JetStream cluster: stream '{} > {}': its R1 files left the account",
                run.account,
                run.name
            );
        }
        if retired.exists() {
            std::fs::remove_dir_all(&retired)
                .map_err(|e| ApiError::delete_failed(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_named_and_parsed_back() {
        for s in Step::ALL {
            assert_eq!(Step::parse(s.name()), Some(s));
        }
        assert_eq!(Step::parse("nowhere"), None);
    }

    #[test]
    fn a_marker_names_its_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config: StreamConfig =
            serde_json::from_value(json!({"name": "S", "num_replicas": 3})).expect("config");
        config.normalize();
        let p = Pending {
            config,
            consumers: vec![],
            group: "S-A-S-1".into(),
        };
        p.write(dir.path()).expect("written");
        assert!(Pending::read_for(dir.path(), "S-A-S-1").is_some());
        assert!(Pending::read_for(dir.path(), "S-A-S-2").is_none());
        // A marker written before groups were kept matches any group.
        std::fs::write(
            dir.path().join(MARKER),
            serde_json::to_vec(&json!({"config": p.config, "consumers": []})).expect("json"),
        )
        .expect("old marker");
        assert!(Pending::read_for(dir.path(), "S-A-S-2").is_some());
        Pending::remove(dir.path());
        assert!(Pending::read(dir.path()).is_none());
    }
}
