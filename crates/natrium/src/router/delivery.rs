//! Message delivery: match a subject in an account (through a per-publisher cache while the
//! account's generation holds), then hand the message to every plain match and to one member of
//! each queue group: appended as MSG/HMSG to a connection's outbound buffer, carried across an
//! import into another account, or offered to an internal sink. Writers are woken once per
//! batch, not per message.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use natrium_protocol::encode;
use natrium_subjects::{matches, Matches};
use rustc_hash::FxHashMap;

use natrium_protocol::route::queue_names;
use parking_lot::MutexGuard;
use smallvec::SmallVec;

use super::account::Account;
use super::imports::{self, Forward, ForwardKind};
use super::outbound::{CacheStats, CloseReason, OutBuf, Outbound, STALL_MAX};
use super::subscription::{LeafPeer, RouteSub, SubRef, Target};

/// One message to deliver. `subject` is the subject receivers see; what it is matched on may
/// differ (see [`publish_batch`]).
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub subject: &'a [u8],
    pub reply: Option<&'a [u8]>,
    pub headers: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// A publisher's cache of match results, valid while the account's generation holds.
struct MatchCache {
    generation: u64,
    results: hashbrown::HashMap<Vec<u8>, Matches<SubRef>, rustc_hash::FxBuildHasher>,
    /// Lookups and hits since the last `Publisher::flush` reported them to the account.
    lookups: u64,
    hits: u64,
    /// Fan-out (plain matches plus queue groups) summed over the cached results, and its max.
    fanout_sum: u64,
    fanout_max: u64,
}

const MATCH_CACHE_MAX: usize = 4096;

impl MatchCache {
    fn new() -> Self {
        MatchCache {
            generation: u64::MAX,
            results: hashbrown::HashMap::default(),
            lookups: 0,
            hits: 0,
            fanout_sum: 0,
            fanout_max: 0,
        }
    }

    fn clear(&mut self) {
        self.results.clear();
        self.fanout_sum = 0;
        self.fanout_max = 0;
    }

    fn lookup(&mut self, account: &Account, subject: &[u8]) -> &Matches<SubRef> {
        let generation = account.generation();
        if generation != self.generation {
            self.clear();
            self.generation = generation;
        }
        self.lookups += 1;
        // Past its size: start over before looking (the entry below holds the map, so the miss
        // that overfilled it could not).
        if self.results.len() > MATCH_CACHE_MAX {
            self.clear();
        }
        // One hash and probe per message (a hit is the common case).
        match self.results.entry_ref(subject) {
            hashbrown::hash_map::EntryRef::Occupied(e) => {
                self.hits += 1;
                e.into_mut()
            }
            hashbrown::hash_map::EntryRef::Vacant(e) => {
                let found = account.matches(subject);
                let fanout = (found.plain.len() + found.queues.len()) as u64;
                self.fanout_sum += fanout;
                self.fanout_max = self.fanout_max.max(fanout);
                e.insert(found)
            }
        }
    }
}

/// How deep forwarding between accounts may go (import cycles end here).
const MAX_FORWARD_DEPTH: u8 = 4;

/// Where a message being delivered came from, which decides where it may go next.
#[derive(Clone, Copy)]
struct Hop<'q> {
    /// Forwarding depth (0: published in this account).
    depth: u8,
    /// Whether matching peer servers (routes) may receive it: not for a message that came from
    /// a route (a full mesh never relays), nor after a stream import or reply path (those are
    /// resolved where the exporter's message lands).
    to_routes: bool,
    /// For a message from a route: the queue groups the sender chose this server for; only
    /// those groups get it, each from a local member.
    queues: Option<&'q [u8]>,
    /// For a message from a route: the leafnode cluster it entered the cluster from (`LMSG`),
    /// whose leafnode connections here must not get it again (it reached that cluster there).
    origin: Option<&'q [u8]>,
}

/// One peer a message goes to, and the queue groups it picked members there for.
type RouteHit<'f> = (&'f RouteSub, SmallVec<[&'f [u8]; 2]>);

/// Where the messages a publisher delivers come from.
#[derive(Clone)]
enum Source {
    /// A client or the server itself.
    Local,
    /// A route: delivered here only (a full mesh never relays), and to leaves of this hub.
    Route,
    /// A leafnode connection: to routes too unless this server is the leaf (the hub reaches
    /// the other servers of this cluster itself), never back to the same remote cluster.
    Leaf(Arc<LeafPeer>),
}

/// Whether a message from `source` (connection `cid`) may go to the peer behind `r`.
fn peer_ok(source: &Source, cid: u64, r: &RouteSub, hop: Hop<'_>) -> bool {
    let Some(leaf) = &r.leaf else {
        return hop.to_routes;
    };
    if r.route.cid == cid {
        return false;
    }
    match source {
        Source::Local => true,
        Source::Route => {
            !leaf.spoke && (hop.origin.is_none() || hop.origin != leaf.cluster.as_deref())
        }
        Source::Leaf(from) => from.cluster.is_none() || from.cluster != leaf.cluster,
    }
}

/// The frames one receiver gets from a batch, handed over in one piece (one lock) at `flush`.
struct Staged {
    /// `out.cid`, kept here so finding a receiver's slot reads no other cache line.
    cid: u64,
    out: Arc<Outbound>,
    buf: Vec<u8>,
    msgs: u64,
    bytes: u64,
    /// Deliveries per subscription (without a max) in this batch, added to their counters at
    /// `flush`.
    subs: SmallVec<[(SubRef, u64); 1]>,
}

/// The parts of a message's MSG/HMSG line that every receiver shares, built once per message:
/// `MSG <subject> ` (or `HMSG`) and ` [reply ][hdr_len ]<len>\r\n`; a receiver adds its sid
/// between them. Fan-out encodes each delivery as a few copies instead of formatting the line
/// again (callgrind: a fifth of the instructions per delivery went to that).
#[derive(Default)]
struct FrameParts {
    /// Built for the current message (with headers, without).
    ready: [bool; 2],
    head: [Vec<u8>; 2],
    mid: [Vec<u8>; 2],
}

impl FrameParts {
    fn reset(&mut self) {
        self.ready = [false; 2];
    }

    /// The shared parts for `m`, with its headers or without them (built at a message's first
    /// delivery; the others pay the check).
    #[inline(always)]
    fn parts(&mut self, m: &Msg<'_>, headers: Option<&[u8]>) -> (&[u8], &[u8]) {
        let i = usize::from(headers.is_some());
        if !self.ready[i] {
            self.build(i, m, headers);
        }
        (&self.head[i], &self.mid[i])
    }

    #[inline(never)]
    fn build(&mut self, i: usize, m: &Msg<'_>, headers: Option<&[u8]>) {
        {
            let (head, mid) = (&mut self.head[i], &mut self.mid[i]);
            head.clear();
            head.extend_from_slice(if headers.is_some() { b"HMSG " } else { b"MSG " });
            head.extend_from_slice(m.subject);
            head.push(b' ');
            mid.clear();
            mid.push(b' ');
            if let Some(reply) = m.reply {
                mid.extend_from_slice(reply);
                mid.push(b' ');
            }
            let mut num = itoa::Buffer::new();
            let hlen = headers.map_or(0, <[u8]>::len);
            if headers.is_some() {
                mid.extend_from_slice(num.format(hlen).as_bytes());
                mid.push(b' ');
            }
            mid.extend_from_slice(num.format(hlen + m.payload.len()).as_bytes());
            mid.extend_from_slice(b"\r\n");
            self.ready[i] = true;
        }
    }
}

/// Appends one delivery: the shared parts around the receiver's sid, then the body. One
/// reservation, then plain copies: six `extend_from_slice` calls each checked the capacity
/// again, and whether the compiler inlined them into `deliver` changed with unrelated edits
/// (callgrind, fan-out 1 -> 4: 496M against 534M instructions for 200,000 messages).
#[inline(always)]
fn put_frame(
    buf: &mut Vec<u8>,
    head: &[u8],
    sid: &[u8],
    mid: &[u8],
    headers: Option<&[u8]>,
    payload: &[u8],
) {
    let parts = [
        head,
        sid,
        mid,
        headers.unwrap_or_default(),
        payload,
        b"\r\n",
    ];
    let total: usize = parts.iter().map(|p| p.len()).sum();
    buf.reserve(total);
    let mut at = buf.len();
    for part in parts {
        // SAFETY: `reserve` made room for `total` bytes past the length; the parts are copied
        // into that room, back to back, and never overlap the buffer (they are other data).
        unsafe {
            std::ptr::copy_nonoverlapping(part.as_ptr(), buf.as_mut_ptr().add(at), part.len());
        }
        at += part.len();
    }
    // SAFETY: every byte up to `at` (old length + `total`) was written above.
    unsafe { buf.set_len(at) };
}

/// Appends the frame of a message with one receiver (kept out of line: inlined, it made the
/// compiler stop inlining the fan-out path's copies into `deliver`, measured with callgrind).
#[inline(never)]
fn encode_single(buf: &mut Vec<u8>, m: &Msg<'_>, sid: &[u8], headers: Option<&[u8]>) {
    encode::msg(buf, m.subject, sid, m.reply, headers, m.payload);
}

/// Past this many receivers in a batch, their staging slots are found through a map.
const STAGED_SCAN: usize = 8;
/// Staging buffers larger than this are not kept for the next batch.
const MAX_RETAINED_STAGING: usize = 1 << 20;
/// A receiver's frames are handed over as soon as this many are gathered, so a batch with a
/// large share for one receiver (many of its subscriptions match) does not outgrow what
/// staging retains.
pub(super) const MAX_STAGED: usize = 256 * 1024;

/// Per-batch delivery bookkeeping: the frames gathered for each receiver, which subscriptions
/// hit their max, which receivers fell behind.
///
/// Frames for other connections are gathered per receiver during a batch (a read, or an
/// internal batch) and appended to each receiver's buffer at `flush`, with one lock per
/// receiver per batch instead of one per message: that lock was the largest cost of fan-out
/// (callgrind and perf on `fanout-1x4`). Frames for the publisher itself go straight to its
/// buffer, so they keep their order with its own protocol replies (PONG after a PUB).
struct Delivery {
    /// The publishing connection (0 for none), for `echo: false`.
    cid: u64,
    echo: bool,
    /// Where the published messages come from (decides where they may go).
    source: Source,
    staged: Vec<Staged>,
    /// Where each receiver's slot is in `staged` (by cid), once there are many.
    slots: FxHashMap<u64, usize>,
    /// Emptied staging buffers, reused by later batches.
    spare: Vec<Vec<u8>>,
    /// Receivers to wake because their buffer went from empty to non-empty.
    flush: Vec<Arc<Outbound>>,
    /// The current message's shared MSG parts, one per forwarding depth.
    frames: [FrameParts; MAX_FORWARD_DEPTH as usize + 1],
    /// Subscriptions that reached their max, with the account whose trie holds them.
    expired: Vec<(Arc<Account>, SubRef)>,
    /// Receivers past their stall threshold during this batch.
    stall: Vec<Arc<Outbound>>,
    rng: fastrand::Rng,
    /// `publish_batch`'s destination: what a stream import matches in the importer, while the
    /// message keeps presenting its own subject (a JetStream delivery across accounts).
    deliver_to: Option<Vec<u8>>,
    /// The subject a batch is routed on when its messages present another (JetStream
    /// deliveries): peers get it as the routed subject and the presented one after an `@` in
    /// the reply, as nats-server sends them.
    route_to: Option<Box<[u8]>>,
    /// Scratch for `reply@subject`.
    route_reply: Vec<u8>,
}

impl Delivery {
    fn new(cid: u64) -> Self {
        Delivery {
            deliver_to: None,
            cid,
            echo: true,
            source: Source::Local,
            staged: Vec::new(),
            slots: FxHashMap::default(),
            spare: Vec::new(),
            flush: Vec::new(),
            frames: Default::default(),
            expired: Vec::new(),
            stall: Vec::new(),
            rng: fastrand::Rng::new(),
            route_to: None,
            route_reply: Vec::new(),
        }
    }

    /// The first hop of a message published in an account.
    fn first_hop<'q>(&self, queues: Option<&'q [u8]>, origin: Option<&'q [u8]>) -> Hop<'q> {
        Hop {
            origin,
            depth: 0,
            to_routes: match &self.source {
                Source::Local => true,
                Source::Route => false,
                Source::Leaf(from) => !from.spoke,
            },
            queues,
        }
    }

    /// Delivers to every plain match and one member of each queue group (weighted by how many
    /// members each peer server has); peers get one routed message each, naming the queue
    /// groups they were picked for. Returns whether anything was delivered or routed.
    fn deliver_all(
        &mut self,
        account: &Arc<Account>,
        found: &Matches<SubRef>,
        m: &Msg<'_>,
        hop: Hop<'_>,
    ) -> bool {
        let mut delivered = false;
        self.frames[hop.depth as usize].reset();
        // One receiver at most: its frame is encoded directly, without shared parts.
        let single = found.plain.len() + found.queues.len() <= 1;
        let mut routes: SmallVec<[RouteHit<'_>; 4]> = SmallVec::new();
        for sub in &found.plain {
            match &sub.0.target {
                Target::Route(r) => {
                    if peer_ok(&self.source, self.cid, r, hop)
                        && !routes.iter().any(|(o, _)| Arc::ptr_eq(&o.route, &r.route))
                    {
                        routes.push((r, SmallVec::new()));
                    }
                }
                _ => delivered |= self.deliver(account, sub, m, hop, single),
            }
        }
        for (name, members) in &found.queues {
            match hop.queues {
                // From a route: only the groups the sender picked this server for.
                Some(qf) if !queue_names(qf).any(|q| q == &name[..]) => continue,
                None if !matches!(self.source, Source::Local) => continue,
                _ => {}
            }
            let n = members.len();
            let is_local = |s: &SubRef| !matches!(s.0.target, Target::Route(_));
            // Members on this server only (the common case): the first that takes the message
            // from a random start, with no weights to weigh.
            if members.iter().all(is_local) {
                let start = self.rng.usize(..n);
                delivered |= (0..n)
                    .any(|i| self.deliver(account, &members[(start + i) % n], m, hop, single));
                continue;
            }
            // Peers count as many members as they have; locals as one each. Leaves only get
            // a group's messages when it has no member on this server (as nats-server).
            let has_local = members.iter().any(is_local);
            // A clone, so the weights can be read while delivering (free unless the source is
            // a leafnode connection: one reference count then).
            let (source, cid) = (self.source.clone(), self.cid);
            // The origin cluster does not narrow a queue group named by a route: the peer
            // picked this server, perhaps for a leaf's member it was told of without origin.
            let qhop = Hop {
                origin: None,
                ..hop
            };
            // A peer's member on behalf of its leaves (`LS+` with an origin) is a fallback like
            // a leaf's: only when no member of this cluster can take the message, and never
            // for a message from that same leaf cluster.
            let has_own = has_local
                || members.iter().any(|s| match &s.0.target {
                    Target::Route(r) => {
                        r.leaf.is_none() && r.origin.is_none() && peer_ok(&source, cid, r, qhop)
                    }
                    _ => false,
                });
            let from_cluster: Option<&[u8]> = match &source {
                Source::Leaf(from) => from.cluster.as_deref(),
                _ => None,
            };
            let weight = |s: &SubRef| match &s.0.target {
                Target::Route(r) if r.leaf.is_some() && has_local => 0,
                Target::Route(r)
                    if r.origin.is_some() && (has_own || r.origin.as_deref() == from_cluster) =>
                {
                    0
                }
                Target::Route(r) if peer_ok(&source, cid, r, qhop) => r.weight().max(1) as usize,
                Target::Route(_) => 0,
                _ => 1,
            };
            let total: usize = members.iter().map(weight).sum();
            if total == 0 {
                continue;
            }
            let start = if total == n {
                self.rng.usize(..n)
            } else {
                let mut pick = self.rng.usize(..total);
                members
                    .iter()
                    .position(|s| {
                        let w = weight(s);
                        if pick < w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .unwrap_or(0)
            };
            for i in 0..n {
                let sub = &members[(start + i) % n];
                if let Target::Route(r) = &sub.0.target {
                    if weight(sub) == 0 {
                        continue;
                    }
                    match routes
                        .iter_mut()
                        .find(|(o, _)| Arc::ptr_eq(&o.route, &r.route))
                    {
                        Some((_, qs)) => qs.push(name),
                        None => routes.push((r, smallvec::smallvec![&name[..]])),
                    }
                    delivered = true;
                    break;
                }
                if self.deliver(account, sub, m, hop, single) {
                    delivered = true;
                    break;
                }
            }
        }
        for (route, queues) in &routes {
            delivered |= self.route(account, route, queues, m);
        }
        delivered
    }

    /// Delivers one message to one local subscription of `account` (`single`: the message's
    /// only receiver). Returns whether it did.
    fn deliver(
        &mut self,
        account: &Arc<Account>,
        sub: &SubRef,
        m: &Msg<'_>,
        hop: Hop<'_>,
        single: bool,
    ) -> bool {
        let s = &sub.0;
        if let Some(deny) = &s.deny {
            if deny.iter().any(|d| matches(d, m.subject)) {
                return false;
            }
        }
        if let Target::Client(client) = &s.target {
            if !self.echo && client.cid == self.cid {
                return false;
            }
        }
        // Every delivery is counted (`msgs` in monitoring; `UNSUB sid max` counts the ones
        // before it too, as nats-server does). With a max the count decides now; without one,
        // deliveries to other connections are counted once per batch (`Staged::subs`), so
        // publishers sharing a subscriber do not contend on its counter per message.
        let max = s.max.load(Ordering::Relaxed);
        if max > 0 {
            let n = s.delivered.fetch_add(1, Ordering::Relaxed) + 1;
            if n > max {
                return false;
            }
            if n == max {
                self.expired.push((account.clone(), sub.clone()));
            }
        }
        let count_now = max == 0;
        let client = match &s.target {
            Target::Client(c) => c,
            _ if count_now => {
                s.delivered.fetch_add(1, Ordering::Relaxed);
                return self.deliver_elsewhere(sub, m, hop);
            }
            _ => return self.deliver_elsewhere(sub, m, hop),
        };
        let headers = if client.headers.load(Ordering::Relaxed) {
            m.headers
        } else {
            None
        };
        if let (Some(reply), true) = (m.reply, client.track_responses.load(Ordering::Relaxed)) {
            if let Some((perm, grants)) = client.responses.lock().as_mut() {
                grants.grant(reply, perm);
            }
        }
        if client.closing.load(Ordering::Relaxed) {
            return false;
        }
        if client.cid == self.cid {
            // The publisher's own subscription: straight into its buffer.
            let size = m.subject.len() + m.payload.len() + headers.map_or(0, <[u8]>::len);
            let mut out = client.out.lock();
            if !fits(client, &mut out, size) {
                return false;
            }
            let was_empty = out.is_empty();
            out.append_with(size + s.sid.len() + 32, |buf| {
                encode::msg(buf, m.subject, &s.sid, m.reply, headers, m.payload)
            });
            out.out_msgs += 1;
            out.out_bytes += (m.payload.len() + headers.map_or(0, <[u8]>::len)) as u64;
            drop(out);
            if count_now {
                s.delivered.fetch_add(1, Ordering::Relaxed);
            }
            if was_empty {
                self.flush.push(client.clone());
            }
        } else {
            let i = self.stage(client);
            if single {
                encode_single(&mut self.staged[i].buf, m, &s.sid, headers);
            } else {
                let (head, mid) = self.frames[hop.depth as usize].parts(m, headers);
                put_frame(
                    &mut self.staged[i].buf,
                    head,
                    &s.sid,
                    mid,
                    headers,
                    m.payload,
                );
            }
            let st = &mut self.staged[i];
            st.msgs += 1;
            st.bytes += (m.payload.len() + headers.map_or(0, <[u8]>::len)) as u64;
            if count_now {
                match st.subs.iter_mut().find(|(x, _)| x == sub) {
                    Some((_, n)) => *n += 1,
                    None => st.subs.push((sub.clone(), 1)),
                }
            }
            if st.buf.len() >= MAX_STAGED {
                hand_over(st, self.cid, &mut self.stall, &mut self.flush);
            }
        }
        if crate::logging::protocol_trace() {
            trace_delivery(client, m, &s.sid, headers);
        }
        true
    }

    /// Delivery to a subscription that is not a client's: across an import, or into an
    /// internal sink (peers are gathered by `deliver_all`).
    fn deliver_elsewhere(&mut self, sub: &SubRef, m: &Msg<'_>, hop: Hop<'_>) -> bool {
        match &sub.0.target {
            Target::Forward(f) => self.forward(f, m, hop),
            Target::Internal(sink) => sink.offer(m.subject, m.reply, m.headers, m.payload),
            Target::Client(_) | Target::Route(_) => false,
        }
    }

    /// The index of receiver `out`'s staging slot in this batch.
    fn stage(&mut self, out: &Arc<Outbound>) -> usize {
        let i = if self.staged.len() <= STAGED_SCAN {
            match self.staged.iter().position(|st| st.cid == out.cid) {
                Some(i) => i,
                None => self.new_slot(out),
            }
        } else {
            if self.slots.is_empty() {
                for (i, st) in self.staged.iter().enumerate() {
                    self.slots.insert(st.cid, i);
                }
            }
            match self.slots.get(&out.cid) {
                Some(i) => *i,
                None => {
                    let i = self.new_slot(out);
                    self.slots.insert(out.cid, i);
                    i
                }
            }
        };
        i
    }

    fn new_slot(&mut self, out: &Arc<Outbound>) -> usize {
        self.staged.push(Staged {
            cid: out.cid,
            out: out.clone(),
            buf: self.spare.pop().unwrap_or_default(),
            msgs: 0,
            bytes: 0,
            subs: SmallVec::new(),
        });
        self.staged.len() - 1
    }

    /// Sends one routed message (RMSG/HMSG in `account`, or LMSG/HMSG to a leafnode
    /// connection) to a peer, naming `queues`.
    fn route(&mut self, account: &Account, peer: &RouteSub, queues: &[&[u8]], m: &Msg<'_>) -> bool {
        let route = &peer.route;
        if route.closing.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(leaf) = &peer.leaf {
            if leaf.deny_out.iter().any(|d| matches(d, m.subject)) {
                return false;
            }
        }
        let headers = if route.headers.load(Ordering::Relaxed) {
            m.headers
        } else {
            None
        };
        let mut reply_buf = std::mem::take(&mut self.route_reply);
        let to = self.route_to.take();
        let (subject, reply) = match (&to, m.reply) {
            (Some(to), Some(r)) if to[..] != *m.subject => {
                reply_buf.clear();
                reply_buf.extend_from_slice(r);
                reply_buf.push(b'@');
                reply_buf.extend_from_slice(m.subject);
                (&to[..], Some(&reply_buf[..]))
            }
            (Some(to), None) => (&to[..], None),
            _ => (m.subject, m.reply),
        };
        let i = self.stage(route);
        let st = &mut self.staged[i];
        // A message from a leafnode cluster names it to peers that take that (`LMSG`), so
        // they keep it from that cluster's other leafnode connections.
        let origin = match &self.source {
            Source::Leaf(from)
                if route.leaf_origin.load(Ordering::Relaxed)
                    && route.headers.load(Ordering::Relaxed) =>
            {
                from.cluster.as_deref()
            }
            _ => None,
        };
        if peer.leaf.is_some() {
            // As over a route: a JetStream delivery goes to its delivery subject, the stored
            // subject after `@` in the reply (nats-server does the same on leafnodes).
            natrium_protocol::leaf::msg(
                &mut st.buf,
                subject,
                reply,
                queues.iter().copied(),
                headers,
                m.payload,
            );
        } else {
            // A route dedicated to one account leaves the account out.
            let name: &[u8] = if route.account_implied.load(Ordering::Relaxed) {
                b""
            } else {
                account.name.as_bytes()
            };
            natrium_protocol::route::msg(
                &mut st.buf,
                origin,
                name,
                subject,
                reply,
                queues.iter().copied(),
                headers,
                m.payload,
            );
        }
        self.route_to = to;
        self.route_reply = reply_buf;
        st.msgs += 1;
        st.bytes += (m.payload.len() + headers.map_or(0, <[u8]>::len)) as u64;
        if st.buf.len() >= MAX_STAGED {
            hand_over(st, self.cid, &mut self.stall, &mut self.flush);
        }
        true
    }

    /// Carries a message across an import into the target account.
    fn forward(&mut self, f: &Forward, m: &Msg<'_>, hop: Hop<'_>) -> bool {
        if hop.depth >= MAX_FORWARD_DEPTH {
            return false;
        }
        let service = f.is_service();
        // A request that came from a route was already sent through its service import where
        // it was published.
        if service && matches!(self.source, Source::Route) {
            return false;
        }
        if let (
            ForwardKind::Service {
                importer,
                responses,
            },
            Some(reply),
        ) = (&f.kind, m.reply)
        {
            // The responder answers in the exporter's account; carry that answer back.
            imports::add_response_route(&f.to, reply, importer.clone(), *responses);
        }
        let next = Hop {
            depth: hop.depth + 1,
            // Requests go to responders anywhere; a stream import or a reply is delivered here.
            to_routes: service && hop.to_routes,
            queues: None,
            origin: hop.origin,
        };
        if let Some(to) = self.deliver_to.take_if(|to| to.as_slice() != m.subject) {
            // A batch for a destination: match where it maps to, present the message as it is.
            let mapped = f.map.apply(&to);
            let found = f.to.matches(&mapped);
            self.deliver_to = Some(mapped);
            let delivered = self.deliver_all(&f.to, &found, m, next);
            self.deliver_to = Some(to);
            return delivered;
        }
        let subject = f.map.apply(m.subject);
        let fm = Msg {
            subject: &subject,
            ..*m
        };
        let found = f.to.matches(&subject);
        self.deliver_all(&f.to, &found, &fm, next)
    }

    /// Hands each receiver the frames this batch gathered for it (one lock each), cuts off a
    /// receiver past `max_pending` as a slow consumer, notes receivers now lagging, and wakes
    /// each writer whose buffer went from empty to non-empty.
    fn flush(&mut self) -> usize {
        self.slots.clear();
        let mut handed = 0;
        // Drained in place: the slot array keeps its allocation for the next batch (taking it
        // whole cost a free and a malloc per read, callgrind req-16x2).
        let mut staged = std::mem::take(&mut self.staged);
        for mut st in staged.drain(..) {
            handed += st.buf.len();
            hand_over(&mut st, self.cid, &mut self.stall, &mut self.flush);
            if st.buf.capacity() > 0 && st.buf.capacity() <= MAX_RETAINED_STAGING {
                self.spare.push(st.buf);
            }
        }
        self.staged = staged;
        for c in self.flush.drain(..) {
            c.wake.notify_one();
        }
        handed
    }

    /// Removes the subscriptions that reached their max.
    fn remove_expired(&mut self) {
        for (account, sub) in self.expired.drain(..) {
            remove_subscription(&account, &sub);
        }
    }

    /// Receivers past their stall threshold since the last call (known after `flush`).
    fn take_lagging(&mut self) -> Option<Lagging> {
        (!self.stall.is_empty()).then(|| Lagging(std::mem::take(&mut self.stall)))
    }
}

/// Hands a receiver the frames gathered for it (one lock): cuts it off as a slow consumer past
/// `max_pending`, notes it in `stall` if it is now lagging (unless it is the publisher `cid`),
/// and in `wake` if its buffer went from empty to non-empty. Leaves `st` empty for more frames.
fn hand_over(
    st: &mut Staged,
    cid: u64,
    stall: &mut Vec<Arc<Outbound>>,
    wake: &mut Vec<Arc<Outbound>>,
) {
    if st.buf.is_empty() {
        // Handed over already (its subscriptions' counts went with the frames).
        return;
    }
    for (sub, n) in st.subs.drain(..) {
        sub.0.delivered.fetch_add(n, Ordering::Relaxed);
    }
    let client = &st.out;
    let mut out = client.out.lock();
    if out.closed {
        drop(out);
    } else if out.len() + st.buf.len() > client.max_pending {
        drop(out);
        tracing::info!(
            "{} - cid:{} - Slow Consumer Detected: MaxPending of {} Exceeded",
            client.addr,
            client.cid,
            client.max_pending
        );
        client.close(CloseReason::SlowConsumerPendingBytes);
    } else {
        let was_empty = out.is_empty();
        // The gathered frames join the receiver's queue whole; an empty buffer comes back.
        out.push_staged(&mut st.buf);
        out.out_msgs += st.msgs;
        out.out_bytes += st.bytes;
        let behind = out.len() > client.stall_threshold();
        drop(out);
        if behind && client.cid != cid && !stall.iter().any(|c| c.cid == client.cid) {
            stall.push(client.clone());
        }
        if was_empty {
            wake.push(client.clone());
        }
    }
    st.buf.clear();
    st.msgs = 0;
    st.bytes = 0;
}

/// Whether `size` more bytes fit in a receiver's buffer. One that is closed does not take them;
/// one past `max_pending` is cut off as a slow consumer (after its lock is released).
fn fits(client: &Outbound, out: &mut MutexGuard<'_, OutBuf>, size: usize) -> bool {
    if out.closed {
        return false;
    }
    if out.len() + size > client.max_pending {
        MutexGuard::unlocked(out, || {
            tracing::info!(
                "{} - cid:{} - Slow Consumer Detected: MaxPending of {} Exceeded",
                client.addr,
                client.cid,
                client.max_pending
            );
            client.close(CloseReason::SlowConsumerPendingBytes);
        });
        return false;
    }
    true
}

/// A connection's publishing side: its match cache and delivery bookkeeping, reused for every
/// message it publishes (no allocation per message on a cache hit).
pub struct Publisher {
    cache: MatchCache,
    dl: Delivery,
    /// The account the cache's lookups are reported to, and where the cache's size goes.
    account: Option<Arc<Account>>,
    stats: Arc<CacheStats>,
}

impl Publisher {
    /// For the client connection `cid` (its own subscriptions are skipped with `echo` off).
    pub fn new(cid: u64) -> Self {
        Publisher {
            cache: MatchCache::new(),
            dl: Delivery::new(cid),
            account: None,
            stats: Arc::default(),
        }
    }

    /// For the route connection `cid`: what a peer sends is delivered to local subscribers
    /// only, never relayed to other peers.
    pub fn for_route(cid: u64) -> Self {
        let mut p = Self::new(cid);
        p.dl.source = Source::Route;
        p
    }

    /// For the leafnode connection `cid`: what the other side sends goes to local subscribers,
    /// other leafnode connections and (unless this server is the leaf) routes, never back.
    pub fn for_leaf(cid: u64, peer: Arc<LeafPeer>) -> Self {
        let mut p = Self::new(cid);
        p.dl.source = Source::Leaf(peer);
        p
    }

    /// Reports the match cache's size into `stats` (a connection's, read by monitoring).
    pub fn with_stats(mut self, stats: Arc<CacheStats>) -> Self {
        self.stats = stats;
        self
    }

    pub fn set_echo(&mut self, echo: bool) {
        self.dl.echo = echo;
    }

    /// Forgets cached matches: the publisher now publishes in another account, whose
    /// generation counter may happen to equal the old one's.
    pub fn forget_matches(&mut self) {
        self.report();
        self.cache = MatchCache::new();
        self.account = None;
    }

    /// Adds the lookups since the last report to the account's counters and publishes the
    /// cache's size.
    fn report(&mut self) {
        let c = &mut self.cache;
        if c.lookups > 0 {
            if let Some(a) = &self.account {
                let s = &a.sublist_stats;
                s.matches.fetch_add(c.lookups, Ordering::Relaxed);
                s.cache_hits.fetch_add(c.hits, Ordering::Relaxed);
            }
            c.lookups = 0;
            c.hits = 0;
            let st = &self.stats;
            st.entries.store(c.results.len() as u64, Ordering::Relaxed);
            st.fanout_sum.store(c.fanout_sum, Ordering::Relaxed);
            st.fanout_max.store(c.fanout_max, Ordering::Relaxed);
        }
    }

    /// Delivers `m` to the subscribers of its subject in `account`. Returns whether anyone got
    /// it. Writers are woken by `flush`, once per read.
    pub fn publish(&mut self, account: &Arc<Account>, m: &Msg<'_>) -> bool {
        self.publish_to_queues(account, m, None)
    }

    /// Like `publish`, for a message from a route: `queues` are the groups the peer picked this
    /// server for (space-separated), the only groups that get it.
    pub fn publish_to_queues(
        &mut self,
        account: &Arc<Account>,
        m: &Msg<'_>,
        queues: Option<&[u8]>,
    ) -> bool {
        self.publish_on(account, m.subject, m, queues, None)
    }

    /// Like `publish_to_queues`, for a routed message addressed to the subscribers of `to`
    /// (which may present another subject: `reply@subject` from the peer, split by the route)
    /// that entered the cluster from leafnode cluster `origin` (`LMSG`), if any.
    pub fn publish_on(
        &mut self,
        account: &Arc<Account>,
        to: &[u8],
        m: &Msg<'_>,
        queues: Option<&[u8]>,
        origin: Option<&[u8]>,
    ) -> bool {
        if !self
            .account
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, account))
        {
            self.report();
            self.account = Some(account.clone());
        }
        let found = self.cache.lookup(account, to);
        let hop = self.dl.first_hop(queues, origin);
        let delivered = self.dl.deliver_all(account, found, m, hop);
        if !self.dl.expired.is_empty() {
            self.dl.remove_expired();
        }
        delivered
    }

    /// Wakes the writers of every receiver since the last flush, and reports the match
    /// cache's counters (once per read: two atomic additions, none on the message path).
    /// Returns the bytes handed to other connections.
    pub fn flush(&mut self) -> usize {
        let handed = self.dl.flush();
        self.report();
        handed
    }

    /// Receivers that fell behind since the last call, for the publisher to wait on.
    pub fn take_lagging(&mut self) -> Option<Lagging> {
        self.dl.take_lagging()
    }

    /// Ends a connection's read: flushes, then paces the reader. A read that handed other
    /// connections `YIELD_AFTER` bytes or more gives their writers a turn before the next read:
    /// on a busy worker the reader would read on until its task budget ran out, queueing
    /// megabytes per receiver that went cold in cache before their writers copied them to the
    /// sockets (perf, 1 -> 4 and 4 -> 4 pinned to one core: a tenth to a third less server CPU
    /// per message, page faults from queue growth gone). Receivers past their stall threshold
    /// are then waited for (bounded).
    pub async fn end_read(&mut self) {
        if self.flush() >= YIELD_AFTER {
            tokio::task::yield_now().await;
        }
        if let Some(lagging) = self.dl.take_lagging() {
            lagging.wait().await;
        }
    }
}

/// See `Publisher::end_read`.
const YIELD_AFTER: usize = 32 * 1024;

/// Receivers a batch left past their stall threshold.
pub struct Lagging(Vec<Arc<Outbound>>);

impl Lagging {
    /// Waits (bounded like a publisher's stall) while each receiver's writer makes progress.
    pub async fn wait(self) {
        let deadline = tokio::time::Instant::now() + STALL_MAX;
        for c in self.0 {
            c.wait_drained(deadline).await;
        }
    }
}

/// Publishes a message that comes from no connection (an internal client or the server
/// itself). Returns whether anyone received it.
pub fn publish(account: &Arc<Account>, m: Msg<'_>) -> bool {
    publish_batch(account, m.subject, [m]).0 > 0
}

/// Publishes a batch of messages to the subscribers of subject `to`, whatever subject each
/// message presents (a JetStream consumer's deliveries keep the stored message's subject): one
/// subject match and one writer wake-up per receiver for the whole batch. Returns how many
/// messages reached someone, and the receivers now lagging, for the caller to wait on before it
/// sends more.
pub fn publish_batch<'a>(
    account: &Arc<Account>,
    to: &[u8],
    msgs: impl IntoIterator<Item = Msg<'a>>,
) -> (usize, Option<Lagging>) {
    let mut dl = Delivery::new(0);
    dl.deliver_to = Some(to.to_vec());
    dl.route_to = Some(to.into());
    let found = account.matches(to);
    account
        .sublist_stats
        .matches
        .fetch_add(1, Ordering::Relaxed);
    let mut delivered = 0;
    let hop = dl.first_hop(None, None);
    for m in msgs {
        delivered += usize::from(dl.deliver_all(account, &found, &m, hop));
    }
    dl.flush();
    dl.remove_expired();
    (delivered, dl.take_lagging())
}

/// Removes a subscription from its connection's sid map (if it has one) and from the account.
pub fn remove_subscription(account: &Account, sub: &SubRef) {
    if let Some(client) = sub.0.client_out() {
        let mut subs = client.subs.lock();
        if subs.get(&sub.0.sid).is_some_and(|s| s == sub) {
            subs.remove(&sub.0.sid);
        }
    }
    account.remove(sub);
}

/// Traces a delivery (`->> [MSG ...]`) to `client`.
fn trace_delivery(client: &Outbound, m: &Msg<'_>, sid: &[u8], headers: Option<&[u8]>) {
    let text = String::from_utf8_lossy;
    let reply = m.reply.map(|r| format!(" {}", text(r))).unwrap_or_default();
    let line = match headers {
        Some(h) => format!(
            "HMSG {} {}{reply} {} {}",
            text(m.subject),
            text(sid),
            h.len(),
            h.len() + m.payload.len()
        ),
        None => format!(
            "MSG {} {}{reply} {}",
            text(m.subject),
            text(sid),
            m.payload.len()
        ),
    };
    client.trace_out(line.as_bytes());
}
