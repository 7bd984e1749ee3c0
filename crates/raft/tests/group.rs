//! Groups of three and four nodes in one process over an in-memory transport that can cut
//! links: replication, leader loss, a partitioned minority, restart from disk, snapshots for a
//! new member. Every wait is bounded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natrium_raft::{
    node_id, Group, GroupConfig, GroupStatus, NodeId, Peer, RaftError, Role, RpcKind, StateMachine,
    Transport, TransportError,
};
use parking_lot::Mutex;

/// Applied entries, shared with the test, and for each whether it was applied as `inherited`
/// (this node leading a later term than the entry's).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Vec<u8>>>>, Arc<Mutex<Vec<bool>>>);

impl StateMachine for Log {
    fn apply(&mut self, _index: u64, data: &[u8]) -> Vec<u8> {
        let mut v = self.0.lock();
        v.push(data.to_vec());
        (v.len() as u64).to_le_bytes().to_vec()
    }
    fn apply_entry(&mut self, index: u64, data: &[u8], inherited: bool) -> Vec<u8> {
        self.1.lock().push(inherited);
        self.apply(index, data)
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&*self.0.lock()).map_err(|e| e.to_string())
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        *self.0.lock() = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// An in-memory network: each node's group by id, and the links cut.
#[derive(Default)]
struct Net {
    groups: Mutex<HashMap<NodeId, Group>>,
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
    /// Nodes that hear no answers: their requests are served, the answers lost.
    deaf: Mutex<HashSet<NodeId>>,
    /// Added to every request and to every answer.
    delay: Mutex<Duration>,
}

struct Link {
    from: NodeId,
    net: Arc<Net>,
}

impl Transport for Link {
    fn call(
        &self,
        to: NodeId,
        _peer: &Peer,
        kind: RpcKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> natrium_raft::CallFuture {
        let net = self.net.clone();
        let from = self.from;
        Box::pin(async move {
            let cut = {
                let c = net.cut.lock();
                c.contains(&(from, to)) || c.contains(&(to, from))
            };
            let target = net.groups.lock().get(&to).cloned();
            let Some(g) = target.filter(|_| !cut) else {
                return Err(TransportError::Unreachable(format!("{to} cut off")));
            };
            let delay = *net.delay.lock();
            let slow = async {
                tokio::time::sleep(delay).await;
                let r = g.handle_rpc(kind, &body).await;
                tokio::time::sleep(delay).await;
                r
            };
            match tokio::time::timeout(timeout, slow).await {
                Ok(Ok(_)) if net.deaf.lock().contains(&from) => Err(TransportError::Timeout),
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(TransportError::Unreachable(e)),
                Err(_) => Err(TransportError::Timeout),
            }
        })
    }
}

struct Node {
    name: String,
    id: NodeId,
    dir: PathBuf,
    group: Group,
    state: Log,
}

fn config() -> GroupConfig {
    GroupConfig {
        name: "test".into(),
        heartbeat: Duration::from_millis(50),
        append_timeout: Duration::from_millis(150),
        election_min: Duration::from_millis(300),
        election_max: Duration::from_millis(600),
        snapshot_every: 64,
        keep_behind_snapshot: 8,
        propose_timeout: Duration::from_secs(2),
        ..GroupConfig::default()
    }
}

async fn open(net: &Arc<Net>, name: &str, dir: &Path) -> Node {
    open_with(net, name, dir, config()).await
}

async fn open_with(net: &Arc<Net>, name: &str, dir: &Path, cfg: GroupConfig) -> Node {
    let id = node_id(name);
    let state = Log::default();
    let link = Arc::new(Link {
        from: id,
        net: net.clone(),
    });
    // The member marker beside the group's directory (as the server keeps it).
    let cfg = GroupConfig {
        member_marker: Some(dir.with_extension("member")),
        ..cfg
    };
    let group = Group::open(id, &cfg, dir, state.clone(), link)
        .await
        .expect("open group");
    net.groups.lock().insert(id, group.clone());
    Node {
        name: name.to_string(),
        id,
        dir: dir.to_path_buf(),
        group,
        state,
    }
}

async fn cluster(net: &Arc<Net>, root: &Path, names: &[&str]) -> Vec<Node> {
    let mut nodes = Vec::new();
    for n in names {
        nodes.push(open(net, n, &root.join(n)).await);
    }
    let members: BTreeMap<NodeId, Peer> = nodes
        .iter()
        .map(|n| {
            (
                n.id,
                Peer {
                    name: n.name.clone(),
                },
            )
        })
        .collect();
    nodes[0]
        .group
        .initialize(members)
        .await
        .expect("initialize");
    nodes
}

/// Waits (bounded) until one of `nodes` other than `not` leads and the others agree.
async fn leader(nodes: &[&Node], not: Option<NodeId>) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leaders: Vec<NodeId> = nodes
            .iter()
            .filter(|n| n.group.status().role == Role::Leader)
            .map(|n| n.id)
            .filter(|id| Some(*id) != not)
            .collect();
        if let [l] = leaders[..] {
            if nodes
                .iter()
                .all(|n| n.group.status().leader.map(|x| x.0) == Some(l))
            {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no single leader in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_applied(node: &Node, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.state.0.lock().len() < n {
        assert!(
            Instant::now() < deadline,
            "{} applied {} of {n}",
            node.name,
            node.state.0.lock().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn by_id(nodes: &[Node], id: NodeId) -> &Node {
    nodes.iter().find(|n| n.id == id).expect("node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_in_order_and_survive_a_leader_loss() {
    let root = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Net::default());
    let nodes = cluster(&net, root.path(), &["a", "b", "c"]).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let l1 = leader(&all, None).await;
    let lead = by_id(&nodes, l1);
    for i in 0..100u32 {
        let (_, reply) = lead
            .group
            .propose(i.to_le_bytes().to_vec())
            .await
            .expect("committed");
        assert_eq!(
            reply,
            u64::from(i + 1).to_le_bytes(),
            "applied on the leader"
        );
    }
    // A follower refuses proposals and names the leader.
    let follower = nodes.iter().find(|n| n.id != l1).expect("follower");
    match follower.group.propose(b"x".to_vec()).await {
        Err(RaftError::NotLeader {
            leader: Some((id, name)),
        }) => {
            assert_eq!(id, l1);
            assert_eq!(name, lead.name);
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    for n in &nodes {
        wait_applied(n, 100).await;
    }
    let expected: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_le_bytes().to_vec()).collect();
    for n in &nodes {
        assert_eq!(*n.state.0.lock(), expected, "{} applied the same", n.name);
    }
    let st = lead.group.status();
    assert_eq!(st.peers.len(), 2);
    assert!(st
        .peers
        .iter()
        .all(|p| p.matched.is_some() && p.last_contact.is_some()));

    // The leader goes away: the two others elect one of them and go on.
    lead.group.shutdown().await;
    net.groups.lock().remove(&l1);
    let rest: Vec<&Node> = nodes.iter().filter(|n| n.id != l1).collect();
    let started = Instant::now();
    let l2 = leader(&rest, Some(l1)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "election took {took:?}");
    by_id(&nodes, l2)
        .group
        .propose(b"after".to_vec())
        .await
        .expect("committed by two of three");
    for n in &rest {
        wait_applied(n, 101).await;
    }

    // The old leader comes back from its directory and catches up.
    let old = &nodes.iter().find(|n| n.id == l1).expect("old");
    let back = open(&net, &old.name, &old.dir).await;
    assert!(
        !back.group.status().vote_guarded,
        "a clean restart is not damage"
    );
    wait_applied(&back, 101).await;
    assert_eq!(
        back.state.0.lock().last().map(Vec::as_slice),
        Some(&b"after"[..])
    );
    for n in nodes.iter().filter(|n| n.id != l1) {
        n.group.shutdown().await;
    }
    back.group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_slower_than_the_heartbeat_still_commits() {
    // 60 ms each way: every AppendEntries takes over twice the 50 ms heartbeat. openraft 0.9
    // bounds an append by its heartbeat interval; when that was the heartbeat, no append ever
    // succeeded and nothing committed. It is now `append_timeout` (150 ms here).
    let root = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Net::default());
    let nodes = cluster(&net, root.path(), &["a", "b", "c"]).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let l = leader(&all, None).await;
    *net.delay.lock() = Duration::from_millis(60);
    let leader_node = by_id(&nodes, l);
    for i in 0..10u8 {
        let r = leader_node.group.propose(vec![i]).await;
        assert!(r.is_ok(), "proposal {i} over the slow link: {r:?}");
    }
    // Heard every 50 ms plus the delay: no follower campaigned meanwhile.
    assert_eq!(leader_node.group.status().role, Role::Leader);
    for n in &nodes {
        wait_applied(n, 10).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_stops_committing_and_the_majority_goes_on() {
    let root = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Net::default());
    let nodes = cluster(&net, root.path(), &["p1", "p2", "p3"]).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let l1 = leader(&all, None).await;
    by_id(&nodes, l1)
        .group
        .propose(b"before".to_vec())
        .await
        .expect("committed");
    {
        let mut cut = net.cut.lock();
        for n in nodes.iter().filter(|n| n.id != l1) {
            cut.insert((l1, n.id));
        }
    }
    // The old leader can not commit alone.
    let r = by_id(&nodes, l1).group.propose(b"lost".to_vec()).await;
    assert!(
        matches!(
            r,
            Err(RaftError::Timeout) | Err(RaftError::NotLeader { .. })
        ),
        "minority proposal: {r:?}"
    );
    let rest: Vec<&Node> = nodes.iter().filter(|n| n.id != l1).collect();
    let l2 = leader(&rest, Some(l1)).await;
    by_id(&nodes, l2)
        .group
        .propose(b"majority".to_vec())
        .await
        .expect("committed by the majority");
    // Healed: the old leader follows and holds only committed entries.
    net.cut.lock().clear();
    let old = by_id(&nodes, l1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while old.state.0.lock().last().map(Vec::as_slice) != Some(&b"majority"[..]) {
        assert!(Instant::now() < deadline, "old leader never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *old.state.0.lock(),
        vec![b"before".to_vec(), b"majority".to_vec()],
        "the minority's entry is gone"
    );
    for n in &nodes {
        n.group.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_catches_up_from_a_snapshot() {
    let root = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Net::default());
    let nodes = cluster(&net, root.path(), &["s1", "s2", "s3"]).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let l = by_id(&nodes, leader(&all, None).await);
    for i in 0..300u32 {
        l.group
            .propose(i.to_le_bytes().to_vec())
            .await
            .expect("committed");
    }
    // Snapshots were taken and the log behind them dropped.
    let fresh = open(&net, "s4", &root.path().join("s4")).await;
    l.group
        .add_member(fresh.id, Peer { name: "s4".into() })
        .await
        .expect("added");
    wait_applied(&fresh, 300).await;
    assert_eq!(*fresh.state.0.lock(), *l.state.0.lock());
    assert!(
        root.path().join("s4").join("snapshot").exists(),
        "caught up through a snapshot"
    );
    let st = l.group.status();
    assert!(st.peers.iter().any(|p| p.name == "s4" && p.voter));
    for n in nodes.iter().chain(std::iter::once(&fresh)) {
        n.group.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_steps_down_and_another_is_elected() {
    let root = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Net::default());
    let nodes = cluster(&net, root.path(), &["a", "b", "c"]).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let l1 = leader(&all, None).await;
    let lead = by_id(&nodes, l1);
    lead.group
        .propose(b"one".to_vec())
        .await
        .expect("committed");
    // A follower can not step down.
    let follower = nodes.iter().find(|n| n.id != l1).expect("follower");
    assert!(matches!(
        follower.group.step_down(Duration::from_secs(1)).await,
        Err(RaftError::NotLeader { .. })
    ));
    let started = Instant::now();
    let (l2, name) = lead
        .group
        .step_down(Duration::from_secs(8))
        .await
        .expect("another leader");
    assert_ne!(l2, l1);
    assert_eq!(name, by_id(&nodes, l2).name);
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(leader(&all, Some(l1)).await, l2);
    // The old leader follows and takes part again: the new leader commits, all apply.
    by_id(&nodes, l2)
        .group
        .propose(b"two".to_vec())
        .await
        .expect("committed after the stepdown");
    for n in &nodes {
        wait_applied(n, 2).await;
    }
    for n in &nodes {
        n.group.shutdown().await;
    }
}

/// Flips a bit in the middle of the only log segment in `dir/log` (a record with intact ones
/// after it: damage, not a torn write).
fn damage_log(dir: &Path) {
    let segs: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    let mut bytes = std::fs::read(&segs[0]).expect("read");
    let pos = bytes.len() / 2;
    bytes[pos] ^= 0x20;
    std::fs::write(&segs[0], &bytes).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_back_with_a_damaged_log_rejoins_and_the_leader_goes_on() {
    // The follower's log is cut at the damage, shorter than what it acknowledged. Before
    // openraft's `loosen-follower-log-revert` was enabled, the leader's progress tracking
    // panicked on the shorter answer and the group stopped committing.
    follower_back_after(damage_log, |st| st.last_log_index < 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_raft_directory_was_lost_does_not_vote_until_caught_up() {
    // Its directory gone whole (a wiped disk): the node had acknowledged entries and voted,
    // and would otherwise rejoin as a new member and vote at once. The marker beside the
    // directory says it was a member.
    let wipe = |dir: &Path| std::fs::remove_dir_all(dir).expect("wipe");
    follower_back_after(wipe, |st| st.last_log_index == 0).await;
}

/// Three nodes commit 40 entries; a follower is stopped, `damage` is done to its directory,
/// it is opened again (`cut` checks its status then): it must be guarded, the leader goes on
/// and repairs it, and it votes again once it matches the leader up to the commit index.
async fn follower_back_after(damage: impl FnOnce(&Path), cut: impl Fn(&GroupStatus) -> bool) {
    let root = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Net::default());
    let nodes = cluster(&net, root.path(), &["a", "b", "c"]).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let l = leader(&all, None).await;
    let lead = by_id(&nodes, l);
    // Fewer than `snapshot_every`: the whole log stays on disk.
    for i in 0..40u32 {
        lead.group
            .propose(i.to_le_bytes().to_vec())
            .await
            .expect("committed");
    }
    for n in &nodes {
        wait_applied(n, 40).await;
    }
    let f = nodes.iter().find(|n| n.id != l).expect("a follower");
    f.group.shutdown().await;
    net.groups.lock().remove(&f.id);
    damage(&f.dir);
    let back = open(&net, &f.name, &f.dir).await;
    let st = back.group.status();
    assert!(st.vote_guarded, "damage found at open");
    assert!(cut(&st), "cut at the damage: {st:?}");

    // The leader keeps committing, and repairs the follower.
    for i in 40..60u32 {
        lead.group
            .propose(i.to_le_bytes().to_vec())
            .await
            .expect("committed after the damaged follower came back");
    }
    wait_applied(&back, 60).await;
    let expected: Vec<Vec<u8>> = (0..60u32).map(|i| i.to_le_bytes().to_vec()).collect();
    assert_eq!(*back.state.0.lock(), expected, "the repaired copy");
    assert_eq!(lead.group.status().role, Role::Leader);
    // Once its log matches the leader's up to the commit index it votes again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while back.group.status().vote_guarded {
        assert!(Instant::now() < deadline, "still guarded after the repair");
        lead.group.propose(b"tick".to_vec()).await.expect("tick");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in nodes.iter().filter(|n| n.id != f.id) {
        n.group.shutdown().await;
    }
    back.group.shutdown().await;
}

/// Elections that would not start for 20 s: a leader seen within the 10 s `leader` waits
/// was elected without any election timeout firing.
fn slow_elections() -> GroupConfig {
    GroupConfig {
        election_min: Duration::from_secs(20),
        election_max: Duration::from_secs(21),
        ..config()
    }
}

fn members(names: &[&str]) -> BTreeMap<NodeId, Peer> {
    names
        .iter()
        .map(|n| {
            (
                node_id(n),
                Peer {
                    name: n.to_string(),
                },
            )
        })
        .collect()
}

/// A new group's first member campaigns before its peers have opened the group (they are not
/// reachable yet, as a server answers "not open"): it campaigns again soon, backing off, and
/// leads once they are there. Before, its next campaign waited a whole election timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_leads_once_its_late_peers_open_without_an_election_timeout() {
    let root = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Net::default());
    let a = open_with(&net, "a", &root.path().join("a"), slow_elections()).await;
    a.group
        .initialize(members(&["a", "b", "c"]))
        .await
        .expect("initialize");
    // Its first campaign has failed: nobody else is there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.group.status().role == Role::Candidate && a.group.status().term >= 1) {
        assert!(Instant::now() < deadline, "{:?}", a.group.status());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b = open_with(&net, "b", &root.path().join("b"), slow_elections()).await;
    let c = open_with(&net, "c", &root.path().join("c"), slow_elections()).await;
    assert_eq!(leader(&[&a, &b, &c], None).await, a.id);
    for n in [&a, &b, &c] {
        n.group.shutdown().await;
    }
}

/// Every member of a group stops and opens again (a whole cluster restarted): the member that
/// led leads again at once (openraft starts a node whose saved vote is its own, committed, as
/// the leader of that term), without waiting for any election timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_member_restarts_the_last_leader_leads_at_once() {
    let root = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Net::default());
    let names = ["a", "b", "c"];
    let mut nodes = Vec::new();
    for n in names {
        nodes.push(open_with(&net, n, &root.path().join(n), slow_elections()).await);
    }
    nodes[0]
        .group
        .initialize(members(&names))
        .await
        .expect("initialize");
    let all: Vec<&Node> = nodes.iter().collect();
    let l1 = leader(&all, None).await;
    by_id(&nodes, l1)
        .group
        .propose(b"one".to_vec())
        .await
        .expect("committed");
    for n in &nodes {
        wait_applied(n, 1).await;
    }
    for n in nodes.drain(..) {
        n.group.shutdown().await;
        net.groups.lock().remove(&n.id);
    }
    for n in names {
        nodes.push(open_with(&net, n, &root.path().join(n), slow_elections()).await);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    assert_eq!(leader(&all, None).await, l1);
    by_id(&nodes, l1)
        .group
        .propose(b"two".to_vec())
        .await
        .expect("committed after the restart");
    for n in &nodes {
        n.group.shutdown().await;
    }
}

/// Entries a leader appended on its followers but never learned committed (it heard no
/// answers) are committed by the next leader, which applies them flagged `inherited` (it must
/// answer for them); its follower applies them unflagged, as everyone applied the entries
/// committed in the first term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_applies_the_entries_it_took_over_as_inherited() {
    let root = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Net::default());
    let nodes = cluster(&net, root.path(), &["a", "b", "c"]).await;
    let all: Vec<&Node> = nodes.iter().collect();
    let l1 = leader(&all, None).await;
    let old = by_id(&nodes, l1);
    old.group.propose(b"one".to_vec()).await.expect("committed");
    for n in &nodes {
        wait_applied(n, 1).await;
    }
    net.deaf.lock().insert(l1);
    let index = old.group.status().last_log_index + 1;
    drop(
        old.group
            .propose_queued(b"two".to_vec())
            .await
            .expect("queued"),
    );
    let followers: Vec<&Node> = nodes.iter().filter(|n| n.id != l1).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !followers
        .iter()
        .all(|f| f.group.status().last_log_index >= index)
    {
        assert!(
            Instant::now() < deadline,
            "followers never got entry {index}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    old.group.shutdown().await;
    net.groups.lock().remove(&l1);
    let l2 = leader(&followers, Some(l1)).await;
    for f in &followers {
        wait_applied(f, 2).await;
        let flags = f.state.1.lock().clone();
        let expected = vec![false, f.id == l2];
        assert_eq!(flags, expected, "{} (leader {})", f.name, f.id == l2);
        assert_eq!(f.state.0.lock()[1], b"two");
    }
    assert_eq!(*old.state.1.lock(), vec![false]);
    for f in followers {
        f.group.shutdown().await;
    }
}
